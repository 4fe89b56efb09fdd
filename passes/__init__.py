"""Passes: the registry, the PassManager and its instruments, one file per pass.

* ``base`` — ``Pass`` (a dataclass whose fields are options, declared with ``option``),
  ``PassResult``, ``PassError``, ``PipelineError``, ``PassContext``: what every pass
  module imports;
* ``registry`` — ``register_pass``, ``parse_pipeline`` / ``canonical`` for pipeline text;
* ``manager`` — ``PassManager``, ``optimize``;
* ``instruments`` — PrintIR, DotDiff, VerifyEach, NumericDiff, TimePasses, Stats, DumpDir,
  Reproducer;
* ``analyses/`` — facts about a graph that passes and instruments read (costs, …);
* one module per pass (``fold-bn`` ↔ ``fold_bn.py`` ↔ ``FoldBn``). Every module of this
  package is imported here, so a new pass file registers itself; passes defined elsewhere
  are loaded with ``load_plugin("package.module")`` (``shrinkc opt --load-plugin``).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

from .base import Pass, PassContext, PassError, PassResult, PipelineError, option
from .instruments import (
    DotDiff,
    DumpDir,
    NumericDiff,
    PassInstrument,
    PrintIR,
    Reproducer,
    Stats,
    TimePasses,
    VerifyEach,
)
from .manager import PassManager, Step, optimize
from .registry import PASSES, canonical, get_pass, parse_pipeline, register_pass, unregister_pass

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg):
    importlib.import_module(f"{__name__}.{_m}")


def load_plugin(spec: str) -> ModuleType:
    """Import a module that registers passes: a module name or a path to a ``.py`` file."""
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise PipelineError(f"plugin {spec}: no such file")
        name = path.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module.__shrinkc_plugin__ = str(path.resolve())  # how a reproducer names it
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as e:
        raise PipelineError(f"plugin {spec}: cannot import it: {e}") from None


__all__ = [
    "PASSES", "DotDiff", "DumpDir", "NumericDiff", "Pass", "PassContext", "PassError", "PassInstrument",
    "PassManager", "PassResult", "PipelineError", "PrintIR", "Reproducer", "Stats", "Step",
    "TimePasses", "VerifyEach", "canonical", "get_pass", "load_plugin", "optimize", "option",
    "parse_pipeline", "register_pass", "unregister_pass",
]
