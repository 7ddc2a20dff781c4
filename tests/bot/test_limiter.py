"""The limiter: a bot-wide cap, a per-user cooldown, and honest 'try again in N s' figures."""

from __future__ import annotations

import pytest

from bot.limiter import Limiter, Refused


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cap_refuses_the_job_beyond_capacity_and_frees_the_slot_after():
    clock = Clock()
    lim = Limiter(capacity=2, cooldown_s=0, clock=clock, typical_s=8)
    with lim.slot("a"), lim.slot("b"):
        with pytest.raises(Refused) as info:
            with lim.slot("c"):
                pass
        assert "busy" in str(info.value) and info.value.retry_after == pytest.approx(8)
        clock.now += 3  # the oldest job has run 3 s of its typical 8 s
        with pytest.raises(Refused) as info:
            lim.check("c")
        assert info.value.retry_after == pytest.approx(5)
    with lim.slot("c"):
        pass
    assert lim.peak == 2 and lim.admitted == 3 and lim.refused == 2


def test_cooldown_counts_from_the_end_of_the_users_last_job():
    clock = Clock()
    lim = Limiter(capacity=5, cooldown_s=20, clock=clock)
    with lim.slot(1):
        with pytest.raises(Refused, match="still running"):
            lim.check(1)
        clock.now += 30  # a long job: the cooldown starts when it ends
    clock.now += 5
    with pytest.raises(Refused, match="again in 15 s"):
        lim.check(1)
    lim.check(2)  # other users are not affected
    clock.now += 15
    lim.check(1)


def test_slot_is_released_when_the_job_raises_and_timing_is_learned():
    clock = Clock()
    lim = Limiter(capacity=1, cooldown_s=0, clock=clock, typical_s=10)
    with pytest.raises(RuntimeError):
        with lim.slot("a"):
            clock.now += 2
            raise RuntimeError("the job failed")
    assert not lim.running and not lim.busy_users
    assert lim.typical_s == pytest.approx(0.8 * 10 + 0.2 * 2)
    with lim.slot("a"):
        pass
