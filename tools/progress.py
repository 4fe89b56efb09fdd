"""A status line on stderr for long work (``shrinkc compile``, ``bench``, TVM builds).

``Status(desc)`` is a tqdm status line that shows the stage that is running and the time
so far; each ``status(stage)`` starts the next stage. It is drawn only when stderr is a
terminal and ``--quiet`` was not given; otherwise calling it does nothing, so the library's
``progress=`` hooks can always be handed one.
"""

from __future__ import annotations

import sys
from typing import IO


def enabled(quiet: bool = False, stream: IO[str] | None = None) -> bool:
    """Progress is drawn on a terminal, unless ``--quiet``."""
    stream = stream or sys.stderr
    try:
        return not quiet and stream.isatty()
    except (AttributeError, ValueError):
        return False


class Status:
    """One line: ``desc: stage [elapsed]``; ``stages`` records every stage shown."""

    def __init__(self, desc: str, *, quiet: bool = False, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self.desc = desc
        self.bar = None
        self.stages: list[str] = []
        if enabled(quiet, self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(desc=desc, file=self.stream, bar_format="{desc} [{elapsed}]",
                            leave=False, dynamic_ncols=True)

    def __call__(self, stage: str) -> None:
        """The next stage has started."""
        self.stages.append(stage)
        if self.bar is not None:
            self.bar.set_description_str(f"{self.desc}: {stage}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Status:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Status", "enabled"]
