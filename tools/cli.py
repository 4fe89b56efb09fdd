"""The ``shrinkc`` command line: one console script, a subcommand per job.

Each subcommand lives in ``tools/cmd_<name>.py`` and exposes ``add_parser(subparsers)``
(which sets ``func``). Errors from shrinkc (``IRError`` and its kinds) print one line
``shrinkc: error: …`` and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMANDS = ("inspect", "opt", "compile", "tune", "bench")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shrinkc",
        description="shrinkc: a compiler for neural-network compression. A model (zoo:NAME, "
                    "package.module:factory, FILE.shrk or FILE.onnx) becomes shrinkc's IR, is "
                    "rewritten by a pipeline of passes and compiled for PyTorch, ONNX Runtime "
                    "or TVM.",
        epilog="Run 'shrinkc COMMAND --help' for each command's options.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"{__package__}.cmd_{name}")
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(f"cmd_{name}"):
                continue  # not built yet
            raise
        mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..ir.graph import IRError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (IRError, ValueError, FileNotFoundError) as e:
        print(f"shrinkc: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `shrinkc inspect … | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("shrinkc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
