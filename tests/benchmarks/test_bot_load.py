"""A burst of 100 /classify and 10 /fool-me interactions against the real handlers: every
one answered, heavy jobs capped by the limiter, and the event loop never stalls."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.bot_load import run_load
from tests.bot.bot_uploads import photo_bytes

MAX_STALL_MS = 250


@pytest.mark.slow
def test_burst_is_answered_capped_and_never_stalls_the_loop(make_handlers):
    handlers = make_handlers(max_heavy=2, workers=2, fool_steps=3)
    photos = [(f"{label}{i}.png", photo_bytes(label, seed=100 + i)) for i in range(5) for label in ("cat", "dog")]
    report = asyncio.run(run_load(handlers, photos, classify=100, fool=10))
    print(report)  # the figures, for the record (-s)
    assert report.answered == 110 and report.errors == 0
    assert report.classify_ok == 100  # under --max-queued: every /classify is served
    # All ten arrive at once: exactly `cap` run, the rest are told politely to come back.
    assert report.heavy_peak == 2 and report.fool_ok == 2 and report.busy_replies == 8
    assert report.max_stall_ms < MAX_STALL_MS
    assert report.max_ack_ms < 3000  # Discord drops interactions not acknowledged within 3 s
