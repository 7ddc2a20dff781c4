"""Load benchmark: a burst of concurrent slash commands against the real handlers.

``python -m benchmarks.bot_load`` fires N ``/classify`` and M ``/fool-me`` interactions at once
through the real command callbacks of :class:`bot.client.PetBot` (fake Discord objects from
:mod:`tests.bot.fakes`, real models and pools) while a heartbeat task measures how late the event
loop wakes up. Prints the figures: max event-loop stall, p50/p95 latency per command, busy
replies, peak concurrent heavy jobs.

Examples::

    python -m benchmarks.bot_load                                   # shipped models, generated photos
    python -m benchmarks.bot_load --images ../data/val/cat --pool process --json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import mimetypes
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bot import config
from bot.handlers import Handlers
from tests.bot.fakes import FakeAttachment, FakeInteraction, offline_bot


@dataclass
class LoadReport:
    classify: int
    fool: int
    answered: int
    classify_ok: int
    fool_ok: int
    busy_replies: int
    errors: int
    heavy_cap: int
    heavy_peak: int
    max_stall_ms: float
    p99_stall_ms: float
    max_ack_ms: float
    classify_p50_s: float
    classify_p95_s: float
    fool_p50_s: float
    fool_p95_s: float
    wall_s: float
    pool: str


def generated_photo(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A PNG of a warm disc or cool square on noise (no data set needed)."""
    rng = random.Random(seed)
    w, h = size
    img = Image.fromarray(np.random.default_rng(seed).integers(90, 166, (h, w, 3), dtype=np.uint8), "RGB")
    r = rng.randint(h // 5, h // 3)
    cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if seed % 2:
        ImageDraw.Draw(img).ellipse(box, fill=(230, 110, 30))
    else:
        ImageDraw.Draw(img).rectangle(box, fill=(30, 120, 230))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def load_photos(folder: Path | None, n: int) -> list[tuple[str, bytes]]:
    if folder is None:
        return [(f"photo{i}.png", generated_photo(i)) for i in range(n)]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not files:
        raise SystemExit(f"error: no photos in {folder}")
    return [(f.name, f.read_bytes()) for f in files[:n]]


def attachment(name: str, data: bytes) -> FakeAttachment:
    return FakeAttachment.from_bytes(data, name, mimetypes.guess_type(name)[0])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


async def run_load(handlers: Handlers, photos: list[tuple[str, bytes]], *, classify: int = 100,
                   fool: int = 10, heartbeat_s: float = 0.01) -> LoadReport:
    """Fire ``classify`` + ``fool`` interactions at once, each from its own user."""
    bot = offline_bot(handlers)  # never logs in: only its command tree is used
    classify_cb = bot.tree.get_command("classify").callback
    fool_cb = bot.tree.get_command("fool-me").callback
    await handlers.warm_up()

    stalls: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        # Each wake-up should come heartbeat_s after the last; anything later is time the
        # loop spent unable to run callbacks (a stall).
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(heartbeat_s)
            stalls.append(time.perf_counter() - t0 - heartbeat_s)

    jobs = []
    for i in range(classify):
        name, data = photos[i % len(photos)]
        it = FakeInteraction(command="classify")
        jobs.append(("classify", it, classify_cb(it, attachment(name, data))))
    for i in range(fool):
        name, data = photos[i % len(photos)]
        it = FakeInteraction(command="fool-me")
        jobs.append(("fool-me", it, fool_cb(it, attachment(name, data))))

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(heartbeat_s * 3)
    start = time.perf_counter()
    for _, it, _ in jobs:  # the burst: every interaction "arrives" now
        it.created_at = start
    results = await asyncio.gather(*(coro for _, _, coro in jobs), return_exceptions=True)
    wall = time.perf_counter() - start
    stop.set()
    await beat

    latency: dict[str, list[float]] = {"classify": [], "fool-me": []}
    ok = {"classify": 0, "fool-me": 0}
    busy = errors = answered = 0
    acks = []
    for (kind, it, _), result in zip(jobs, results, strict=True):
        if isinstance(result, Exception) or not it.sent:
            errors += 1
            continue
        answered += 1
        acks.append(it.acknowledged_at - it.created_at)
        reply = it.answer
        if reply.embed is not None:
            ok[kind] += 1
            latency[kind].append(reply.at - it.created_at)
        elif "busy" in (reply.content or "") or "again in" in (reply.content or ""):
            busy += 1
        else:
            errors += 1
    return LoadReport(
        classify=classify, fool=fool, answered=answered, classify_ok=ok["classify"], fool_ok=ok["fool-me"],
        busy_replies=busy, errors=errors, heavy_cap=handlers.settings.max_heavy, heavy_peak=handlers.heavy.peak,
        max_stall_ms=1000 * max(stalls, default=0.0), p99_stall_ms=1000 * _pct(stalls, 99),
        max_ack_ms=1000 * max(acks, default=0.0),
        classify_p50_s=_pct(latency["classify"], 50), classify_p95_s=_pct(latency["classify"], 95),
        fool_p50_s=_pct(latency["fool-me"], 50), fool_p95_s=_pct(latency["fool-me"], 95),
        wall_s=wall, pool=handlers.settings.pool,
    )


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bot_load", add_help=add_help,
                                     description="Concurrent /classify and /fool-me against the real handlers; "
                                                 "prints event-loop stall, latencies and busy replies.")
    config.add_model_arguments(parser)
    config.add_service_arguments(parser)
    parser.add_argument("--classify", type=int, default=100,
                        help="concurrent /classify interactions (default %(default)s)")
    parser.add_argument("--fool", type=int, default=10, help="concurrent /fool-me interactions (default %(default)s)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of photos to send (default: generated 640×480 PNGs)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    return parser


def main(args: argparse.Namespace) -> LoadReport:
    settings = config.from_args(args, token="")
    photos = load_photos(args.images, max(args.classify, args.fool, 1))
    handlers = Handlers(settings)
    try:
        report = asyncio.run(run_load(handlers, photos, classify=args.classify, fool=args.fool))
    finally:
        handlers.close()
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        for key, value in asdict(report).items():
            print(f"{key:>16}: {value:.3f}" if isinstance(value, float) else f"{key:>16}: {value}")
    return report


def cli() -> None:
    main(get_args_parser().parse_args())
    sys.exit(0)


if __name__ == "__main__":
    cli()
