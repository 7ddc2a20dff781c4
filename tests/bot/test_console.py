"""``python -m bot.console``: the bot's handlers from a terminal, one JSON line per call.

Run as subprocesses, like an operator would: real handlers, real ONNX model and torch code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bot.bot_uploads import photo_bytes


def console(*args: str, cwd: Path) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "bot.console", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=240)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # exactly one JSON line
    reply = json.loads(lines[0])
    assert set(reply) == {"ok", "text", "files"} and isinstance(reply["text"], str)
    return proc.returncode, reply


@pytest.fixture
def model_flags(bot_onnx, tiny_checkpoint) -> list[str]:
    return ["--model", str(bot_onnx), "--checkpoint", str(tiny_checkpoint)]


@pytest.mark.parametrize("label", ["cat", "dog"])
def test_classify_names_the_pet(tmp_path, model_flags, label):
    photo = tmp_path / f"{label}.png"
    photo.write_bytes(photo_bytes(label, seed=21))
    status, reply = console("classify", "--image", str(photo), *model_flags, cwd=tmp_path)
    assert status == 0 and reply["ok"] and reply["files"] == []
    first = reply["text"].splitlines()[0]
    assert first == f"A {label}"


@pytest.mark.parametrize("kind", ["empty", "truncated", "text-named-png", "svg", "decompression-bomb", "cmyk"])
def test_bad_files_are_replies_not_crashes(tmp_path, model_flags, hostile, kind):
    path, _, expect = hostile[kind]
    status, reply = console("classify", "--image", str(path), *model_flags, cwd=tmp_path)
    assert status == 0
    if expect == "cat":
        assert reply["ok"] and reply["text"].startswith("A cat")
    else:
        assert not reply["ok"] and expect.lower() in reply["text"].lower(), reply


def test_missing_file_and_missing_model(tmp_path, model_flags, bot_onnx):
    status, reply = console("classify", "--image", "nope.jpg", *model_flags, cwd=tmp_path)
    assert status == 0 and not reply["ok"] and "no such file" in reply["text"]
    status, reply = console("classify", "--image", "nope.jpg", "--model", "missing.onnx", cwd=tmp_path)
    assert status == 2 and not reply["ok"] and "model not found" in reply["text"]


def test_fool_me_writes_a_png_the_onnx_model_calls_the_target(tmp_path, model_flags, bot_onnx):
    from export.runtime import Classifier

    photo = tmp_path / "rex.png"
    photo.write_bytes(photo_bytes("dog", seed=5))
    status, reply = console("fool-me", "--image", str(photo), "--target", "cat", "--fool-steps", "10",
                            "--out", "out", *model_flags, cwd=tmp_path)
    assert status == 0 and reply["ok"], reply
    (written,) = reply["files"]
    assert written == str(Path("out") / "rex-as-cat.png")
    assert Classifier.load(bot_onnx).predict(tmp_path / written, top_k=1)[0][0] == "cat"


def test_about(tmp_path, model_flags):
    status, reply = console("about", *model_flags, cwd=tmp_path)
    assert status == 0 and reply["ok"] and "cat, dog" in reply["text"]
