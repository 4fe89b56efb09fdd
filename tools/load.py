"""Resolving a MODEL argument of the command line into an IR graph.

MODEL is one of:
  * ``package.module:factory`` — a Python callable returning a ``torch.nn.Module``
    (``--input-shape`` gives the example input; default from the zoo for zoo models),
  * ``zoo:NAME`` — a reference model from ``shrinkc.tools.zoo`` (e.g. ``zoo:resnet18``),
  * ``FILE.shrk`` — a graph saved by ``shrinkc.save`` (``FILE.shrkz``: compressed),
  * ``FILE.onnx`` — an ONNX model.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from ..ir import Graph, IRError


class ModelSpecError(IRError):
    """A MODEL argument that does not name a loadable model."""


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise ModelSpecError(f"--input-shape {text!r}: expected comma-separated ints like "
                             f"1,3,32,32") from None
    if not dims or any(d <= 0 for d in dims):
        raise ModelSpecError(f"--input-shape {text!r}: dims must be positive")
    return dims


TARGET_HELP = ("TVM target: a preset (host, x86-avx2, x86-avx512, aarch64) or a JSON dict such "
               "as '{\"kind\": \"llvm\", \"mcpu\": \"znver4\", \"num-cores\": 4}' "
               "(default: host)")


def parse_target(text: str | None) -> str | dict | None:
    """A ``--target`` argument: a preset name as is, a JSON dict parsed."""
    if text and text.strip().startswith("{"):
        import json

        try:
            return json.loads(text)
        except ValueError as e:
            raise ValueError(f"--target {text!r} is not valid JSON: {e}") from None
    return text


def load_model(spec: str, input_shape: tuple[int, ...] | None = None,
               kwargs: dict | None = None, seed: int = 0) -> Graph:
    """The IR graph for a MODEL argument. ``zoo:`` and factory models are built and given
    their example input after ``torch.manual_seed(seed)``: the same seed, the same weights."""
    import torch

    from ..ir.frontends.torch import trace
    from ..ir.serialize import load

    path = Path(spec)
    if spec.endswith((".shrk", ".shrkz")):
        return load(path)
    if spec.endswith(".onnx"):
        from ..ir.frontends.onnx import load_onnx

        if not path.is_file():
            raise ModelSpecError(f"{spec}: no such file")
        shapes = {"*": input_shape} if input_shape else None
        return load_onnx(path, input_shapes=shapes)
    torch.manual_seed(seed)
    if spec.startswith("zoo:"):
        from . import zoo

        name = spec[4:]
        try:
            model = zoo.get_model(name, **(kwargs or {}))
        except ValueError as e:
            raise ModelSpecError(f"{spec}: {e}") from None
        shape = input_shape or zoo.default_input_shape(name)
    elif ":" in spec:
        model = _call_factory(spec, kwargs)
        if input_shape is None:
            raise ModelSpecError(f"{spec}: give --input-shape (e.g. 1,3,32,32)")
        shape = input_shape
    else:
        raise ModelSpecError(f"{spec}: MODEL must be zoo:NAME, package.module:factory, a .shrk "
                             f"or a .onnx file")
    torch.manual_seed(seed)
    return trace(model, (torch.randn(*shape),), name=spec.split(":")[-1])


CALIBRATION_HELP = ("calibration data for passes that need it (quantize, bias-correct): "
                    "FILE.npz (one array per model input, samples along dim 0) or "
                    "zoo-data:NAME (a seeded sample of a bundled dataset's training split, "
                    "e.g. zoo-data:mnist, resized to the model's input)")


def load_calibration(spec: str, graph: Graph, samples: int = 256,
                     batch_size: int | None = None) -> list:
    """The calibration batches named by ``spec`` for ``graph`` (see ``CALIBRATION_HELP``);
    batches of ``batch_size`` samples (default: ``load_calibration``'s)."""
    from ..passes.analyses.calibration import load_calibration as load_npz

    if spec.startswith("zoo-data:"):
        from . import data

        name = spec.split(":", 1)[1]
        if name not in data.DATASETS:
            raise ModelSpecError(f"--calibration {spec}: unknown dataset {name!r} (known: "
                                 f"{', '.join(data.DATASETS)})")
        if len(graph.inputs) != 1 or graph.inputs[0].type.rank != 4:
            raise ModelSpecError(f"--calibration {spec}: zoo data feeds a model with one "
                                 f"N×C×H×W input; this one takes "
                                 f"{', '.join(str(v.type) for v in graph.inputs)}")
        try:
            X, _ = data.load(name, "train", **data.image_kwargs(graph.inputs[0].shape))
        except ValueError as e:
            raise ModelSpecError(f"--calibration {spec}: {e}") from None
        if not 0 < samples <= len(X):
            raise ModelSpecError(f"--calibration-samples must be in 1..{len(X)} for {name}")
        import torch

        idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:samples]
        return load_npz({graph.inputs[0].name: X[idx].numpy()}, graph, batch_size)
    if not spec.endswith(".npz"):
        raise ModelSpecError(f"--calibration {spec}: expected FILE.npz or zoo-data:NAME")
    return load_npz(spec, graph, batch_size)


