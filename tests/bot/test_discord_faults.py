"""Faults on Discord's side, each injected by the emulator: the gateway drops or asks for a
reconnect, the session is invalidated, REST answers 429 / 500 / 401, the CDN loses, stalls or
oversizes an attachment. The bot recovers, and every reply still arrives and obeys the rules."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.bot.bot_uploads import photo_bytes
from tests.discord_emulator import TOKEN, validate

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_violations(live):
    before = len(live.emu.violations)
    yield
    assert live.emu.violations[before:] == []
    live.ready_again()  # the next test starts from a connected bot


def attach(emu, label: str, seed: int = 1, name: str | None = None, **kw) -> dict:
    data = photo_bytes(label, seed)
    w, h = Image.open(io.BytesIO(data)).size
    return emu.add_attachment(name or f"{label}{seed}.png", data, "image/png", width=w, height=h, **kw)


def events(live) -> list[str]:
    return [what for _, _, what in live.emu.gateway_log]


def pools_idle(handlers) -> bool:
    return not (handlers.light.running or handlers.light.busy_users
                or handlers.heavy.running or handlers.heavy.busy_users)


def test_gateway_drop_during_fool_me_resumes_and_the_reply_arrives(live):
    emu = live.emu
    it = live.run(emu.invoke("fool-me", {"image": attach(emu, "dog", 5, "rex.png"), "target": "cat"}))
    live.run(emu.wait_for(lambda: it.acked_at is not None, 10, "the defer"))
    live.run(emu.drop(0))  # mid-computation: the attack runs, the socket is gone
    about = live.run(emu.invoke("about"))  # a user clicks while the bot is disconnected
    live.run(emu.answered(it, 60), 70)
    live.run(emu.answered(about, 30), 40)  # replayed on RESUME, then answered
    assert list(it.answer.files) == ["rex-as-cat.png"]
    assert about.acked_at - about.dispatched_at < validate.ACK_WINDOW_S
    assert events(live)[-2:] == ["drop", "resume"]


def test_op7_reconnect_resumes_the_session(live):
    emu = live.emu
    live.run(emu.reconnect(0))
    live.run(emu.wait_for(lambda: events(live)[-1] == "resume", 20, "a RESUME"))
    it = live.run(emu.invoke("about"))
    assert live.run(emu.answered(it, 20), 30).response_type == 4


def test_op9_invalid_session_identifies_again(live):
    emu = live.emu
    sessions = set(emu.sessions)
    live.run(emu.invalidate_session(0, resumable=False))
    # discord.py waits 5 s before a non-initial IDENTIFY (Discord's identify rate limit).
    live.run(emu.wait_for(lambda: set(emu.sessions) - sessions and emu.connected(0), 30, "a new session"))
    assert events(live)[-3:] == ["op 9 False", "closed 1000", "identify"]  # discord.py closes, then identifies
    it = live.run(emu.invoke("about"))
    assert live.run(emu.answered(it, 20), 30).response_type == 4


def test_429_on_the_follow_up_is_retried_after_retry_after(live):
    emu = live.emu
    fault = emu.fail("POST", r"^/api/v10/webhooks/", 429, retry_after=1.5)
    it = live.run(emu.invoke("classify", {"image": attach(emu, "cat", 3)}))
    live.run(emu.answered(it, 30), 40)
    assert len(fault.hits) == 1 and it.answer.embeds[0]["title"] == "A cat"
    assert it.answered_at - fault.hits[0] >= 1.5
    assert "rate limited" in live.log.text()


def test_500_on_the_follow_up_is_retried_and_the_bot_keeps_serving(live):
    emu = live.emu
    fault = emu.fail("POST", r"^/api/v10/webhooks/", 500)
    it = live.run(emu.invoke("classify", {"image": attach(emu, "dog", 3)}))
    live.run(emu.answered(it, 30), 40)
    assert len(fault.hits) == 1 and it.answer.embeds[0]["title"] == "A dog"
    statuses = [r.status for r in emu.requests if r.path.startswith("/api/v10/webhooks/") and r.at >= it.dispatched_at]
    assert statuses[:2] == [500, 200]
    later = live.run(emu.invoke("about"))
    assert live.run(emu.answered(later, 20), 30).response_type == 4


@pytest.mark.parametrize("fault, words", [
    ("404", "no longer on Discord"),
    ("stall", "took more than 2 s"),
    ("oversize", "larger than Discord announced"),
])
def test_attachment_faults_get_a_private_answer_and_free_the_pools(live, fault, words):
    emu = live.emu
    data = photo_bytes("cat", 3)
    announced = len(data) // 2 if fault == "oversize" else None
    att = emu.add_attachment("tom.png", data, "image/png", fault=fault, announced_size=announced)
    start = time.monotonic()
    it = live.run(emu.invoke("classify", {"image": att}))
    live.run(emu.answered(it, 30), 40)
    assert it.answer.ephemeral and words in it.answer.content, it.answer.content
    assert time.monotonic() - start < 15
    assert pools_idle(live.handlers)
    ok = live.run(emu.invoke("classify", {"image": attach(emu, "cat", 3)}))  # nothing is stuck
    assert live.run(emu.answered(ok, 30), 40).answer.embeds[0]["title"] == "A cat"


def test_rejected_token_exits_with_status_3(live, bot_onnx):
    env = {**os.environ, "DISCORD_TOKEN": TOKEN.replace("emulat", "wrong0"), "PETLENS_DISCORD_URL": live.emu.base_url}
    proc = subprocess.run([sys.executable, "-m", "bot", "--model", str(bot_onnx), "--checkpoint", "none"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "Discord rejected DISCORD_TOKEN" in proc.stderr and "Traceback" not in proc.stderr
    assert TOKEN.split(".")[0] not in proc.stderr  # the token is never echoed
    assert any(r.path == "/api/v10/users/@me" and r.status == 401 for r in live.emu.requests)


def test_heartbeats_are_acknowledged(live):
    """discord.py closes a connection whose heartbeat goes unacknowledged for an interval; with
    every beat ACKed the session stays up."""
    before, log = live.emu.heartbeats, len(live.emu.gateway_log)
    live.run(asyncio.sleep(2.5))  # heartbeat_interval is 1 s in these tests
    assert live.emu.heartbeats >= before + 2 and len(live.emu.gateway_log) == log


FOLLOW_UP = r"^/api/v10/webhooks/\d+/[^/]+$"  # POST: create a follow-up message


def test_cloudflare_429_on_the_follow_up_is_retried_and_the_png_arrives(live):
    """Cloudflare's 429 (HTML, no Via, no rate-limit headers, no Retry-After): discord.py raises at
    once; the bot waits 1 s and sends the finished picture again."""
    emu = live.emu
    fault = emu.fail("POST", FOLLOW_UP, 429, cloudflare=True)
    it = live.run(emu.invoke("fool-me", {"image": attach(emu, "dog", 5, "rex.png"), "target": "cat"}))
    live.run(emu.answered(it, 60), 70)
    assert len(fault.hits) == 1 and list(it.answer.files) == ["rex-as-cat.png"] and not it.answer.ephemeral
    assert it.answered_at - fault.hits[0] >= 1.0
    refused = [r for r in emu.requests if r.fault == "429 cloudflare"]
    assert len(refused) == 1 and refused[0].files == [("rex-as-cat.png", len(it.answer.files["rex-as-cat.png"]))]
    assert "without a Via header" in live.log.text() and "failed on my side" not in live.log.text()


def test_cloudflare_429_with_retry_after_waits_that_long(live):
    emu = live.emu
    fault = emu.fail("POST", FOLLOW_UP, 429, cloudflare=True, retry_after=2)
    it = live.run(emu.invoke("classify", {"image": attach(emu, "cat", 3)}))
    live.run(emu.answered(it, 30), 40)
    assert it.answer.embeds[0]["title"] == "A cat"
    assert it.answered_at - fault.hits[0] >= 2.0


def test_cloudflare_429_longer_than_the_token_lives_is_not_waited_for(live):
    """Retry-After beyond the interaction token's 15 minutes: the bot gives up at once and says
    so privately, instead of sleeping for an answer nobody could receive."""
    emu = live.emu
    fault = emu.fail("POST", FOLLOW_UP, 429, cloudflare=True, retry_after=3600)
    start = time.monotonic()
    it = live.run(emu.invoke("classify", {"image": attach(emu, "cat", 3)}))
    live.run(emu.wait_for(lambda: it.followups and it.original.deleted, 30, "the private answer"), 40)
    assert len(fault.hits) == 1 and time.monotonic() - start < 10
    (answer,) = it.messages
    assert answer.ephemeral and "failed on my side" in answer.content
    assert "giving up" in live.log.text()


@pytest.mark.parametrize("command, options", [("classify", {}), ("fool-me", {"target": "dog"})])
def test_an_expired_attachment_link_gets_a_private_answer_and_nothing_is_stuck(live, command, options):
    emu = live.emu
    data = photo_bytes("cat", 3)
    old = emu.add_attachment("tom.png", data, "image/png", width=160, height=128, expires_in=-60)
    it = live.run(emu.invoke(command, {"image": old, **options}))
    live.run(emu.wait_for(lambda: it.followups and it.original.deleted, 30, "the private answer"), 40)
    (answer,) = it.messages  # the public "thinking…" placeholder is gone
    assert answer.ephemeral and "its link expired" in answer.content and "Send the photo again" in answer.content
    (served,) = [f for path, f in emu.cdn.items() if path in old["url"]]
    assert served.refusals == [404] and served.requests == 0  # the CDN refused the stale signature
    assert pools_idle(live.handlers)
    fresh = live.run(emu.invoke(command, {"image": attach(emu, "cat", 3, "tom.png"), **options}))
    assert not live.run(emu.answered(fresh, 60), 70).answer.ephemeral  # sending it again works


def test_op1_heartbeat_request_is_answered_at_once(live):
    """Op 1 from Discord: discord.py sends a heartbeat immediately, not at its next interval
    (30 s here, so a beat within 2 s is the answer)."""
    emu = live.emu
    emu.heartbeat_ms = 30_000
    try:
        live.run(emu.reconnect(0))  # the new connection's HELLO carries the 30 s interval
        live.run(emu.wait_for(lambda: events(live)[-1] == "resume", 20, "a RESUME"))
        live.run(asyncio.sleep(0.5))  # the beat sent right after HELLO is behind us
        asked = live.run(emu.request_heartbeat(0))
        live.run(emu.wait_for(lambda: asked.answered_at is not None, 5, "the requested heartbeat"))
        assert asked.delay < 2.0
    finally:
        emu.heartbeat_ms = 1000
        live.run(emu.reconnect(0))
        live.run(emu.wait_for(lambda: events(live)[-1] == "resume", 20, "a RESUME"))


def test_op9_resumable_invalid_session_resumes(live):
    """Op 9 with d=true: the session may be resumed; discord.py reconnects and RESUMEs (no new
    IDENTIFY), and events sent meanwhile are replayed."""
    emu = live.emu
    sessions = set(emu.sessions)
    live.run(emu.invalidate_session(0, resumable=True))
    live.run(emu.wait_for(lambda: events(live)[-1] == "resume", 20, "a RESUME"))
    assert set(emu.sessions) == sessions and "identify" not in events(live)[-3:]
    it = live.run(emu.invoke("about"))
    assert live.run(emu.answered(it, 20), 30).response_type == 4
