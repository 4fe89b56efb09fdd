"""Targets: the one place where a target spec becomes a TVM target.

A spec is a preset name from ``TARGET_PRESETS``, a dict in TVM's form (TVM 0.27 rejects
target strings with options: ``{"kind": "llvm", "mcpu": "znver4", "num-cores": 2}``), its
JSON text, a ``tvm.target.Target`` or ``None`` (= ``host``). ``resolve_target`` turns any of
them into a validated dict that always carries ``mtriple`` and ``num-cores``; building,
tuning, the tuning database's key and the runtime all go through it, so they agree.

- ``host`` is this CPU as LLVM detects it (``llvm_get_system_cpu``; TVM 0.27 ignores
  ``mcpu=native``) with ``host_cores()`` cores.
- ``host_cores()`` is the backends' one thread-count rule (``backends.runtime.
  host_threads``: the CPUs this process may use). TVM's runtime and its measuring worker
  would otherwise take half of them on x86 (they assume SMT).
- The CPU features of a target (``cpu_features``) decide the int8 instruction path
  (``int8_isa``: VNNI, AVX-512BW, AVX2 or none).

Importing this module does not import TVM (that takes seconds); the functions do.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping
from typing import Any

from ..runtime import host_threads
from .errors import TargetError
from .imports import tvm_module


def host_cpu() -> str:
    """This CPU as LLVM names it (``znver5``, ``cascadelake``, ...)."""
    return str(tvm_module().target.codegen.llvm_get_system_cpu())


def host_triple() -> str:
    """This machine's target triple, without a vendor (LLVM's own may say ``conda``)."""
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) or "x86_64"
    if sys.platform.startswith("linux"):
        return f"{arch}-linux-gnu"
    if sys.platform == "darwin":
        return f"{arch}-apple-darwin"
    return str(tvm_module().target.codegen.llvm_get_system_triple())


def host_cores() -> int:
    """Cores of the ``host`` target: ``backends.runtime.host_threads()``."""
    return host_threads()


def host_target(num_cores: int | None = None) -> dict[str, Any]:
    """This machine as a target dict: detected ``mcpu``, ``mtriple``, ``num-cores``
    (``num_cores``, default ``host_cores()``)."""
    target: dict[str, Any] = {"kind": "llvm", "mtriple": host_triple(),
                              "num-cores": int(num_cores or host_cores())}
    cpu = host_cpu()
    if cpu and cpu != "generic":
        target["mcpu"] = cpu
    return target


#: Named targets (``host`` is detected when resolved). ``x86-avx2`` is the x86-64-v3 level
#: (AVX2, FMA, BMI2: Haswell, Zen 1-3 and later), which runs on every AVX2 CPU (``haswell``
#: also claims Intel-only TSX). ``aarch64`` is cross-compilation for
#: the ARMv8.0 baseline (Cortex-A72: Raspberry Pi 4, Graviton 1), so its code also runs on
#: the newer cores (Neoverse N1 and later); give a dict with your core's ``mcpu`` for
#: its extensions (dot product, SVE).
TARGET_PRESETS: dict[str, dict[str, Any] | None] = {
    "host": None,
    "x86-avx2": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"},
    "x86-avx512": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"},
    "x86-znver4": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"},
    "aarch64": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                "num-cores": 4},
}


def target_presets() -> list[str]:
    """Names accepted as a target."""
    return list(TARGET_PRESETS)


def _attrs_of(target: Any) -> dict[str, Any]:
    """The user-level attributes of a ``tvm.target.Target`` (what TVM derives from mcpu and
    mtriple — keys, tag, ``feature.*`` — is left out)."""
    d = json.loads(str(target))
    return {k: v for k, v in d.items() if k not in ("tag", "keys") and not k.startswith("feature.")}


def _unknown(name: str) -> TargetError:
    hint = (" (TVM 0.27 rejects target strings with options: give a dict such as "
            "{\"kind\": \"llvm\", \"mcpu\": \"znver4\", \"num-cores\": 2})"
            if " " in name or "-m" in name else "")
    return TargetError(f"unknown target preset {name!r}; presets: {', '.join(TARGET_PRESETS)}, "
                       f"or a TVM target dict{hint}")


def resolve_target(target: Any = None, num_cores: int | None = None) -> dict[str, Any]:
    """A validated target dict from a preset name, a dict (or its JSON text), a
    ``tvm.target.Target`` or ``None`` (= ``host``); always with ``mtriple`` and
    ``num-cores`` (``num_cores`` overrides a preset's). Raises ``TargetError`` (a
    ``ValueError``) naming an unknown preset or what is wrong with a target."""
    tvm = tvm_module()
    if target is None:
        target = "host"
    if isinstance(target, str):
        name = target.strip()
        if name.startswith("{"):
            try:
                target = json.loads(name)
            except ValueError as e:
                raise TargetError(f"target {name!r} is not valid JSON: {e}") from None
        elif name in ("llvm", "c"):
            target = {"kind": name}
        elif name not in TARGET_PRESETS:
            raise _unknown(name)
    try:
        if isinstance(target, str):
            preset = TARGET_PRESETS[target.strip()]
            out = host_target(num_cores) if preset is None else dict(preset)
        elif isinstance(target, Mapping):
            out = dict(target)
        elif isinstance(target, tvm.target.Target):
            out = _attrs_of(target)
        else:
            raise TargetError(f"target must be a preset name or a dict, got "
                              f"{type(target).__name__}")
    except (ValueError, TypeError, RuntimeError) as e:  # TVM raises RuntimeError kinds
        if isinstance(e, TargetError):
            raise
        raise TargetError(f"invalid target {target!r}: {str(e).strip().splitlines()[-1]}"
                          ) from None
    if out.get("kind") != "llvm":
        raise TargetError(f"target {out}: only CPU targets (kind 'llvm') are supported")
    if out.get("mcpu") == "native":
        raise TargetError("mcpu='native' is ignored by TVM 0.27: use the 'host' preset, which "
                          "detects this CPU")
    out.setdefault("mtriple", host_triple())
    if num_cores:
        out["num-cores"] = int(num_cores)
    out.setdefault("num-cores", host_cores())
    mcpu = out.get("mcpu")
    if mcpu and not tvm.target.codegen.llvm_is_valid_cpu(str(mcpu), str(out["mtriple"])):
        raise TargetError(f"target {out}: LLVM does not know mcpu {mcpu!r} for "
                          f"{out['mtriple']}")
    try:
        tvm.target.Target(out)
    except Exception as e:  # TVM's own validation, made one line
        raise TargetError(f"invalid target {out}: {str(e).strip().splitlines()[-1]}") from None
    return out


def tvm_target(target: Any = None) -> Any:
    """``resolve_target(target)`` as a ``tvm.target.Target`` (a Target is returned as is)."""
    tvm = tvm_module()
    if isinstance(target, tvm.target.Target):
        return target
    return tvm.target.Target(resolve_target(target))


def cpu_features(target: Any = None) -> frozenset[str]:
    """The CPU features LLVM enables for ``target``'s ``mcpu`` (``avx2``, ``avx512vnni``, ...)."""
    tvm = tvm_module()
    try:
        feats = tvm.target.codegen.llvm_get_cpu_features(tvm_target(target))
    except Exception:  # pragma: no cover - an LLVM without the feature query
        return frozenset()
    return frozenset(str(f) for f in feats)


