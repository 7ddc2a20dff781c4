"""The gateway connection's life: a zombie connection (heartbeats no longer acknowledged) is
closed and resumed; a session Discord ends for good (token reset: 4004, sharding required: 4011)
stops ``python -m bot`` with one line on stderr and exit status 3, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.__main__ import EXIT_REJECTED
from tests.discord_emulator import TOKEN

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def zombie_prone(emulated_handlers):
    """A bot that declares a connection dead after 2 s without a message from the gateway
    (discord.py's ``heartbeat_timeout``; 60 s by default), heartbeating every 0.5 s."""
    from tests.discord_emulator.harness import Harness

    with Harness(emulated_handlers, heartbeat_ms=500, heartbeat_timeout=2.0) as h:
        yield h


def test_a_zombie_connection_is_closed_and_resumed(zombie_prone):
    h, emu = zombie_prone, zombie_prone.emu
    session = next(iter(emu.sessions))
    beats = emu.heartbeats
    emu.withhold_acks(0)
    h.run(emu.wait_for(lambda: [w for _, _, w in emu.gateway_log][-1] == "resume", 15, "a RESUME"), 20)
    assert [w for _, _, w in emu.gateway_log][-3:] == ["acks withheld", "closed 4000", "resume"]
    assert list(emu.sessions) == [session]  # the same session, resumed: no new IDENTIFY
    assert emu.heartbeats > beats  # the unanswered beats that gave it away
    h.ready_again()
    it = h.run(emu.invoke("about"))
    assert h.run(emu.answered(it, 20), 30).response_type == 4
    assert emu.violations == []


def start_bot(emu, bot_onnx) -> subprocess.Popen:
    """``python -m bot`` against the emulator, logging errors only (stderr is what is checked)."""
    env = {**os.environ, "DISCORD_TOKEN": emu.token, "PETLENS_DISCORD_URL": emu.base_url}
    return subprocess.Popen([sys.executable, "-m", "bot", "--model", str(bot_onnx), "--checkpoint", "none",
                             "--workers", "1", "--max-heavy", "1", "--log-level", "ERROR"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("end, code, words", [
    (lambda emu: emu.reset_token(), 4004, "Discord rejected DISCORD_TOKEN"),
    (lambda emu: emu.require_sharding(3), 4011, "requires more gateway shards"),
], ids=["4004-token-reset", "4011-sharding-required"])
def test_a_session_discord_ends_for_good_exits_with_status_3(bot_onnx, end, code, words):
    from tests.discord_emulator.harness import EmulatorThread

    with EmulatorThread(heartbeat_ms=1000) as et:
        emu = et.emu
        proc = start_bot(emu, bot_onnx)
        try:
            et.run(emu.wait_for(lambda: emu.connected(0) or proc.poll() is not None, 90, "the bot to connect"), 100)
            assert proc.poll() is None, proc.stderr.read()
            about = et.run(emu.invoke("about"))  # it is up and serving
            assert et.run(emu.answered(about, 20), 30).response_type == 4
            et.run(end(emu))
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == EXIT_REJECTED, err
        assert err.strip().count("\n") == 0 and err.startswith("error: ") and words in err, err
        assert "Traceback" not in err and TOKEN.split(".")[0] not in err + out
        log = [w for _, _, w in emu.gateway_log]
        after = log[log.index(f"close {code}"):]
        assert not {"identify", "resume", "resume refused"} & set(after), log  # no attempt to reconnect
        assert emu.violations == []
