"""``--record``: a benchmark's figures land in benchmarks/results/<script>.json with the command
and the machine behind them, and nowhere without the flag."""

from __future__ import annotations

import argparse
import json

import benchmarks


def test_record_writes_figures_command_and_machine_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks, "RESULTS", tmp_path / "results")
    monkeypatch.setattr("sys.argv", ["bot_load.py", "--interactions", "5", "--record"])
    parser = benchmarks.add_record(argparse.ArgumentParser())
    assert benchmarks.record("bot_load", {"sent": 5}, parser.parse_args([])) is None
    assert not (tmp_path / "results").exists()
    path = benchmarks.record("bot_load", {"sent": 5}, parser.parse_args(["--record"]))
    entry = json.loads(path.read_text())
    assert path.name == "bot_load.json" and entry["figures"] == {"sent": 5}
    assert entry["command"] == "python -m benchmarks.bot_load --interactions 5 --record"
    assert entry["machine"]["cores"] >= 1 and entry["machine"]["cpu"]
