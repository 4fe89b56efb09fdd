"""Time budgets for tuning: ``"90s"``, ``"5m"``, ``"1h"``, ``"1h30m"``, ``"2m30s"``.

``parse_budget`` is the one parser (``tune(budget=…)``, ``compile(tune_budget=…)``,
``shrinkc tune --budget``, ``shrinkc compile --tune-budget``). It imports nothing heavy, so
the command line checks the option before importing TVM or loading the model.
"""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")


def parse_budget(value: str | float | None, option: str = "budget") -> float | None:
    """Seconds of a time budget, or None for no budget.

    A string is hours, minutes and seconds in that order, each an integer with its unit
    (``90s``, ``5m``, ``1h``, ``1h30m``, ``1m30s``); a number is seconds. Anything else
    (``5``, ``5 min``, ``1.5h``, ``30m1h``, ``0s``, a negative number) is one ``ValueError``
    that names ``option``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{option} {value!r}: expected a duration such as 90s, 5m, 1h or 1h30m")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{option} {value!r}: a time budget must be a positive number of "
                             f"seconds")
        return float(value)
    text = str(value).strip().lower()
    m = _DURATION.fullmatch(text)
    if not text or m is None or not any(m.groups()):
        raise ValueError(f"{option} {value!r}: expected a duration such as 90s, 5m, 1h or "
                         f"1h30m (integers with the units h, m, s, in that order)")
    seconds = 3600 * int(m["h"] or 0) + 60 * int(m["m"] or 0) + int(m["s"] or 0)
    if seconds <= 0:
        raise ValueError(f"{option} {value!r}: a time budget must be longer than 0 s")
    return float(seconds)


def format_budget(seconds: float) -> str:
    """``5400`` → ``"1h30m"``, ``90`` → ``"1m30s"`` (for reports)."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{sec}s" if sec else "")
    return out or f"{seconds:.1f}s"


__all__ = ["format_budget", "parse_budget"]
