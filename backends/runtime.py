"""The runtime protocol: what ``compile`` needs from a compiled graph of any backend.

Each backend's runtime object — ``backends.tvm.TVMModule``, ``backends.onnx.
OnnxRuntimeSession``, ``backends.torch.TorchRuntime`` — implements it, so ``compile``,
``CompiledModel`` and ``load_compiled`` treat them alike: ``run`` on numpy arrays (already
of the inputs' dtypes and shapes), ``save`` the artifact's files into a folder (returning
the manifest entries ``load`` needs: ``files`` maps a role to a file name), ``load`` them
back in any process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..ir.types import TensorType


def host_threads() -> int:
    """The one thread-count rule: every backend runs with the CPUs this process may use
    (its affinity mask; ``os.cpu_count()`` where there is none), so side-by-side timings
    compare like with like. (TVM's runtime would take half of them on x86, assuming SMT.)"""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@runtime_checkable
class Runtime(Protocol):
    """A compiled graph that runs, saves and loads."""

    backend: ClassVar[str]  # "tvm", "onnxruntime", "torch": the manifest's backend

    @property
    def threads(self) -> int | None:
        """Threads it runs with (reported and saved in the manifest)."""

    @property
    def runs_here(self) -> bool:
        """Whether it can run on this machine (a cross-compiled TVM module cannot)."""

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The outputs for inputs given as numpy arrays of the inputs' dtypes and shapes."""

    def save(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Write the artifact's files into ``directory``; returns the manifest entries
        (``{"files": {role: file name}, ...}``) that ``load`` takes back."""

    @classmethod
    def load(cls, directory: str | os.PathLike, entry: Mapping[str, Any],
             inputs: list[tuple[str, TensorType]],
             outputs: list[tuple[str, TensorType]]) -> Runtime:
        """The runtime from ``save``'s files in ``directory`` (``entry``: the manifest)."""


__all__ = ["Runtime", "host_threads"]
