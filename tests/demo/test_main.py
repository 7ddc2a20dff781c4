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


@pytest.fixture
def busy_port(monkeypatch):
    """A port something really listens on (127.0.0.1), and no GRADIO_SERVER_* from the caller."""
    import socket

    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("named_by", ["--port", "GRADIO_SERVER_PORT"])
def test_a_busy_port_that_was_asked_for_is_one_error_line(busy_port, named_by, tmp_path, monkeypatch, capsys):
    """Refused before the models load (so these files need not even exist)."""
    argv = ["--model", str(tmp_path / "m.onnx"), "--checkpoint", str(tmp_path / "m.pt")]
    if named_by == "--port":
        argv += ["--port", str(busy_port)]
    else:
        monkeypatch.setenv("GRADIO_SERVER_PORT", str(busy_port))
    code, err = run(argv, capsys)
    assert code == 2 and err == (f"error: port {busy_port} is busy on 127.0.0.1 (asked for by {named_by}); "
                                 "stop what is using it, or choose another port with --port\n")


def test_a_busy_default_port_is_announced_with_the_port_served(busy_port, tiny_onnx, tiny_checkpoint, monkeypatch,
                                                               capsys):
    """Gradio quietly takes the next free port after a busy 7860; the demo now says which."""
    import httpx

    import demo.__main__ as main_module
    from demo.app import launch

    served = []

    def launch_without_blocking(app, **kwargs):  # the real launch; the test goes on while it serves
        served.append(app)
        return launch(app, prevent_thread_lock=True, quiet=True, **kwargs)

    monkeypatch.setattr(main_module, "DEFAULT_PORT", busy_port)  # 7860 itself may be free or not here
    monkeypatch.setattr(main_module, "launch", launch_without_blocking)
    try:
        code, err = run(["--model", str(tiny_onnx), "--checkpoint", str(tiny_checkpoint)], capsys)
        (app,) = served
        assert code == 0 and app.server_port != busy_port
        assert err.splitlines() == [f"port {busy_port} is busy; serving on http://127.0.0.1:{app.server_port} instead"]
        assert httpx.get(f"http://127.0.0.1:{app.server_port}/", timeout=30).status_code == 200
    finally:
        for app in served:
            app.close()
