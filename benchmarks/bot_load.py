"""Load benchmark: N mixed interactions through the local Discord emulator's gateway.

``python -m benchmarks.bot_load --emulator --interactions 200 --json`` logs the real
:class:`bot.client.PetBot` in to the emulator (``tests/discord_emulator``; a background thread
with its own event loop), then users click at ``--rate`` per second: /classify, /fool-me,
/explain, /ideal, /about and the "Classify photo" context menu, each from its own user. The
bot's event loop is watched by a heartbeat task. Prints one JSON line::

    {"sent", "acknowledged", "replied", "ack_ms": {"p50", "p99", "max"}, "reply_ms": {...},
     "busy_replies", "max_loop_stall_ms", "rss_mb_start", "rss_mb_end", "rss_mb_by_quarter"}

"acknowledged" counts first responses within Discord's 3 s; "replied" counts interactions
that got an answer (a polite "busy, try again" counts). Any breach of Discord's rules that the
emulator saw is reported on stderr and makes the exit status 1.

Examples::

    python -m benchmarks.bot_load --emulator --interactions 200 --json     # shipped models
    python -m benchmarks.bot_load --emulator --interactions 1000 --rate 20 --json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks import add_record, record
from bot import config
from bot.handlers import Handlers

# The mix of a busy server: mostly /classify, a few heavy commands (capped by --max-heavy).
MIX = (("classify", 0.65), ("Classify photo", 0.10), ("about", 0.05), ("fool-me", 0.08),
       ("explain", 0.06), ("ideal", 0.06))
BUSY_WORDS = ("busy", "again in")


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


def rss_mb() -> float:
    """Resident memory now (Linux /proc), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ms = np.asarray(values) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p99": round(float(np.percentile(ms, 99)), 1),
            "max": round(float(ms.max()), 1)}


def plan(n: int, seed: int = 0) -> list[str]:
    """``n`` command names drawn from :data:`MIX`, reproducibly."""
    rng = random.Random(seed)
    names, weights = zip(*MIX)
    return rng.choices(names, weights, k=n)


async def _click(emu, name: str, photo: tuple[str, bytes], user: int):
    """One user's interaction, in the emulator's loop."""
    fname, data = photo
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
    if name == "about":
        return await emu.invoke("about", user_id=user)
    if name == "ideal":
        return await emu.invoke("ideal", {"label": ("cat", "dog")[user % 2]}, user_id=user)
    att = emu.add_attachment(fname, data, "image/png", width=w, height=h)
    if name == "Classify photo":
        return await emu.invoke_message_menu(name, emu.posted([att]), user_id=user)
    return await emu.invoke(name, {"image": att}, user_id=user)


async def run_emulated(handlers: Handlers, photos: list[tuple[str, bytes]], n: int, *, rate: float = 20.0,
                       reply_timeout_s: float = 180.0, heartbeat_s: float = 0.01) -> tuple[dict, list[str]]:
    """Log the bot in to an emulator, send ``n`` interactions at ``rate`` per second, wait for
    the answers; returns ``(report, violations)``."""
    from bot.client import PetBot
    from tests.discord_emulator.harness import Harness

    # The emulator runs in its own thread and loop; the bot runs in this loop, which the
    # heartbeat below watches.
    harness = Harness(handlers, keep_files=False)
    harness.thread.start()
    emu = harness.emu
    harness.run(emu.start())
    saved = harness._saved
    try:
        from bot.client import use_local_discord

        use_local_discord(emu.base_url)
        bot = PetBot(handlers, replace(handlers.settings, discord_url=emu.base_url))
        task = asyncio.ensure_future(bot.start(emu.token))
        while not bot.is_ready():
            if task.done():
                task.result()
            await asyncio.sleep(0.05)

        stalls: list[float] = []
        stop = asyncio.Event()

        async def heartbeat() -> None:
            # Each wake-up should come heartbeat_s after the last; anything later is time the
            # loop could not run callbacks (a stall).
            while not stop.is_set():
                t0 = time.perf_counter()
                await asyncio.sleep(heartbeat_s)
                stalls.append(time.perf_counter() - t0 - heartbeat_s)

        beat = asyncio.create_task(heartbeat())
        rss_start = rss_mb()
        rss_quarters: list[float] = []  # after each quarter of the sends: growth that goes on is a leak
        sent = []
        start = time.perf_counter()
        for i, name in enumerate(plan(n)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            future = asyncio.run_coroutine_threadsafe(_click(emu, name, photos[i % len(photos)], 10_000 + i),
                                                      harness.loop)
            sent.append(await asyncio.wrap_future(future))
            if (i + 1) % max(1, n // 4) == 0 and len(rss_quarters) < 4:
                rss_quarters.append(round(rss_mb(), 1))
        deadline = time.monotonic() + reply_timeout_s
        while time.monotonic() < deadline and any(it.answered_at is None for it in sent):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # let the last placeholders be cleaned up
        stop.set()
        await beat
        rss_end = rss_mb()

        acks = [it.acked_at - it.dispatched_at for it in sent if it.acked_at is not None]
        replies = [it.answered_at - it.dispatched_at for it in sent if it.answered_at is not None]
        busy = sum(1 for it in sent if it.answered_at is not None and it.answer.ephemeral
                   and any(w in (it.answer.content or "") for w in BUSY_WORDS))
        report = {
            "sent": len(sent),
            "acknowledged": sum(1 for a in acks if a <= 3.0),
            "replied": len(replies),
            "ack_ms": _stats(acks),
            "reply_ms": _stats(replies),
            "busy_replies": busy,
            "max_loop_stall_ms": round(1000 * max(stalls, default=0.0), 1),
            "rss_mb_start": round(rss_start, 1),
            "rss_mb_end": round(rss_end, 1),
            "rss_mb_by_quarter": rss_quarters,
        }
        await bot.close()
        await asyncio.gather(task, return_exceptions=True)
        return report, list(emu.violations)
    finally:
        harness.run(emu.stop())
        harness.loop.call_soon_threadsafe(harness.loop.stop)
        harness.thread.join(10)
        import discord
        from discord.gateway import DiscordWebSocket

        discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bot_load", add_help=add_help,
                                     description="N mixed interactions through the local Discord emulator's "
                                                 "gateway against the real bot; prints acknowledgement and reply "
                                                 "latencies, busy replies, event-loop stall and memory.")
    config.add_model_arguments(parser)
    config.add_service_arguments(parser)
    parser.add_argument("--emulator", action="store_true", default=True,
                        help="drive the bot through the local Discord emulator (tests/discord_emulator); "
                             "the only mode, the default")
    parser.add_argument("--interactions", type=int, default=200, help="interactions to send (default %(default)s)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="interactions per second (default %(default)s: 200 in about 10 s)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of photos to send (default: generated 640×480 PNGs)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    return add_record(parser)


def main(args: argparse.Namespace) -> int:
    if args.interactions < 1 or args.rate <= 0:
        print("error: --interactions must be at least 1 and --rate positive", file=sys.stderr)
        return 2
    settings = config.from_args(args, token="")
    photos = load_photos(args.images, min(args.interactions, 50))
    handlers = Handlers(settings)
    try:
        report, violations = asyncio.run(run_emulated(handlers, photos, args.interactions, rate=args.rate))
    finally:
        handlers.close()
    record("bot_load", {**report, "violations": len(violations)}, args)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>18}: {value}")
    for v in violations:
        print(f"violation: {v}", file=sys.stderr)
    return 1 if violations else 0


def cli() -> None:
    sys.exit(main(get_args_parser().parse_args()))


if __name__ == "__main__":
    cli()