TRAINING_HELP = ("training data for passes that train (recover): zoo-data:NAME (a bundled "
                 "dataset's training split with its labels, resized to the model's input, e.g. "
                 "zoo-data:mnist) or FILE.npz (one array per model input, samples along dim 0, "
                 "and optional integer 'labels')")


def load_training(spec: str, graph: Graph, samples: int | None = None) -> tuple:
    """``(inputs, labels)`` named by ``spec`` for ``graph`` (see ``TRAINING_HELP``): the
    inputs a tensor (one-input graph) or a list of tensors, labels a tensor or None; with
    ``samples``, a seeded sample of that many."""
    import torch

    if spec.startswith("zoo-data:"):
        from . import data

        name = spec.split(":", 1)[1]
        if name not in data.DATASETS:
            raise ModelSpecError(f"--training {spec}: unknown dataset {name!r} (known: "
                                 f"{', '.join(data.DATASETS)})")
        if len(graph.inputs) != 1 or graph.inputs[0].type.rank != 4:
            raise ModelSpecError(f"--training {spec}: zoo data feeds a model with one N×C×H×W "
                                 f"input; this one takes "
                                 f"{', '.join(str(v.type) for v in graph.inputs)}")
        try:
            X, y = data.load(name, "train", **data.image_kwargs(graph.inputs[0].shape))
        except ValueError as e:
            raise ModelSpecError(f"--training {spec}: {e}") from None
        xs = [X]
    elif spec.endswith(".npz"):
        import numpy as np

        try:
            with np.load(spec, allow_pickle=False) as f:
                arrays = {k: np.asarray(f[k]) for k in f.files}
        except Exception as e:
            raise ModelSpecError(f"--training {spec}: cannot read it as .npz: {e}") from None
        labels = arrays.pop("labels", None)
        names = [v.name for v in graph.inputs]
        if len(arrays) == 1 and len(names) == 1:
            arrays = {names[0]: next(iter(arrays.values()))}
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ModelSpecError(f"--training {spec}: no array for input(s) {missing} (it has "
                                 f"{', '.join(sorted(arrays)) or 'none'})")
        xs = [torch.from_numpy(arrays[n]) for n in names]
        y = None if labels is None else torch.from_numpy(labels).long()
    else:
        raise ModelSpecError(f"--training {spec}: expected FILE.npz or zoo-data:NAME")
    if samples is not None:
        if not 0 < samples <= len(xs[0]):
            raise ModelSpecError(f"--training-samples must be in 1..{len(xs[0])}")
        idx = torch.randperm(len(xs[0]), generator=torch.Generator().manual_seed(0))[:samples]
        xs, y = [x[idx] for x in xs], (None if y is None else y[idx])
    return (xs[0] if len(xs) == 1 else xs), y


def _call_factory(spec: str, kwargs: dict | None):
    """``package.module:factory`` imported and called; every way that fails is one
    ``ModelSpecError`` naming the spec."""
    import torch

    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ModelSpecError(f"{spec}: cannot import {attr} from {mod_name}: {e}") from None
    except Exception as e:  # a module that fails while importing (SyntaxError, ...)
        raise ModelSpecError(f"{spec}: importing {mod_name} failed: {type(e).__name__}: "
                             f"{_first_line(e)}") from e
    if not callable(factory):
        raise ModelSpecError(f"{spec}: {attr} is a {type(factory).__name__}, not a callable "
                             f"returning a torch.nn.Module")
    try:
        inspect.signature(factory).bind(**(kwargs or {}))
    except TypeError as e:
        raise ModelSpecError(f"{spec}: {attr} cannot be called without arguments ({e}); "
                             f"give a factory that needs none") from None
    except ValueError:  # no signature (a builtin): just call it
        pass
    try:
        model = factory(**(kwargs or {}))
    except Exception as e:
        raise ModelSpecError(f"{spec}: {attr}() failed: {type(e).__name__}: "
                             f"{_first_line(e)}") from e
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"{spec}: {attr}() returned a {type(model).__name__}, not a "
                             f"torch.nn.Module")
    return model


def _first_line(e: BaseException) -> str:
    return next((s.strip() for s in str(e).splitlines() if s.strip()), type(e).__name__)
