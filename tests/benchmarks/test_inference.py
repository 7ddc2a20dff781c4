"""The benchmark script runs end to end and its accuracy/parity figures are right (its
timings are printed, never asserted: they belong to the machine, not the code)."""

from __future__ import annotations

import json

import pytest

from benchmarks.inference import cli, get_args_parser, main
from tests.conftest import run_tool


@pytest.mark.slow
def test_bench_prints_the_table_and_sane_figures(tiny_checkpoint, tiny_onnx, tiny_int8, synthetic_data, capsys):
    args = get_args_parser().parse_args([
        "--checkpoint", str(tiny_checkpoint), "--onnx", str(tiny_onnx), "--int8", str(tiny_int8),
        "--data", str(synthetic_data / "val"), "--repeat", "3", "--json",
    ])
    assert main(args) == 0
    out = capsys.readouterr().out
    for row in ("latency batch 1", "latency batch 32", "predict(file) vs session.run", "accuracy on", ".pt vs .onnx"):
        assert row in out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["max_prob_diff_pt_onnx"] <= 1e-4
    assert figures["acc_fp32"] >= 0.9 and figures["acc_int8"] >= 0.85
    assert all(figures[k] > 0 for k in figures if k.endswith("_ms"))


def test_bench_missing_model_is_a_message(tmp_path, capsys):
    code, _, err = run_tool(cli, ["--checkpoint", tmp_path / "x.pt", "--data", tmp_path], capsys)
    assert code == 2 and "not found" in err
