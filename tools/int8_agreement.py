"""Do onnxruntime and TVM compute the exact int8 result, on this CPU or on another one?

    python -m shrinkc.tools.int8_agreement [--models resnet18,mobilenet_v2,vgg11_bn]
                                           [--backends onnxruntime,tvm] [--cpu EPYC-Milan]
                                           [--json FILE]

Per model (trained on MNIST-5k by ``tools/train.py``, ``--untrained`` for random weights;
traced at batch 1, ``fold-bn``): ``quantize`` with min / max calibration on ``--calib-images``
training images, once with 8-bit weights (``reduce_range=false``) and once with 7-bit ones
(``true``). The exact answer is the interpreter's (float arithmetic on integer values, exact
for these sums). Two comparisons:

- **per segment**: the graph cut at every activation quantize (``cut_at_quantizes``), each QDQ
  segment (dequantize → layer → quantize) fed the interpreter's integer inputs, so one
  rounding tie is not amplified by the layers after it: the worst segment's difference in
  quantization steps and the share of its elements that differ at all (ties: ≤ 1 step on
  ≤ 1 % of the elements is agreement);
- **end to end**: the whole QDQ graph on ``--test-images`` test images: the largest logit
  difference against the largest logit, and the share of images whose top-1 differs.

The backends run in a child process on the *target CPU*: this one, or with ``--cpu MODEL``
an emulated one (``qemu-x86_64 -cpu MODEL``, Debian's ``qemu-user``). The emulator answers
CPUID as that model, so onnxruntime's MLAS picks the kernels it would pick there — on
``EPYC-Milan`` (a Zen 3: AVX2, no VNNI) the u8 × s8 kernel that sums pairs of products in a
saturating int16 (``vpmaddubsw``); ``qemu-x86_64 -cpu help`` lists the models. TVM is
compiled here for the CPU that LLVM detects in the child (``znver3`` there), saved, and
loaded and run in the child; its rows say which int8 dot instructions its kernels use. The
child also reports what ``reduce_range=auto`` picks on that CPU
(``calibration.needs_reduce_range``, by CPUID), which marks the ``auto`` rows. Under
emulation a model takes one to two minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Agreement", "agreement", "cut_at_quantizes", "main", "markdown"]

#: Within this many steps, on at most ``TIE_SHARE`` of a segment's elements, a runtime agrees
#: with the exact result: rounding ties (x.5 after the float requantization).
TIE_STEPS, TIE_SHARE = 1, 0.01


@dataclass
class Agreement:
    model: str
    backend: str  # onnxruntime or tvm
    weight_bits: int  # 8 (reduce_range=false) or 7 (true)
    auto: bool  # what reduce_range=auto picks on the target CPU
    segments: int
    worst_steps: int  # the largest difference of any segment, in quantization steps
    worst_segment: str
    worst_share: float  # of the elements of any one segment that differ at all, the largest
    e2e_max_abs: float  # end to end: the largest logit difference ...
    e2e_scale: float  # ... and the largest logit
    e2e_top1_changed: float  # share of test images whose top-1 differs
    #: TVM: the int8 dot-product instructions in the whole graph's kernels (vpdpbusd: VNNI,
    #: vpmaddubsw: AVX2; none: the generic integer kernels); onnxruntime: ""
    dot_instructions: str = ""

    @property
    def agrees(self) -> bool:
        return self.worst_steps <= TIE_STEPS and self.worst_share <= TIE_SHARE


def cut_at_quantizes(q):
    """Every activation quantize's result becomes a graph output, and its users read a new
    graph input instead: each QDQ segment (dequantize → layer → quantize) can be fed the
    interpreter's integer inputs and compared on its own, so one rounding difference is
    not amplified by the layers after it. The new inputs are named ``<quantize output>.in``."""
    from ..ir import batch as ir_batch

    g = q.clone()
    for n in list(g.nodes):
        if n.op == "quantize" and not n.inputs[0].is_constant:
            cut = g.add_input(n.output.type, g.fresh_name(f"{n.output.name}.in"))
            g.replace_all_uses(n.output, cut)
            g.outputs.append(n.output)
    return ir_batch.mark(g)  # the new inputs and outputs carry the batch too


def segment_feeds(q, cut, x) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(inputs of ``cut`` for input ``x``: ``x`` and the integers the interpreter computes
    for each cut, the interpreter's outputs of ``cut`` for them)."""
    import torch

    from ..ir.interpreter import run

    with torch.no_grad():
        _, cap = run(q, [x], capture=True)
        feeds = [x] + [cap[v.name[: -len(".in")]] for v in cut.inputs[1:]]
        want = [t.numpy() for t in run(cut, feeds)]
    return [f.numpy() for f in feeds], want


