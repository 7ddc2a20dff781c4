"""The load benchmark through the Discord emulator: every interaction acknowledged within 3 s and
answered (a polite "busy" counts), no rule broken, the event loop never stalls for long."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.bot_load import run_emulated
from tests.bot.bot_uploads import photo_bytes

# A blocking call on the event loop (a model run, a decode) stalls it for seconds; a busy shared
# machine alone was seen to delay a wake-up by ~1 s, so the bound sits above that.
MAX_STALL_MS = 2000

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


@pytest.fixture
def handlers(tiny_onnx, tiny_checkpoint):
    from bot.config import Settings
    from bot.handlers import Handlers

    h = Handlers(Settings(model=tiny_onnx, checkpoint=tiny_checkpoint, max_heavy=2, workers=2, cooldown_s=0.0,
                          classify_cooldown_s=0.0, fool_steps=3, ideal_steps=5))
    yield h
    h.close()


def test_mixed_interactions_are_acknowledged_and_answered(handlers):
    photos = [(f"{label}{i}.png", photo_bytes(label, seed=100 + i)) for i in range(5) for label in ("cat", "dog")]
    report, violations = asyncio.run(run_emulated(handlers, photos, 40, rate=40.0, reply_timeout_s=60))
    print(report)  # the figures, for the record (-s)
    assert violations == []
    assert report["sent"] == report["acknowledged"] == report["replied"] == 40
    assert report["ack_ms"]["max"] < 3000  # Discord drops interactions not acknowledged within 3 s
    assert handlers.heavy.peak <= 2  # the cap holds; the rest were told politely to come back
    assert report["max_loop_stall_ms"] < MAX_STALL_MS
    assert set(report) == {"sent", "acknowledged", "replied", "ack_ms", "reply_ms", "busy_replies",
                           "max_loop_stall_ms", "rss_mb_start", "rss_mb_end", "rss_mb_by_quarter"}
    assert len(report["rss_mb_by_quarter"]) == 4
