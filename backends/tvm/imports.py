"""Importing TVM: lazily (``import tvm`` takes seconds; tvm_ffi imports torch) and, for
MetaSchedule and the tensor intrinsics, quickly.

``import tvm.s_tir.tensor_intrin`` parses ~250 TVMScript functions, and each parse calls
``inspect.stack()``, which looks up the module of every frame by scanning ``sys.modules``
(~2000 entries once torch is imported): 45-75 s. ``memoised_getmodule`` caches those
lookups by file name while TVMScript is parsed (``fast_tvm_imports``, the int8 tensor
intrinsics, the tuning workers).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

_tvm: Any = None


def import_tvm() -> float:
    """Import tvm (once); returns the seconds it took (0 when already imported)."""
    global _tvm
    if _tvm is not None:
        return 0.0
    t0 = time.perf_counter()
    import tvm

    _tvm = tvm
    return time.perf_counter() - t0


def tvm_module() -> Any:
    """The ``tvm`` module, imported on first use."""
    import_tvm()
    return _tvm


@contextlib.contextmanager
def memoised_getmodule() -> Iterator[None]:
    """Memoise ``inspect.getmodule`` for frame/code objects by file name.

    ``inspect.stack()`` (called by every TVMScript ``@T.prim_func``) looks up the module of
    every frame; for frames of files that do not exist, like ``<frozen importlib._bootstrap>``,
    each lookup scans all of ``sys.modules``. Results depend only on the file name, so caching
    them for the duration of an import is safe.
    """
    orig = inspect.getmodule
    cache: dict[str, Any] = {}

    def getmodule(obj, _filename=None):
        if _filename is not None and (inspect.isframe(obj) or inspect.iscode(obj)):
            try:
                return cache[_filename]
            except KeyError:
                res = cache[_filename] = orig(obj, _filename)
                return res
        return orig(obj, _filename)

    inspect.getmodule = getmodule
    try:
        yield
    finally:
        inspect.getmodule = orig


_imports_done = False
_imports_lock = threading.Lock()


def fast_tvm_imports() -> float:
    """Import what MetaSchedule needs (incl. ``tvm.s_tir.tensor_intrin``) quickly, once.

    Returns the seconds spent (0 when already imported).
    """
    global _imports_done  # pylint: disable=global-statement
    with _imports_lock:
        if _imports_done:
            return 0.0
        t0 = time.perf_counter()
        with memoised_getmodule():
            import tvm.s_tir.meta_schedule  # noqa: F401  pylint: disable=import-outside-toplevel
            import tvm.s_tir.tensor_intrin  # noqa: F401  pylint: disable=import-outside-toplevel
        _imports_done = True
        dt = time.perf_counter() - t0
        logger.debug("imported tvm.s_tir.tensor_intrin in %.1f s", dt)
        return dt


__all__ = ["fast_tvm_imports", "import_tvm", "memoised_getmodule", "tvm_module"]