def compare_segments(names: Sequence[str], got: Sequence[np.ndarray],
                     want: Sequence[np.ndarray]) -> tuple[int, str, float]:
    """(worst difference in steps, its segment, the largest share of differing elements) over
    the integer outputs."""
    worst, where, share = 0, "", 0.0
    for name, a, b in zip(names, got, want):
        if not np.issubdtype(b.dtype, np.integer):
            continue  # the f32 logits
        d = np.abs(a.astype(np.int64) - b.astype(np.int64))
        if int(d.max()) > worst:
            worst, where = int(d.max()), name
        share = max(share, float((d > 0).mean()))
    return worst, where, share


# ---------------------------------------------------------------------------- the target
def _child_probe(out: Path) -> None:
    """In the target process: what this CPU is (CPUID, what ``auto`` picks, LLVM's name)."""
    import onnxruntime as ort

    from ..passes.analyses import calibration as cal

    flags = cal.cpuid_flags()
    probe = {"cpuid_flags": sorted(flags) if flags is not None else None,
             "reduce_range": cal.needs_reduce_range(), "onnxruntime": ort.__version__,
             "llvm_cpu": None}
    try:
        from ..backends.tvm import targets

        probe["llvm_cpu"] = targets.host_cpu()
    except Exception as e:  # noqa: BLE001 - TVM is optional here: the ONNX rows still count
        log.debug("no TVM in the target process: %s", e)
    out.write_text(json.dumps(probe))


def _ort_runner(d: Path, part: str):
    from ..backends.onnx import OnnxRuntimeSession

    return OnnxRuntimeSession(d / f"{part}.onnx", threads=1).run


def _tvm_runner(d: Path, part: str):
    from ..backends.tvm.module import TVMModule
    from ..ir.types import TensorType

    e = json.loads((d / "tvm.json").read_text())[part]
    return TVMModule.load(d / f"tvm_{part}", e["entry"],
                          [(n, TensorType(t, s)) for n, t, s in e["inputs"]],
                          [(n, TensorType(t, s)) for n, t, s in e["outputs"]]).run


def _child_run(folder: Path) -> None:
    """In the target process: run every case in onnxruntime (one thread) and, where it was
    built, in TVM, and write what they compute."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for case in manifest["cases"]:
        d = folder / case
        with np.load(d / "feeds.npz") as f:
            seg_in = [f[f"seg{i}"] for i in range(int(f["n_seg"]))]
            images = f["images"]
        runners = {"onnxruntime": _ort_runner, "tvm": _tvm_runner}
        got = {}
        for backend in manifest["backends"]:
            seg = runners[backend](d, "cut")(seg_in)
            full = runners[backend](d, "full")
            e2e = np.concatenate([full([images[i:i + 1]])[0] for i in range(len(images))])
            got[f"{backend}.e2e"] = e2e
            got.update({f"{backend}.seg{i}": a for i, a in enumerate(seg)})
        np.savez(d / "got.npz", **got)


def _target_cmd(cpu: str | None, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "shrinkc.tools.int8_agreement", *args]
    if cpu:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            raise SystemExit("int8_agreement: --cpu needs an x86-64 host (the emulated process "
                             "runs this Python)")
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise SystemExit("int8_agreement: --cpu needs qemu-x86_64 (Debian: apt install "
                             "qemu-user)")
        cmd = [qemu, "-cpu", cpu, *cmd]
    return cmd


def _on_target(cpu: str | None, *args: str) -> None:
    cmd = _target_cmd(cpu, *args)
    env = dict(os.environ, OMP_NUM_THREADS="1", TVM_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        err = "\n".join(line for line in p.stderr.splitlines()
                        if "TCG doesn't support requested feature" not in line)
        raise SystemExit(f"int8_agreement: the target process failed ({' '.join(cmd[:3])} …):"
                         f"\n{err[-3000:]}")


# ---------------------------------------------------------------------------- the check
def _model(name: str, trained: bool, X):
    from .. import optimize, trace
    from . import train, zoo

    if trained:
        model, _ = train.train(name)
    else:
        import torch

        torch.manual_seed(0)
        recipe = train.RECIPES.get(name, train.DEFAULT_RECIPE)
        model = zoo.get_model(name, dataset="mnist", **dict(recipe.model_kwargs)).eval()
    return optimize(trace(model, (X[:1].clone(),), name=name), "fold-bn")


DOT_INSTRUCTIONS = ("vpdpbusd", "vpmaddubsw")


def _save_tvm(graphs: dict, target: dict, d: Path) -> str:
    """Build and save each graph for ``target``; returns the dot instructions of the whole
    graph's (``full``) kernels, e.g. ``vpmaddubsw ×52``."""
    from ..backends import tvm as btvm

    entries, dots = {}, ""
    for part, g in graphs.items():
        m = btvm.build(g, target)
        if part == "full":
            asm = m.assembly()
            dots = ", ".join(f"{i} ×{asm.count(i)}" for i in DOT_INSTRUCTIONS
                             if i in asm) or "none"
        entries[part] = {"entry": m.save(d / f"tvm_{part}"),
                         "inputs": [[n, t.dtype, list(t.shape)] for n, t in m.inputs],
                         "outputs": [[n, t.dtype, list(t.shape)] for n, t in m.outputs]}
    (d / "tvm.json").write_text(json.dumps(entries))
    return dots


