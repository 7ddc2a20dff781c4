"""Admission control: a bot-wide cap on concurrent jobs plus a per-user cooldown.

Refusals are immediate (no queue): a busy server gets a polite "try again in N s" at once
instead of a "thinking…" that never ends. The wait is estimated from how long jobs of this
kind have actually taken (an exponential moving average).

All methods are called from the event loop thread only, so no lock is needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager


class Refused(Exception):
    """Not now; ``str(err)`` is the polite reply, ``retry_after`` the seconds to wait."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class Limiter:
    """``capacity`` jobs at once; a user waits ``cooldown_s`` after their last job ended.

    >>> limiter = Limiter(capacity=2, cooldown_s=10, name="fool-me")
    >>> with limiter.slot(user_id):   # raises Refused when full or cooling down
    ...     ...                       # do the work (may await)
    """

    def __init__(self, capacity: int, cooldown_s: float, *, name: str = "this command",
                 typical_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.capacity = capacity
        self.cooldown_s = cooldown_s
        self.name = name
        self.clock = clock
        self.typical_s = typical_s  # running estimate of one job's duration
        self.running: dict[int, float] = {}  # job id -> start time
        self.busy_users: set[Hashable] = set()
        self.last_end: dict[Hashable, float] = {}
        self.peak = 0  # most jobs ever running at once (the load test reads it)
        self.admitted = 0
        self.refused = 0
        self._next_id = 0

    def check(self, user: Hashable) -> None:
        """Raise :class:`Refused` if ``user`` may not start a job now."""
        now = self.clock()
        if user in self.busy_users:
            self.refused += 1
            raise Refused(f"your previous {self.name} request is still running; you will get its answer first.",
                          self.typical_s)
        wait = self.last_end.get(user, -math.inf) + self.cooldown_s - now
        if wait > 0:
            self.refused += 1
            raise Refused(f"easy there! You can use {self.name} again in {math.ceil(wait)} s.", wait)
        if len(self.running) >= self.capacity:
            # The earliest a slot should free up, judging by how long jobs usually take.
            wait = max(1.0, min(self.running.values()) + self.typical_s - now)
            self.refused += 1
            raise Refused(f"I'm busy with {len(self.running)} other {self.name} requests right now; "
                          f"try again in {math.ceil(wait)} s.", wait)

    @contextmanager
    def waiting(self, user: Hashable) -> Iterator[None]:
        """Count ``user`` as busy (a second request of theirs is refused) while their job gets
        ready (the download), without holding one of the ``capacity`` slots."""
        self.busy_users.add(user)
        try:
            yield
        finally:
            self.busy_users.discard(user)

    @contextmanager
    def slot(self, user: Hashable) -> Iterator[None]:
        """Hold one of the ``capacity`` slots for the duration of the ``with`` block."""
        self.check(user)
        job, self._next_id = self._next_id, self._next_id + 1
        start = self.clock()
        self.running[job] = start
        self.busy_users.add(user)
        self.admitted += 1
        self.peak = max(self.peak, len(self.running))
        try:
            yield
        finally:
            end = self.clock()
            del self.running[job]
            self.busy_users.discard(user)
            self.last_end[user] = end
            self.typical_s = 0.8 * self.typical_s + 0.2 * (end - start)
            if len(self.last_end) > 10_000:  # forget users whose cooldown is long over
                horizon = end - self.cooldown_s
                self.last_end = {u: t for u, t in self.last_end.items() if t > horizon}
