"""``shrinkc tune``: tune ahead of time into a database, reuse it (0 new trials the second
time, and in ``shrinkc compile``), and one-line errors for bad arguments."""

from __future__ import annotations

import json

import pytest

from shrinkc.tools.cli import main
from shrinkc.tools.cmd_tune import parse_tracker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SHRINKC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def _tune(capsys, db, *extra):
    assert main(["tune", "zoo:lenet_300_100", "--trials", "4", "--max-trials-per-task", "1",
                 "--population", "8", "--tuning-db", str(db), "--no-progress", "--json",
                 *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_tune_writes_records_and_the_second_run_reuses_them(capsys, tmp_path):
    db = tmp_path / "db"
    first = _tune(capsys, db)
    assert first["new_trials"] >= 1
    assert first["build_errors"] == 0 and first["run_errors"] == 0
    assert first["database"]["records"] >= first["new_trials"]
    assert first["database"]["valid"] >= 1
    assert first["db"] == str(db)
    second = _tune(capsys, db)
    assert second["new_trials"] == 0
    assert second["database"]["records"] == first["database"]["records"]
    # the table and summary (text output) on a run with nothing left to tune
    assert main(["tune", "zoo:lenet_300_100", "--trials", "4", "--max-trials-per-task", "1",
                 "--tuning-db", str(db), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "new trials 0" in text and f"database   {db}" in text and "skipped" in text
    # shrinkc compile applies the same database
    assert main(["compile", "zoo:lenet_300_100", "--backend", "tvm", "--tuning-db", str(db),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert str(db) in json.dumps(report)


@pytest.mark.slow
def test_a_time_budget_alone_tunes_until_it_is_up(capsys, tmp_path):
    db = tmp_path / "db"
    assert main(["tune", "zoo:lenet_300_100", "--budget", "40s", "--population", "8",
                 "--tuning-db", str(db), "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ended_by"] == "time budget" and out["budget_s"] == 40
    assert out["new_trials"] >= 1 and out["first_trial_s"] is not None
    assert out["model_estimate_ms"] is None or out["model_estimate_ms"] > 0
    assert "first measured trial" in open(out["timeline"]).read()


@pytest.mark.parametrize("argv, message", [
    (["--target", "nosuch"], "unknown target preset 'nosuch'"),
    (["--target", "{bad json"], "is not valid JSON"),
    (["--rpc-tracker", "localhost", "--rpc-key", "k"], "expected HOST:PORT"),
    (["--rpc-tracker", "127.0.0.1:99999", "--rpc-key", "k"], "expected HOST:PORT"),
    (["--rpc-tracker", "127.0.0.1:9190"], "--rpc-tracker and --rpc-key go together"),
    (["--trials", "-1"], "--trials -1: must be >= 0"),
    (["--max-trials-per-task", "0"], "must be >= 1"),
    (["--budget", "5"], "--budget '5': expected a duration such as 90s, 5m, 1h or 1h30m"),
    (["--budget", "1.5h"], "--budget '1.5h': expected a duration"),
    (["--budget", "0m", "--trials", "8"], "--budget '0m': a time budget must be longer than 0 s"),
])
def test_bad_arguments_are_one_line_errors(capsys, tmp_path, argv, message):
    assert main(["tune", "zoo:lenet_300_100", "--tuning-db", str(tmp_path / "db"),
                 *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shrinkc: error: ") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "db").exists()


def test_unreachable_tracker_is_a_one_line_error(capsys, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["tune", "zoo:lenet_300_100", "--rpc-tracker", f"127.0.0.1:{port}",
                 "--rpc-key", "k"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the tracker" in err and err.count("\n") == 1


def test_parse_tracker():
    assert parse_tracker("127.0.0.1:9190") == ("127.0.0.1", 9190)
    assert parse_tracker("[::1]:9190") == ("::1", 9190)
    with pytest.raises(ValueError):
        parse_tracker(":9190")
