"""``python -m benchmarks.attacks`` end to end on the tiny model: the figures it prints
are the ONNX model's verdicts on what a user would receive (no timing is asserted)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import tests.conftest as _root_module  # shared helpers; pytest puts the repo root on sys.path
from benchmarks.attacks import cli, get_args_parser, main
from tests.conftest import run_tool

synthetic_photo = _root_module.synthetic_photo


@pytest.mark.slow  # attacks, ideal images and README pictures: ~10 s on an idle machine
def test_bench_prints_onnx_judged_figures(tiny_checkpoint, tiny_onnx, tmp_path, capsys):
    dogs = tmp_path / "dogs"
    dogs.mkdir()
    for i in range(2):
        synthetic_photo("dog", 40 + i, size=(120, 96)).save(dogs / f"dog{i}.png")
    (dogs / "notes.txt").write_text("not a photo, not picked up")
    args = get_args_parser().parse_args([
        "--checkpoint", str(tiny_checkpoint), "--onnx", str(tiny_onnx), "--data", str(dogs),
        "--eps", "8/255", "--steps", "8", "--robust-limit", "1", "--ideal-labels", "cat", "--ideal-steps", "16",
        "--readme-assets", str(tmp_path / "assets"), "--threads", "1", "--json",
    ])
    assert main(args) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert "| default | 8/255 | 2 |" in out
    (row,) = report["default"]
    assert row["n"] == 2 and row["success_png"] == 1.0 and row["max_linf_255"] <= 8
    assert report["robust"]["n"] == 1 and {"success_jpeg85", "success_half"} <= set(report["robust"])
    (ideal,) = report["ideal"]
    assert ideal["label"] == "cat" and 0 <= ideal["prob_blur2"] <= 1 and ideal["prob_png"] >= 0.9
    for name in ("ideal_cat.png", "ideal_dog.png", "fool_before_after.png"):
        assert Image.open(tmp_path / "assets" / name).mode == "RGB"


def test_bench_refuses_bad_arguments(tiny_checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path)]
    code, _, err = run_tool(cli, base + ["--target", "zebra"], capsys)
    assert code == 2 and "unknown --target 'zebra'" in err
    code, _, err = run_tool(cli, base, capsys)
    assert code == 2 and "no photos in" in err
