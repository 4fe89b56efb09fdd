"""backends/tvm/budget.py: time budgets for tuning (``90s``, ``5m``, ``1h``, ``1h30m``)."""

from __future__ import annotations

import math

import pytest

from shrinkc.backends.tvm.budget import format_budget, parse_budget


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2m30s", 150),
    ("1h0m5s", 3605), (" 5M ", 300), ("600s", 600),
])
def test_good_forms(text, seconds):
    assert parse_budget(text) == seconds


def test_numbers_are_seconds_and_none_is_no_budget():
    assert parse_budget(90) == 90.0 and parse_budget(0.5) == 0.5
    assert parse_budget(None) is None


@pytest.mark.parametrize("value", [
    "5", "5 min", "1.5h", "30m1h", "m", "", "5m 30s", "-5m", "1d", "5mm", "h5",
])
def test_bad_forms_are_one_error_naming_the_option(value):
    with pytest.raises(ValueError) as e:
        parse_budget(value, "--budget")
    msg = str(e.value)
    assert msg.startswith(f"--budget {value!r}: expected a duration such as 90s, 5m, 1h or 1h30m")


@pytest.mark.parametrize("value", ["0s", "0h0m", 0, -3, math.inf, math.nan])
def test_zero_negative_and_infinite_budgets_are_refused(value):
    with pytest.raises(ValueError, match=r"^tune_budget .*(longer than 0 s|positive number)"):
        parse_budget(value, "tune_budget")


def test_bool_is_not_a_number_of_seconds():
    with pytest.raises(ValueError, match="budget True: expected a duration"):
        parse_budget(True)


@pytest.mark.parametrize("seconds, text", [(5400, "1h30m"), (90, "1m30s"), (300, "5m"),
                                           (3605, "1h5s")])
def test_format_parses_back(seconds, text):
    assert format_budget(seconds) == text
    assert parse_budget(text) == seconds
