"""The ``shrinkc`` command line: one console script, a subcommand per job.

Each subcommand lives in ``tools/cmd_<name>.py`` and exposes ``add_parser(subparsers)``
(which sets ``func``). ``main`` is the one error boundary:

* every expected failure — shrinkc's own errors (``IRError`` and its kinds), bad option
  values, file-system errors on a path, out of memory — prints one line
  ``shrinkc: error: …`` on stderr and exits 2 (argparse's usage errors too);
* anything else is a bug: one line ``shrinkc: error: internal error: …`` and exit 70;
* ``-v`` / ``--debug`` (before or after the subcommand) add the traceback, INFO / DEBUG
  logging and what libraries log or warn (torch.export's logs and fake-tensor tracebacks;
  the FX dumps it prints, which the frontend logs at INFO), which is otherwise dropped;
* stdout closed by its reader (``shrinkc … | head``) ends the output quietly, exit 0;
* Ctrl-C: one line, exit 130.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys
import traceback
from collections.abc import Iterator

SUBCOMMANDS = ("inspect", "opt", "compile", "tune", "bench")

EXIT_ERROR = 2  # bad input, options, paths, resources
EXIT_INTERNAL = 70  # a bug in shrinkc (EX_SOFTWARE)
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with shrinkc's one-line errors (``shrinkc: error: opt: …``), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{sub}: " if sub else ""
        help_cmd = f"shrinkc {sub} --help" if sub else "shrinkc --help"
        sys.stderr.write(f"shrinkc: error: {where}{message} (see '{help_cmd}')\n")
        raise SystemExit(EXIT_ERROR)


def _add_common(p: argparse.ArgumentParser, top: bool) -> None:
    """-v / --debug / -q, accepted before and after the subcommand."""
    sup = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("output") if not top else p
    g.add_argument("-v", "--verbose", action="count", dest="verbose" if top else "sub_verbose",
                   **({"default": 0} if top else sup),
                   help="more output: tracebacks, INFO logs, library logs (-vv: DEBUG)")
    g.add_argument("--debug", action="store_true", **sup,
                   help="everything -vv shows (tracebacks, DEBUG logs, library output)")
    g.add_argument("-q", "--quiet", action="store_true", **sup,
                   help="no progress bars or status lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="shrinkc",
        description="shrinkc: a compiler for neural-network compression. A model (zoo:NAME, "
                    "package.module:factory, FILE.shrk or FILE.onnx) becomes shrinkc's IR, is "
                    "rewritten by a pipeline of passes and compiled for PyTorch, ONNX Runtime "
                    "or TVM.",
        epilog="Run 'shrinkc COMMAND --help' for each command's options. Errors are one line "
               "'shrinkc: error: ...' and exit status 2 (70: an internal error; -v shows the "
               "traceback).")
    _add_common(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"{__package__}.cmd_{name}")
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(f"cmd_{name}"):
                continue  # not built yet
            raise
        mod.add_parser(sub)
        _add_common(sub.choices[name], top=False)
    p.set_defaults(_commands=sub.choices)
    return p


# ============================================================================ messages
def _first_line(text: str) -> str:
    return next((s.strip() for s in text.strip().splitlines() if s.strip()), "")


def error_message(e: BaseException) -> tuple[str, int]:
    """(the text after ``shrinkc: error: ``, exit status) for an exception."""
    from ..ir.graph import IRError

    if isinstance(e, IRError):
        return str(e).strip() or type(e).__name__, EXIT_ERROR
    if isinstance(e, OSError):
        what = e.strerror or _first_line(str(e)) or type(e).__name__
        files = [f for f in (e.filename, getattr(e, "filename2", None)) if f is not None]
        if files:
            return f"{' -> '.join(map(str, files))}: {what[:1].lower()}{what[1:]}", EXIT_ERROR
        return what, EXIT_ERROR
    if isinstance(e, MemoryError):
        return "out of memory" + (f": {_first_line(str(e))}" if str(e) else ""), EXIT_ERROR
    text = str(e)
    if isinstance(e, RuntimeError) and "can't allocate memory" in text:  # torch's allocator
        import re

        from .table import human_bytes

        m = re.search(r"allocate (\d+) bytes", text)
        size = f" (tried to allocate {human_bytes(int(m.group(1)))})" if m else ""
        return f"out of memory{size}", EXIT_ERROR
    if isinstance(e, ValueError):  # shrinkc's option checks raise ValueError too
        return _first_line(text) or type(e).__name__, EXIT_ERROR
    return (f"internal error: {type(e).__name__}: {_first_line(text)} (a bug in shrinkc; "
            f"rerun with -v for the traceback)"), EXIT_INTERNAL


# ============================================================================ library noise
@contextlib.contextmanager
def captured_library_output(enabled: bool) -> Iterator[io.StringIO]:
    """While enabled, what other libraries log goes into the returned buffer instead of the
    terminal: torch sets up its own logging handlers on stderr (which do not propagate),
    and ``warnings`` become log records, which the root handler drops unless ``-v``
    (``_OnlyShrinkc``). What torch.export prints itself, the frontend captures and logs.
    shrinkc's own messages and progress bars still reach stderr."""
    buf = io.StringIO()
    if not enabled:
        yield buf
        return
    import torch  # noqa: F401 - every command needs it; its handlers exist once it is imported

    swapped: list[tuple[logging.StreamHandler, object]] = []
    root_handlers = set(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        for h in getattr(logger, "handlers", ()):
            if (isinstance(h, logging.StreamHandler) and h not in root_handlers
                    and h.stream in (sys.stderr, sys.__stderr__)):
                swapped.append((h, h.setStream(buf)))
    logging.captureWarnings(True)
    try:
        yield buf
    finally:
        logging.captureWarnings(False)
        for h, stream in swapped:
            h.setStream(stream)


class _OnlyShrinkc(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "shrinkc" or record.name.startswith("shrinkc.")


def _configure_logging(verbose: int) -> None:
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_OnlyShrinkc())  # other libraries' warnings are their noise
    for h in list(root.handlers):
        if getattr(h, "_shrinkc", False):
            root.removeHandler(h)
    handler._shrinkc = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


# ============================================================================ stdout
def stdout_closed() -> None:
    """The reader of stdout went away (``| head``): send the rest to /dev/null, so that
    neither later output nor Python's flush at exit fails."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def write_stdout(text: str) -> None:
    """Print ``text`` (instrument output); a closed pipe ends the printing, not the work."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_closed()


# ============================================================================ main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the subcommand they were given to
            (args._commands.get(args.command) or parser).error(
                f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return int(e.code or 0)
    verbose = args.verbose + getattr(args, "sub_verbose", 0) + 2 * bool(
        getattr(args, "debug", False))
    args.verbose = verbose
    args.quiet = getattr(args, "quiet", False)
    _configure_logging(verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        with captured_library_output(enabled=not verbose):
            return int(args.func(args) or 0)
    except BrokenPipeError:  # `shrinkc inspect … | head`
        stdout_closed()
        return 0
    except KeyboardInterrupt:
        print("shrinkc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one error boundary
        if verbose:
            traceback.print_exc(file=sys.stderr)
        message, status = error_message(e)
        lines = message.splitlines() or [""]
        print(f"shrinkc: error: {lines[0]}", file=sys.stderr)
        for extra in lines[1:]:  # e.g. a reproducer's command, indented
            print(extra, file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
