"""``python -m training.fool``: one JSON line per image as DESIGN.md says, same-size PNGs,
a bad image answered per image while the others still run, bad flags refused clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_tool, synthetic_photo
from training.fool import cli, get_args_parser, main, parse_eps

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def photos(tmp_path) -> list[Path]:
    paths = []
    for i, size in enumerate([(160, 120), (120, 170)]):
        p = tmp_path / f"dog{i}.{'png' if i == 0 else 'jpg'}"
        synthetic_photo("dog", 20 + i, size=size).save(p)
        paths.append(p)
    return paths


def test_parse_eps_accepts_fractions_and_refuses_nonsense():
    assert parse_eps("2/255") == pytest.approx(2 / 255)
    assert parse_eps("0.03") == pytest.approx(0.03)
    for bad in ("0", "1/1000", "0.5", "two", "1/0"):
        with pytest.raises(Exception) as info:
            parse_eps(bad)
        assert "eps" in str(info.value)


def test_json_lines_and_outputs(tiny_checkpoint, photos, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    out = tmp_path / "out"
    args = get_args_parser().parse_args(
        ["--checkpoint", str(tiny_checkpoint), "--target", "cat", "--out", str(out), "--eps", "8/255", "--json",
         str(photos[0]), str(bad), str(photos[1])]
    )
    code = main(args)
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 1  # one image failed
    assert [rec["image"] for rec in lines] == [str(photos[0]), str(bad), str(photos[1])]
    assert set(lines[1]) == {"image", "error"} and "not an image" in lines[1]["error"]
    for rec, src in ((lines[0], photos[0]), (lines[2], photos[1])):
        assert {"image", "output", "source", "result", "linf", "steps", "seconds"} <= set(rec)
        assert set(rec["source"]) == {"label", "prob"}
        assert set(rec["result"]) == {"label", "prob", "is_pet", "ood_score"}  # the whole verdict (DESIGN.md)
        assert rec["source"]["label"] == "dog" and rec["result"]["label"] == "cat"
        made, original = Image.open(rec["output"]), Image.open(src).convert("RGB")
        assert Path(rec["output"]).parent == out and rec["output"].endswith(".png")
        assert made.size == original.size
        diff = np.abs(np.asarray(made, dtype=np.int16) - np.asarray(original, dtype=np.int16)).max()
        assert diff <= 8 and rec["linf"] == pytest.approx(diff / 255, abs=1e-6)


def test_bad_flags_are_refused(tiny_checkpoint, photos, tmp_path, capsys):
    base = ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o"), str(photos[0])]
    code, _, err = run_tool(cli, base + ["--target", "zebra"], capsys)
    assert code == 2 and "unknown --target 'zebra'; this model knows: cat, dog" in err
    missing = ["--checkpoint", str(tmp_path / "nope.pt"), "--target", "cat", "--out", str(tmp_path), str(photos[0])]
    code, _, err = run_tool(cli, missing, capsys)
    assert code == 2 and "checkpoint not found" in err
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(base + ["--target", "cat", "--eps", "64/255"])
    assert "eps must be between 1/255" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter imports torch: seconds on an idle machine, more on a busy one
def test_command_line_in_a_fresh_process(tiny_checkpoint, photos, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "training.fool", "--checkpoint", str(tiny_checkpoint), "--target", "cat",
           "--out", str(tmp_path / "o"), "--eps", "8/255", str(photos[0])]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "dog" in proc.stdout and "-> cat" in proc.stdout and "fooled" in proc.stdout
    assert (tmp_path / "o" / "dog0-cat.png").is_file()
    assert "Traceback" not in proc.stderr
