"""``python -m demo``: its flags, and clear messages instead of tracebacks when a model file
is missing or an option is wrong."""

from __future__ import annotations

import pytest

from demo.__main__ import cli, get_args_parser
from tests.conftest import run_tool


def run(argv: list[str], capsys) -> tuple[int, str]:
    code, _, err = run_tool(cli, argv, capsys)
    return code, err


def test_help_names_every_flag():
    text = get_args_parser().format_help()
    for flag in ("--host", "--port", "--model", "--checkpoint", "--examples", "--share"):
        assert flag in text


def test_missing_model_file_is_a_clear_message(tmp_path, tiny_checkpoint, capsys):
    code, err = run(["--model", str(tmp_path / "nope.onnx"), "--checkpoint", str(tiny_checkpoint)], capsys)
    assert code == 2
    assert "nope.onnx" in err and "python -m export" in err and "Traceback" not in err


def test_missing_checkpoint_is_a_clear_message(tmp_path, tiny_onnx, capsys):
    code, err = run(["--model", str(tiny_onnx), "--checkpoint", str(tmp_path / "nope.pt")], capsys)
    assert code == 2 and "nope.pt" in err and "not found" in err


def test_a_file_that_is_not_a_model_is_a_clear_message(tmp_path, tiny_checkpoint, capsys):
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model")
    code, err = run(["--model", str(fake), "--checkpoint", str(tiny_checkpoint)], capsys)
    assert code == 2 and "fake.onnx" in err


@pytest.mark.parametrize("argv, word", [
    (["--examples", "no/such/folder"], "--examples"),
    (["--fool-steps", "0"], "--fool-steps"),
    (["--max-queue", "-1"], "--max-queue"),
])
def test_bad_options_are_refused_before_loading_anything(argv, word, capsys):
    code, err = run(argv, capsys)
    assert code == 2 and word in err


def test_unreachable_triton_url_is_a_clear_message(tiny_checkpoint, capsys):
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    code, err = run(["--model", "http://127.0.0.1:9/catsdogs", "--checkpoint", str(tiny_checkpoint)], capsys)
    assert code == 2 and "Triton" in err and "Traceback" not in err
