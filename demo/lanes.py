"""Two lanes, so that one visitor's heavy jobs never lock others out.

Gradio dispatches each concurrency group on its own, but its queue's ``max_size`` counts every
waiting event of every group: 70 fool-me jobs from one client once filled the 64 places and a
second visitor's Classify got "Queue is full". So the app's queue is left large (it only bounds
memory), light work (classify, assess, the page's photo handlers) runs in its own group, and the
heavy group (fool-me, ideal, explain) is admitted here, when a job is submitted, by a Gradio
*validator*: each client may have ``per_client`` heavy jobs waiting or running, and at most
``max_waiting`` wait in all. A refusal is immediate (HTTP 422 with the message, or the message
on the page), like the bot's per-user limiter.

A client is its IP address: the peer's, or the first ``X-Forwarded-For`` entry when the peer is
a proxy on this machine or a private network (a Hugging Face Space, a reverse proxy).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import gradio as gr

from service.answers import heavy_lane_full, too_many_jobs

HEAVY = "torch"  # the heavy jobs' concurrency group
PER_CLIENT = 2
MAX_WAITING = 32


def client_of(request: Any) -> str:
    """The client's address for a FastAPI/Starlette request (see the module docstring)."""
    peer = getattr(getattr(request, "client", None), "host", None) or "?"
    try:
        behind_proxy = ipaddress.ip_address(peer).is_private or ipaddress.ip_address(peer).is_loopback
    except ValueError:
        behind_proxy = False
    forwarded = (getattr(request, "headers", None) or {}).get("x-forwarded-for", "")
    if behind_proxy and forwarded.strip():
        return forwarded.split(",")[0].strip()
    return peer


class HeavyLane:
    """Admission to the heavy group of one Blocks app (set :attr:`app` once it is built)."""

    def __init__(self, per_client: int = PER_CLIENT, max_waiting: int = MAX_WAITING):
        self.per_client, self.max_waiting = per_client, max_waiting
        self.app: gr.Blocks | None = None
        self.refused = 0

    def _events(self) -> tuple[list, list]:
        """(waiting, running) events of the heavy group."""
        queue = getattr(self.app, "_queue", None)
        if queue is None:
            return [], []
        group = queue.event_queue_per_concurrency_id.get(HEAVY)
        waiting = list(group.queue) if group is not None else []
        running = [e for job in queue.active_jobs if job for e in job if e.concurrency_id == HEAVY]
        return waiting, running

    def refusal(self, request: gr.Request | None) -> str | None:
        """Why a new heavy job from this client is not admitted now, or None."""
        waiting, running = self._events()
        if len(waiting) >= self.max_waiting:
            return heavy_lane_full(len(waiting))
        if request is None:
            return None
        me = client_of(request.request if hasattr(request, "request") else request)
        mine = sum(client_of(e.request) == me for e in waiting + running)
        return too_many_jobs(self.per_client) if mine >= self.per_client else None

    def check(self, request: gr.Request | None, inputs: int) -> tuple[dict, ...]:
        """The validator's answer, one ``gr.validate`` per input: all valid to admit, the first
        one invalid with the reason to refuse (the page shows it on that input)."""
        why = self.refusal(request)
        if why is not None:
            self.refused += 1
        first = gr.validate(why is None, why or "")
        return (first, *(gr.validate(True, "") for _ in range(inputs - 1)))

    # Gradio hands a validator the event's inputs, so one per event signature.
    def for_fool(self, image, target, strength, robust, request: gr.Request):
        return self.check(request, 4)

    def for_ideal(self, label, seed, request: gr.Request):
        return self.check(request, 2)

    def for_explain(self, image, label, request: gr.Request):
        return self.check(request, 2)