BACKENDS = ("onnxruntime", "tvm")


def agreement(models: Sequence[str] = ("resnet18", "mobilenet_v2", "vgg11_bn"), *,
              cpu: str | None = None, backends: Sequence[str] = BACKENDS,
              trained: bool = True, calib_images: int = 64, test_images: int = 100
              ) -> tuple[list[Agreement], dict[str, Any]]:
    """The rows (model × 8 / 7-bit weights × backend) and the target's probe
    (``cpuid_flags``; ``reduce_range``: what ``auto`` picks there; ``onnxruntime``;
    ``llvm_cpu``: the CPU TVM builds for, LLVM's name for the target)."""
    import torch

    from .. import optimize
    from ..backends.onnx import export_model
    from ..ir.interpreter import run
    from . import data

    unknown = set(backends) - set(BACKENDS)
    if unknown or not backends:
        raise SystemExit(f"int8_agreement: backends are {', '.join(BACKENDS)}; got "
                         f"{', '.join(backends) or 'none'}")
    X, _ = data.load("mnist", "test")
    X = X[:test_images]
    calib = data.calibration_batches("mnist", n=calib_images, batch_size=calib_images)
    expected: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="shrinkc-int8-agreement-") as tmp:
        folder = Path(tmp)
        _on_target(cpu, "--probe", str(folder / "probe.json"))
        probe = json.loads((folder / "probe.json").read_text())
        target = None
        if "tvm" in backends:
            if probe["llvm_cpu"] is None:
                raise SystemExit("int8_agreement: TVM does not load in the target process "
                                 "(--backends onnxruntime leaves it out)")
            from ..backends.tvm import targets

            target = {"kind": "llvm", "mtriple": targets.host_triple(), "num-cores": 1,
                      "mcpu": probe["llvm_cpu"]}
        cases = []
        for name in models:
            g = _model(name, trained, X)
            for bits in (8, 7):
                q = optimize(g, f"quantize(calibration=minmax,reduce_range={bits == 7})",
                             calibration=[[b] for b in calib])
                cut = cut_at_quantizes(q)
                seg_in, seg_want = segment_feeds(q, cut, X[:1].clone())
                with torch.no_grad():
                    e2e_want = np.concatenate([run(q, [X[i:i + 1]])[0].numpy()
                                               for i in range(len(X))])
                case = f"{name}.w{bits}"
                d = folder / case
                d.mkdir()
                if "onnxruntime" in backends:
                    (d / "cut.onnx").write_bytes(export_model(cut).SerializeToString())
                    (d / "full.onnx").write_bytes(export_model(q).SerializeToString())
                dots = ""
                if target is not None:
                    dots = _save_tvm({"cut": cut, "full": q}, target, d)
                np.savez(d / "feeds.npz", n_seg=len(seg_in), images=X.numpy(),
                         **{f"seg{i}": a for i, a in enumerate(seg_in)})
                cases.append(case)
                expected[case] = (name, bits, [v.name for v in cut.outputs], seg_want, e2e_want,
                                  dots)
                log.info("%s: %d-bit weights, %d segments", name, bits, len(cut.outputs))
        (folder / "manifest.json").write_text(json.dumps({"cases": cases,
                                                           "backends": list(backends)}))
        _on_target(cpu, "--run", str(folder))
        rows = []
        for backend in backends:
            for case in cases:
                name, bits, names, seg_want, e2e_want, dots = expected[case]
                with np.load(folder / case / "got.npz") as f:
                    seg_got = [f[f"{backend}.seg{i}"] for i in range(len(seg_want))]
                    e2e = f[f"{backend}.e2e"]
                worst, where, share = compare_segments(names, seg_got, seg_want)
                rows.append(Agreement(
                    name, backend, bits, (bits == 7) == bool(probe["reduce_range"]),
                    len(names), worst, where, share, float(np.abs(e2e - e2e_want).max()),
                    float(np.abs(e2e_want).max()),
                    float((e2e.argmax(1) != e2e_want.argmax(1)).mean()),
                    dots if backend == "tvm" else ""))
    return rows, probe


