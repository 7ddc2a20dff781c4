"""A storm on the demo: one client floods the heavy lane while another uses the demo.

``python -m benchmarks.demo_storm --json`` serves the demo (the shipped models, or ``--model`` /
``--checkpoint``) on a free local port, or measures one already running (``--url``, e.g. an older
version, for a before/after). Client A submits ``--storm`` robust fool-me jobs through the raw
HTTP API; meanwhile client B classifies ``--classify`` times and then submits one fool-me of its
own. The clients are told apart by ``X-Forwarded-For`` (the demo trusts it from loopback).
Prints one JSON line::

    {"storm": {"submitted", "admitted", "refused", "refusal"}, "classify_ms": {"p50", "p99", "max"},
     "classify_errors", "fool_me_wait_s", "fool_me_result", "rss_mb"}

``fool_me_wait_s`` is B's fool-me from submission to its answer (null if refused or timed out).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time

from benchmarks import add_record
from benchmarks import record as record_figures
from benchmarks.bot_load import generated_photo
from training.cli import make_parser, positive, run

A, B = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "198.51.100.9"}
OTHER = "the other one"  # the Fool me tab's default target: the most likely other label


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = make_parser("python -m benchmarks.demo_storm", "One client floods the demo's heavy lane; how does another fare?",
                    add_help=add_help)
    p.add_argument("--url", default=None, help="a running demo to measure (default: start one here)")
    p.add_argument("--model", default=None, help="ONNX model for a demo started here (default: the shipped one)")
    p.add_argument("--checkpoint", default=None, help="its torch checkpoint (default: the shipped one)")
    p.add_argument("--storm", type=positive(int), default=70, help="robust fool-me jobs client A submits (default 70)")
    p.add_argument("--classify", type=positive(int), default=40, help="classify calls client B makes (default 40)")
    p.add_argument("--timeout", type=positive(float), default=600.0, help="seconds to wait for B's fool-me (default 600)")
    p.add_argument("--target", default=OTHER,
                   help=f"the fool-me target both clients ask for (default {OTHER!r}; an older demo needs a label, e.g. dog)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    return add_record(p)


def _call(http, url: str, api: str, data: list, headers: dict):
    return http.post(f"{url}/gradio_api/call/{api}", json={"data": data}, headers=headers)


def _finish(http, url: str, api: str, event_id: str, headers: dict, timeout: float) -> str:
    """The final SSE event of a submitted call: "complete", "error" or "timeout"."""
    deadline = time.monotonic() + timeout
    with http.stream("GET", f"{url}/gradio_api/call/{api}/{event_id}", headers=headers, timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:") and line.split(":", 1)[1].strip() in ("complete", "error"):
                return line.split(":", 1)[1].strip()
            if time.monotonic() > deadline:
                break
    return "timeout"


def _upload(http, url: str, data: bytes, headers: dict) -> dict:
    r = http.post(f"{url}/gradio_api/upload", files={"files": ("photo.png", data, "image/png")}, headers=headers)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": "photo.png", "meta": {"_type": "gradio.FileData"}}


def storm(url: str, n_storm: int, n_classify: int, timeout: float, target: str = OTHER) -> dict:
    import httpx

    with httpx.Client(timeout=60) as http:
        photo_a = _upload(http, url, generated_photo(1, (1024, 768)), A)
        photo_b = _upload(http, url, generated_photo(2), B)
        submitted = [_call(http, url, "fool_me", [photo_a, target, 1, True], A) for _ in range(n_storm)]
        refused = [r for r in submitted if r.status_code != 200]
        times, errors = [], 0
        for _ in range(n_classify):
            start = time.perf_counter()
            r = _call(http, url, "classify", [photo_b], B)
            ok = r.status_code == 200 and _finish(http, url, "classify", r.json()["event_id"], B, 120) == "complete"
            errors += not ok
            times.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        r = _call(http, url, "fool_me", [photo_b, target, 4, False], B)
        result = _finish(http, url, "fool_me", r.json()["event_id"], B, timeout) if r.status_code == 200 else f"HTTP {r.status_code}"
        wait = time.perf_counter() - start if result == "complete" else None
    times.sort()
    return {
        "storm": {"submitted": n_storm, "admitted": n_storm - len(refused), "refused": len(refused),
                  "refusal": refused[0].text[:200] if refused else None},
        "classify_ms": {"p50": round(statistics.median(times), 1), "p99": round(times[min(len(times) - 1, int(0.99 * len(times)))], 1),
                        "max": round(times[-1], 1)},
        "classify_errors": errors,
        "fool_me_wait_s": None if wait is None else round(wait, 1),
        "fool_me_result": result,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(args: argparse.Namespace) -> int:
    app = None
    url = args.url
    if url is None:
        from demo.app import launch, load_demo

        app = load_demo(args.model, args.checkpoint)
        _, url, _ = launch(app, host="127.0.0.1", port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        record = storm(url.rstrip("/"), args.storm, args.classify, args.timeout, args.target)
    finally:
        if app is not None:
            app.close()
    import resource

    record["rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1) if app is not None else None
    record_figures("demo_storm", record, args)
    print(json.dumps(record) if args.json else json.dumps(record, indent=2), flush=True)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