#: The int8 dot-product instruction paths, best first: (name, CPU features it needs).
#: ``vnni``: ``vpdpbusd`` (AVX-512 VNNI: u8×i8 4-way dot products into int32, exact);
#: ``avx2``: ``vpmaddubsw`` + ``vpmaddwd`` (u8×i8 pairs into int16, then int32: exact
#: only while a pair sum fits int16, i.e. with 7-bit weights).
INT8_ISAS: tuple[tuple[str, frozenset[str]], ...] = (
    ("vnni", frozenset({"avx512f", "avx512bw", "avx512vnni"})),
    ("avx2", frozenset({"avx2"})),
)


#: The fp32 vector paths (``x86_fp32``), best first: the CPU features each needs and the
#: float32 lanes of its vectors.
F32_ISAS: tuple[tuple[str, frozenset[str], int], ...] = (
    ("avx512", frozenset({"avx512f"}), 16),
    ("avx2", frozenset({"avx2", "fma"}), 8),
)


def f32_isa(target: Any = None) -> str | None:
    """The fp32 vector path of ``target`` (``F32_ISAS``), or None (not x86, or no AVX2 +
    FMA)."""
    if not str(resolve_target(target)["mtriple"]).startswith("x86_64"):
        return None
    feats = cpu_features(target)
    return next((name for name, need, _ in F32_ISAS if need <= feats), None)


def int8_isa(target: Any = None) -> str | None:
    """The int8 instruction path of ``target`` (``INT8_ISAS``), or None (not x86, or no
    AVX2)."""
    if not str(resolve_target(target)["mtriple"]).startswith("x86_64"):
        return None
    feats = cpu_features(target)
    return next((name for name, need in INT8_ISAS if need <= feats), None)


def target_runs_here(target: Mapping[str, Any]) -> bool:
    """Whether code for ``target`` can run on this machine (same arch, CPU features present)."""
    triple = str(target.get("mtriple", host_triple()))
    if triple.split("-")[0] != host_triple().split("-")[0]:
        return False
    mcpu = target.get("mcpu")
    if not mcpu or mcpu == host_cpu():
        return True
    want, have = cpu_features(dict(target)), cpu_features(host_target())
    missing = {f for f in want - have if not f.startswith(_TUNING_FLAGS)} - _PERF_ONLY
    return bool(have) and not missing


#: LLVM "features" that only steer instruction selection and scheduling (code using them
#: runs on any CPU): a target is runnable here without them (``x86-64-v3`` on a Zen 5 lacks
#: ``false-deps-popcnt`` and ``slow-3ops-lea``).
_TUNING_FLAGS = ("fast-", "slow-", "false-deps-", "no-bypass-delay", "prefer-", "tuning-",
                 "idivl-to-divb", "idivq-to-divl", "lea-", "pad-short-functions", "use-slm-",
                 "use-glm-", "allow-light-256-bit", "branch-hint")
_PERF_ONLY = {"ermsb", "fsrm", "macrofusion", "branchfusion"}  # REP MOVSB is fast / fusion


__all__ = ["F32_ISAS", "INT8_ISAS", "TARGET_PRESETS", "cpu_features", "f32_isa", "host_cores", "host_cpu", "host_target",
           "host_triple", "int8_isa", "resolve_target", "target_presets", "target_runs_here",
           "tvm_target"]