def markdown(rows: Sequence[Agreement], probe: dict[str, Any], cpu: str | None) -> str:
    where = f"emulated `{cpu}` (qemu-x86_64)" if cpu else "this CPU"
    flags = probe["cpuid_flags"]
    head = (f"Target: {where}; CPUID: {', '.join(flags) if flags else 'no AVX2 / VNNI'}; "
            f"`reduce_range=auto` picks {'7' if probe['reduce_range'] else '8'}-bit weights; "
            f"onnxruntime {probe['onnxruntime']}"
            + (f"; TVM built for `mcpu={probe['llvm_cpu']}`" if probe.get("llvm_cpu") else "")
            + ".")
    columns = ("model", "backend", "weights", "auto", "worst segment, steps", "elements off",
               "end to end: largest logit Δ (largest logit)", "top-1 changed", "agrees",
               "TVM's int8 dot instructions")
    lines = [head, "", "| " + " | ".join(columns) + " |",
             "|---|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.backend} | {r.weight_bits}-bit | {'yes' if r.auto else ''} | "
            f"{r.worst_steps}{f' ({r.worst_segment})' if r.worst_steps > TIE_STEPS else ''} | "
            f"{100 * r.worst_share:.2f} % | {r.e2e_max_abs:.3g} ({r.e2e_scale:.3g}) | "
            f"{100 * r.e2e_top1_changed:.1f} % | {'yes' if r.agrees else '**no**'} | "
            f"{r.dot_instructions or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shrinkc.tools.int8_agreement",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--models", default="resnet18,mobilenet_v2,vgg11_bn",
                   help="comma-separated (tools/train.py's model names)")
    p.add_argument("--cpu", metavar="MODEL",
                   help="run onnxruntime on an emulated CPU of this qemu model (EPYC-Milan: "
                        "Zen 3, AVX2 without VNNI); default: this CPU")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated: onnxruntime, tvm (built for the target CPU as LLVM "
                        "names it there)")
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--test-images", type=int, default=100)
    p.add_argument("--untrained", action="store_true", help="random weights (no training)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--run", metavar="DIR", help=argparse.SUPPRESS)  # the target process
    p.add_argument("--probe", metavar="FILE", help=argparse.SUPPRESS)  # the target process
    a = p.parse_args(argv)
    if a.probe:
        _child_probe(Path(a.probe))
        return 0
    if a.run:
        _child_run(Path(a.run))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    models = [m for m in a.models.split(",") if m]
    if not models:
        p.error("--models is empty")
    if a.calib_images < 1 or a.test_images < 1:
        p.error("--calib-images and --test-images must be >= 1")
    rows, probe = agreement(models, cpu=a.cpu, backends=[b for b in a.backends.split(",") if b],
                            trained=not a.untrained,
                            calib_images=a.calib_images, test_images=a.test_images)
    print(markdown(rows, probe, a.cpu))
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": a.cpu, "probe": probe,
                                            "rows": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
