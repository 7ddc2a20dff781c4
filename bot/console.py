"""The bot without Discord: ``python -m bot.console COMMAND ...`` (or ``petlens-bot-console``).

Runs the very handlers that the slash commands call and prints ONE JSON line::

    {"ok": true, "text": "...", "files": ["out/cat-as-dog.png"]}

It is the operator's smoke test ("does the bot work with this model?") and the test suite's
entry point. A bad file from a user is an answer (``"ok": false``, exit status 0), never a
traceback; only an unusable setup (missing model, bad flag) exits non-zero.

Examples::

    python -m bot.console classify --image photo.jpg
    python -m bot.console fool-me --image photo.jpg --target cat --out results/
    python -m bot.console ideal --label dog --out results/
    python -m bot.console explain --image photo.jpg
    python -m bot.console fool-me --message-json message.json   # as the "Fool me" context menu
    python -m bot.console about

``--message-json`` takes a Discord message object (``GET /channels/{c}/messages/{m}``) and
acts on its first image attachment, downloaded from Discord's CDN, as the message context
menus ("Classify photo", "Fool me", "Explain") do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from training.cli import make_parser, run

from . import config
from .config import STRENGTHS

EXIT_CONFIG = 2


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    config.add_model_arguments(common)
    common.add_argument("--out", type=Path, default=Path("."),
                        help="folder for the images a command sends back (default: the current folder)")

    parser = make_parser(
        "petlens-bot-console", "Run the bot's command handlers without Discord (also: python -m bot.console); "
        'prints one JSON line {"ok": bool, "text": str, "files": [paths written]}.', add_help=add_help,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("classify", parents=[common], help="top-3 labels for a photo")
    _photo_arguments(p, "the photo to classify")
    p = sub.add_parser("fool-me", parents=[common], help="make the network see TARGET in a photo")
    _photo_arguments(p, "the photo to change")
    p.add_argument("--target", default=None, help="the label to make the network see (default: the runner-up)")
    p.add_argument("--strength", default="normal", choices=tuple(STRENGTHS),
                   help="how far each pixel may move: subtle 1/255, normal 2/255, strong 4/255 (default %(default)s)")
    p = sub.add_parser("ideal", parents=[common], help="the image the network finds most LABEL-like")
    p.add_argument("--label", required=True, help="which class to dream up")
    p = sub.add_parser("explain", parents=[common], help="Grad-CAM overlay for a photo")
    _photo_arguments(p, "the photo to explain")
    sub.add_parser("about", parents=[common], help="model, accuracy and how it works")
    return parser


def _photo_arguments(p: argparse.ArgumentParser, what: str) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, help=what)
    src.add_argument("--message-json", type=Path, metavar="FILE",
                     help="a Discord message object (JSON): use its first image attachment, as the message "
                          "context menu does")


MENUS = {"classify": "Classify photo", "fool-me": "Fool me", "explain": "Explain"}


def _posted_image(handlers, args: argparse.Namespace, downloader):
    """The first image attachment of the message in ``--message-json``, or the reply saying
    there is none; only Discord's CDN is ever contacted (see :mod:`bot.download`)."""
    from types import SimpleNamespace

    from service import UserError

    from .handlers import Upload, first_image, no_image_reply

    try:
        message = json.loads(args.message_json.read_text())
        # A forwarded message carries its photo in the snapshot of the message it forwards.
        found = message.get("attachments") or [a for snap in message.get("message_snapshots") or []
                                               for a in (snap.get("message") or {}).get("attachments") or []]
        attachments = [SimpleNamespace(filename=str(a.get("filename", "")), content_type=a.get("content_type"),
                                       size=int(a.get("size") or 0), width=a.get("width"), height=a.get("height"),
                                       url=str(a.get("url", ""))) for a in found]
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise UserError(f"{args.message_json}: not a Discord message object ({exc})") from exc

    def upload(att) -> Upload:
        return Upload.from_attachment(att, lambda: downloader.fetch(att.url, att.size, att.filename))

    image = first_image([upload(a) for a in attachments])
    return image if image is not None else no_image_reply(MENUS[args.command], args.command)


def _emit(ok: bool, text: str, files: list[str]) -> None:
    print(json.dumps({"ok": ok, "text": text, "files": files}, ensure_ascii=False), flush=True)


async def _run(handlers, args: argparse.Namespace):
    from .handlers import Reply, Upload

    if args.command == "about":
        return handlers.about()
    if args.command == "ideal":
        return await handlers.ideal(args.label)
    if args.message_json is None:
        return await _on(handlers, args, Upload.from_path(args.image))
    import aiohttp

    from .download import Downloader

    s = handlers.settings
    async with aiohttp.ClientSession() as session:
        downloader = Downloader(session, allowed=s.attachment_origins(), timeout_s=s.download_timeout_s,
                                max_bytes=s.limits.max_bytes)
        upload = _posted_image(handlers, args, downloader)
        return upload if isinstance(upload, Reply) else await _on(handlers, args, upload)


async def _on(handlers, args: argparse.Namespace, upload):
    if args.command == "classify":
        return await handlers.classify(upload)
    if args.command == "fool-me":
        return await handlers.fool_me(upload, target=args.target, strength=args.strength)
    return await handlers.explain(upload)


def main(args: argparse.Namespace) -> int:
    """Run one command; prints the JSON line and returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from service import UserError

    from .handlers import ConfigError, Handlers

    try:
        # classify and about never touch the checkpoint: skip importing torch to check it.
        heavy = args.command in ("fool-me", "ideal", "explain")
        handlers = Handlers(config.from_args(args, token=""), verify_checkpoint=heavy)
    except (ConfigError, ValueError) as exc:
        _emit(False, f"setup error: {exc}", [])
        return EXIT_CONFIG
    try:
        reply = asyncio.run(_run(handlers, args))
    except UserError as exc:  # e.g. --image names no file
        _emit(False, str(exc), [])
        return 0
    finally:
        handlers.close()
    written = []
    if reply.files:
        args.out.mkdir(parents=True, exist_ok=True)
        for f in reply.files:
            path = args.out / f.name
            path.write_bytes(f.data)
            written.append(str(path))
    text = f"{reply.title}\n{reply.text}" if reply.title else reply.text
    _emit(reply.ok, text, written)
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry (``petlens-bot-console``): a bad photo is a reply (``ok: false``,
    exit 0), a configuration mistake one ``error:`` line and exit 2."""
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
