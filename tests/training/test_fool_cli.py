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
from training.images import SUPPORTED

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
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert code == 2  # one image was not a photo: the user's to fix
    assert captured.err == f"error: {bad} is not an image this service can read. Send a {SUPPORTED} file.\n"
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


def test_unusable_photos_are_user_errors_and_the_others_still_run(tiny_checkpoint, photos, tmp_path, capsys):
    """A missing, empty or damaged photo: one `error:` line each naming the file and why, the
    good photo is still changed, and the exit status is 2 (README: a user's mistake)."""
    missing, empty, cut = tmp_path / "nope.jpg", tmp_path / "empty.png", tmp_path / "cut.jpg"
    empty.touch()
    whole = photos[1].read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    argv = ["--model", tiny_checkpoint, "--target", "cat", "--out", out, "--eps", "8/255",
            missing, photos[0], empty, cut]
    code, stdout, err = run_tool(cli, argv, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"error: {missing}: no such file",
        f"error: {empty} is empty (0 bytes). Send a photo file (JPEG, PNG, ...).",
        f"error: {cut} is cut short (truncated) or damaged; re-save or re-send the photo.",
    ]
    assert stdout.startswith(f"{photos[0]}: dog") and len(stdout.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["dog0-cat.png"]

    code, stdout, err = run_tool(cli, [*argv[:-4], "--json", missing, photos[0]], capsys)
    records = [json.loads(line) for line in stdout.splitlines()]
    assert code == 2 and err == f"error: {missing}: no such file\n"
    assert records[0] == {"image": str(missing), "error": f"{missing}: no such file"}
    assert records[1]["image"] == str(photos[0]) and records[1]["result"]["label"] == "cat"
