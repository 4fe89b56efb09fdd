"""The TVM backend's errors: each one names the graph, node, target or file it is about."""

from __future__ import annotations

from ...ir.errors import IRError


class TVMBackendError(IRError):
    """Something the TVM backend cannot do with a graph or a target."""


class TargetError(TVMBackendError, ValueError):
    """An unknown target preset or a malformed target."""


class LoweringError(TVMBackendError):
    """An op with no TVM lowering, or a lowering whose result disagrees with the IR."""


class StaticShapeError(TVMBackendError):
    """A graph whose shapes are not fully static."""


__all__ = ["LoweringError", "StaticShapeError", "TVMBackendError", "TargetError"]
