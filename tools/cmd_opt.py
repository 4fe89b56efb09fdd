"""``shrinkc opt MODEL --passes=PIPELINE -o OUT``: run a pass pipeline on a model.

PIPELINE is comma-separated passes with Python-literal options, e.g.
``fold-bn,fold-constants(max_growth=2.0),dce`` (``--print-passes`` lists them). OUT is a
``.shrk`` file (text IR + ``.safetensors`` weights), a compressed ``.shrkz`` (CSR +
Huffman-coded pruned / shared weights; ``--stats`` then prints the bytes per stage) or
``.onnx``; without ``-o`` nothing is
written. The pipeline is checked before the model is loaded: a bad one is one error line,
exit status 2, and no file. A failing pass leaves a reproducer (the IR before it and the
one command that reruns it) in ``--reproducer-dir`` (default: a new temporary directory).

Debugging one pass at a time: ``--print-after-all``, ``--print-changed``,
``--dot-after NAME[=FILE]`` (a picture of what the pass changed),
``--numeric-diff`` (each pass's outputs against the original model), ``--stats``,
``--time-passes``, ``--dump-dir DIR`` (``000_input.shrk``, ``001_fold-bn.shrk``, …),
``--stop-after NAME``, ``--explain`` (why each rewrite rule did or did not fire on each
node it looked at; then the channel groups prune-channels saw).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

from ..ir.graph import IRError
from .load import (CALIBRATION_HELP, TRAINING_HELP, load_calibration, load_model, load_training,
                   parse_shape)


def add_parser(sub) -> None:
    p = sub.add_parser("opt", help="run a pass pipeline on a model (pass-by-pass debugging)",
                       description=__doc__.replace("``", ""),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", nargs="?",
                   help="zoo:NAME, package.module:factory, FILE.shrk or FILE.onnx")
    p.add_argument("-p", "--passes", default="", metavar="PIPELINE",
                   help="the pass pipeline, e.g. 'fold-bn,dce' (default: none)")
    p.add_argument("-o", "--output", metavar="OUT", help="write the result (.shrk, .shrkz or .onnx)")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,32,32")
    p.add_argument("--calibration", metavar="FILE.npz|zoo-data:NAME", help=CALIBRATION_HELP)
    p.add_argument("--calibration-samples", type=int, default=256, metavar="N",
                   help="how many zoo-data images to calibrate with (default 256)")
    p.add_argument("--calibration-batch-size", type=int, metavar="N",
                   help="calibration batch size (default: 32 for a model that runs at "
                        "any batch, else its input batch)")
    p.add_argument("--training", metavar="zoo-data:NAME|FILE.npz", help=TRAINING_HELP)
    p.add_argument("--training-samples", type=int, metavar="N",
                   help="train on a seeded sample of N (default: all)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for passes' randomness and random example inputs (default 0)")
    p.add_argument("--print-passes", action="store_true",
                   help="list every pass with its options and exit")
    g = p.add_argument_group("debugging")
    g.add_argument("--print-before-all", action="store_true", help="print the IR before each pass")
    g.add_argument("--print-after-all", action="store_true", help="print the IR after each pass")
    g.add_argument("--print-before", action="append", default=[], metavar="NAME",
                   help="print the IR before pass NAME (repeatable, or comma-separated)")
    g.add_argument("--print-after", action="append", default=[], metavar="NAME",
                   help="print the IR after pass NAME (repeatable, or comma-separated)")
    g.add_argument("--print-changed", action="store_true",
                   help="print the input, then the IR after each pass that changed it")
    g.add_argument("--dot-after", action="append", default=[], metavar="NAME[=FILE]",
                   help="the graph after pass NAME as Graphviz DOT, what the pass changed "
                        "highlighted (added green, changed orange, removed dashed red): on "
                        "stdout, or into FILE (.dot, or .svg / .png / .pdf rendered with "
                        "Graphviz's 'dot'); repeatable")
    g.add_argument("--no-verify-each", dest="verify_each", action="store_false",
                   help="do not run the verifier after every pass")
    g.add_argument("--numeric-diff", action="store_true",
                   help="after each pass, compare outputs with the original model "
                        "(max abs, rel-L2, cosine, top-1)")
    g.add_argument("--time-passes", action="store_true", help="time each pass")
    g.add_argument("--stats", action="store_true",
                   help="node / param / MAC / FLOP / byte changes and counters of each pass")
    g.add_argument("--dump-dir", metavar="DIR",
                   help="save the IR before the first pass and after each (NNN_name.shrk)")
    g.add_argument("--stop-after", metavar="NAME", help="stop after the first pass NAME")
    g.add_argument("--explain", action="store_true",
                   help="while the passes run, each rewrite of a rewrite rule (fold-bn, "
                        "remove-identity, ...) and why a rule did not fire on a node it "
                        "anchors at ('explain rule ...' lines); after them, the channel "
                        "groups, their members and every refusal (what prune-channels / "
                        "prune-explain saw; else the result's)")
    g.add_argument("--reproducer-dir", metavar="DIR",
                   help="where a failing pass's reproducer goes (default: a temporary dir)")
    g.add_argument("--load-plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE (or FILE.py) that registers more passes")
    p.set_defaults(func=run)


def print_passes() -> str:
    from ..passes import PASSES
    from ..passes.registry import describe_option

    width = max([len(n) for n in PASSES] + [4])
    lines = [f"{'pass':<{width}}  exact  summary"]
    for name in sorted(PASSES):
        cls = PASSES[name]
        lines.append(f"{name:<{width}}  {'yes' if cls.exact else 'no ':<5}  {cls.summary()}")
        for f in dataclasses.fields(cls):
            lines.append(f"{'':<{width}}         {describe_option(cls, f)}")
    return "\n".join(lines)


def _names(values: list[str]) -> set[str]:
    from ..passes import get_pass

    names = {n.strip() for v in values for n in v.split(",") if n.strip()}
    for n in names:
        get_pass(n)  # an unknown name lists the known ones
    return names


def _dot_after(values: list[str]) -> tuple[set[str], dict[str, str]]:
    """``--dot-after NAME[=FILE]`` values: the pass names, and the files by name (checked)."""
    from ..ir.dot import check_target

    names, files = set(), {}
    for v in values:
        name, sep, path = v.partition("=")
        name = name.strip()
        names |= _names([name])
        if sep:
            if not path:
                raise IRError(f"--dot-after {v}: give a FILE after '='")
            files[name] = str(check_target(path, f"--dot-after {name}="))
    return names, files


def _check_output(path: str | None) -> None:
    if path is None:
        return
    from ..ir.files import check_output_file
    from ..ir.serialize import weights_path

    if path.endswith(".onnx"):
        try:
            from ..backends import onnx as onnx_backend
        except ImportError as e:
            raise IRError(f"-o {path}: ONNX output needs shrinkc.backends.onnx ({e})") from None
        if not hasattr(onnx_backend, "to_onnx"):
            raise IRError(f"-o {path}: shrinkc.backends.onnx has no to_onnx yet; use .shrk")
        check_output_file(path, "-o")
    elif path.endswith(".shrk"):
        check_output_file(path, "-o")
        check_output_file(weights_path(path), "-o")  # the weights beside it
    elif path.endswith(".shrkz"):
        check_output_file(path, "-o")
    else:
        raise IRError(f"-o {path}: the output is a .shrk, .shrkz or .onnx file")


def _load_plugins(specs: list[str]) -> None:
    from .. import passes as P

    for spec in specs:
        try:
            P.load_plugin(spec)
        except IRError as e:
            raise IRError(f"--load-plugin {spec}: {e}") from None
        except SyntaxError as e:
            raise IRError(f"--load-plugin {spec}: syntax error in {e.filename} line {e.lineno}: "
                          f"{e.msg}") from None
        except Exception as e:  # whatever the plugin raised while being imported
            first = next((s for s in str(e).splitlines() if s.strip()), "")
            raise IRError(f"--load-plugin {spec}: importing it failed: {type(e).__name__}"
                          + (f": {first}" if first else "")) from None


def run(args) -> int:
    from .. import passes as P
    from ..ir.serialize import save
    from ..passes.analyses.cost import summarize
    from ..ir.files import check_output_dir
    from ..ir.verify import verify
    from ..passes.patterns import explaining
    from .cli import write_stdout

    _load_plugins(args.load_plugin)
    if args.print_passes:
        print(print_passes())
        return 0
    if args.model is None:
        raise IRError("opt: give a MODEL (or --print-passes)")
    # everything that can be checked is checked before the model is loaded
    write = write_stdout  # `| head` ends the printing, not the run
    instruments: list[P.PassInstrument] = []
    before, after = _names(args.print_before), _names(args.print_after)
    if args.print_before_all or before:
        instruments.append(P.PrintIR(before=True, after=False, write=write,
                                     passes=None if args.print_before_all else before))
    if args.print_after_all or after:
        instruments.append(P.PrintIR(before=False, after=True, write=write,
                                     passes=None if args.print_after_all else after))
    if args.print_changed:
        instruments.append(P.PrintIR(after=False, only_changed=True, write=write))
    if args.dot_after:
        dot_names, dot_files = _dot_after(args.dot_after)
        instruments.append(P.DotDiff(passes=dot_names, files=dot_files, write=write))
    if args.numeric_diff:
        instruments.append(P.NumericDiff(write=write))
    if args.stats:
        instruments.append(P.Stats(write=write))
    if args.time_passes:
        instruments.append(P.TimePasses(write=write))
    if args.dump_dir:
        check_output_dir(args.dump_dir, "--dump-dir")
        instruments.append(P.DumpDir(args.dump_dir))
    if args.reproducer_dir:
        check_output_dir(args.reproducer_dir, "--reproducer-dir")
    instruments.append(P.Reproducer(args.reproducer_dir))
    ctx = P.PassContext(seed=args.seed, instruments=instruments)
    pm = P.PassManager(args.passes, ctx, verify_each=args.verify_each,
                       stop_after=args.stop_after)
    _check_output(args.output)

    graph = load_model(args.model, parse_shape(args.input_shape), seed=args.seed)
    if args.calibration:
        ctx.calibration = load_calibration(args.calibration, graph, args.calibration_samples,
                                           args.calibration_batch_size)
    if args.training:
        ctx.training = load_training(args.training, graph, args.training_samples)
    first = summarize(graph)
    with explaining(write) if args.explain else contextlib.nullcontext():
        pm.run(graph)
    last = summarize(graph)
    if args.explain:
        text = ctx.artifacts.get("prune-explain")
        if text is None:
            from ..passes.prune_explain import explain_graph

            text = explain_graph(graph)
        write(text)
    if args.output and not args.verify_each:  # never write a graph that does not load back
        try:
            verify(graph)
        except IRError as e:
            raise IRError(f"-o {args.output}: not written: the result does not verify "
                          f"(--no-verify-each): {e}") from None
    if args.output:
        if args.output.endswith(".onnx"):
            from .. import to_onnx

            to_onnx(graph, args.output)
        else:
            save(graph, Path(args.output))
    if args.stats and any(v.encoding is not None for v in graph.constants.values()):
        from ..ir.compress import storage_report

        print(storage_report(graph).text())
    print(f"shrinkc opt: {pm.pipeline or '(no passes)'}: nodes {first.nodes} -> {last.nodes}, "
          f"params {first.params:,} -> {last.params:,}; "
          + (f"wrote {args.output}" if args.output else "nothing written (no -o)"),
          file=sys.stderr)
    return 0
