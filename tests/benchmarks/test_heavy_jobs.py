"""``python -m benchmarks.heavy_jobs`` on tiny inputs against the session's tritonserver:
the JSON it prints has both sides' figures for each N (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks.heavy_jobs import cli
from tests.conftest import run_tool


@pytest.mark.triton
@pytest.mark.slow
def test_bench_reports_both_sides_for_each_n(triton_server, tiny_ood_checkpoint, capsys):
    code, out, err = run_tool(cli, ["--checkpoint", tiny_ood_checkpoint, "--url", triton_server.url, "-N", "1", "2",
                                    "--size", "96x80", "--steps", "3", "--eps", str(8 / 255), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["photo_size"] == [96, 80] and report["steps"] == 3 and report["workers"] == 2
    assert [r["n"] for r in report["runs"]] == [1, 2]
    for row in report["runs"]:
        for side in ("inprocess", "triton"):
            figures = row[side]
            assert set(figures) == {"jobs_per_s", "wall_s", "p50_s", "p99_s", "success"}
            assert figures["jobs_per_s"] > 0 and 0 < figures["p50_s"] <= figures["p99_s"] <= figures["wall_s"] + 1e-3
            assert 0 <= figures["success"] <= 1
        assert row["speedup"] == pytest.approx(row["triton"]["jobs_per_s"] / row["inprocess"]["jobs_per_s"], rel=1e-2)


def test_bench_refuses_bad_arguments(tiny_checkpoint, tmp_path, capsys):
    code, _, err = run_tool(cli, ["--checkpoint", tmp_path / "nope.pt"], capsys)
    assert code == 2 and "not found" in err
    code, _, err = run_tool(cli, ["--checkpoint", tiny_checkpoint, "--size", "big", "--url", "http://127.0.0.1:9"], capsys)
    assert code == 2 and "--size must be WxH" in err
    code, _, err = run_tool(cli, ["--checkpoint", tiny_checkpoint, "--eps", "0.9", "--url", "http://127.0.0.1:9"], capsys)
    assert code == 2 and "eps must be between" in err
