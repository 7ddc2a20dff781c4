"""Starting the bot: a missing, malformed or rejected token is refused in one readable line,
with a non-zero status and no traceback; the token itself never appears in any output."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from bot.__main__ import EXIT_CONFIG, EXIT_NETWORK, EXIT_REJECTED, get_args_parser, main

FAKE_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GabcDE.abcdefghijklmnopqrstuvwxyz0123456789AB"


def run_bot(*flags: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    if token is not None:
        env["DISCORD_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "bot", *flags], capture_output=True, text=True,
                          env=env, timeout=120)


def test_help_documents_the_environment_and_flags():
    proc = run_bot("--help")
    assert proc.returncode == 0
    for word in ("DISCORD_TOKEN", "--guild-id", "--model", "--checkpoint", "--max-bytes", "--max-pixels",
                 "--workers", "--max-heavy", "--cooldown", "PETLENS_MAX_HEAVY"):
        assert word in proc.stdout, word


@pytest.mark.parametrize("token, words", [
    (None, "DISCORD_TOKEN is not set"),
    ("", "DISCORD_TOKEN is not set"),
    ("Bot " + FAKE_TOKEN, "does not look like a bot token"),
    ("1234567890", "does not look like a bot token"),
])
def test_missing_or_malformed_token_is_refused_in_one_line(token, words):
    proc = run_bot(token=token)
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.strip().count("\n") == 0 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    if token:
        assert FAKE_TOKEN not in proc.stderr


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    """Discord's answer to a wrong token: 401 on GET /users/@me."""

    def do_GET(self):
        body = json.dumps({"message": "401: Unauthorized", "code": 0}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_against(base_url: str, monkeypatch, bot_onnx) -> int:
    """``main()`` with the real discord.py login, its API base pointed at ``base_url``."""
    import discord.http

    monkeypatch.setattr(discord.http.Route, "BASE", base_url)
    monkeypatch.setenv("DISCORD_TOKEN", FAKE_TOKEN)
    args = get_args_parser().parse_args(["--model", str(bot_onnx), "--checkpoint", "none",
                                         "--workers", "1", "--max-heavy", "1"])
    return main(args)


def test_a_token_discord_rejects_stops_the_bot_cleanly(monkeypatch, capsys, caplog, bot_onnx):
    """A local stand-in for Discord's API answers 401: discord.LoginFailure becomes one line
    and exit status 3 (a service manager should not restart)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status = start_against(f"http://127.0.0.1:{server.server_port}/api/v10", monkeypatch, bot_onnx)
    finally:
        server.shutdown()
    out = capsys.readouterr()
    assert status == EXIT_REJECTED
    assert "Discord rejected DISCORD_TOKEN" in out.err and out.err.strip().count("\n") == 0
    assert "Traceback" not in out.err
    assert FAKE_TOKEN not in out.err + out.out + caplog.text


def test_unreachable_discord_is_one_line_and_retryable(monkeypatch, capsys, caplog, bot_onnx):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status = start_against(f"http://127.0.0.1:{port}/api/v10", monkeypatch, bot_onnx)
    out = capsys.readouterr()
    assert status == EXIT_NETWORK
    assert "cannot talk to Discord" in out.err and out.err.strip().count("\n") == 0
    assert "Traceback" not in out.err and FAKE_TOKEN not in out.err + caplog.text


def test_unusable_model_is_refused_before_connecting(tmp_path):
    proc = run_bot("--model", str(tmp_path / "missing.onnx"), token=FAKE_TOKEN)
    assert proc.returncode == EXIT_CONFIG
    assert "model not found" in proc.stderr and "Traceback" not in proc.stderr
    assert FAKE_TOKEN not in proc.stderr
