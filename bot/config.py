"""Bot settings: every knob has a flag, and every flag a ``PETLENS_*`` environment default.

The Discord token is the exception: it comes only from ``DISCORD_TOKEN`` (a flag would show
it in ``ps`` and in shell history), is kept out of ``repr()`` and is never logged.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from service import Limits
from service.jobs import STRENGTHS  # noqa: F401  (the /fool-me choices, in grey levels)

DEFAULT_MODEL = Path("models/catsdogs.onnx")
DEFAULT_CHECKPOINT = Path("models/catsdogs.pt")

# Hosts PETLENS_DISCORD_URL may name: the emulator runs on this machine, never elsewhere, so a
# stray setting cannot send the token or fetch attachments from another host.
LOOPBACK = ("127.0.0.1", "localhost", "::1")

# Discord's own upload limit for most users; the pixel limit and the working size are the service's.
DISCORD_MAX_BYTES = 10 * 1024 * 1024
BOT_LIMITS = Limits(max_bytes=DISCORD_MAX_BYTES)


@dataclass(frozen=True)
class Settings:
    """Everything the handlers and the client need; build it with :func:`from_args`."""

    model: Path = DEFAULT_MODEL
    checkpoint: Path | None = DEFAULT_CHECKPOINT
    server: str | None = None  # a Triton server for classify and the heavy jobs (model/checkpoint unused)
    limits: Limits = BOT_LIMITS
    workers: int = 2  # threads (or processes) for /classify
    max_heavy: int = 2  # concurrent /fool-me, /ideal, /explain jobs, bot-wide
    max_queued: int = 128  # /classify requests in flight (memory: at most this × max_bytes)
    cooldown_s: float = 20.0  # per user, between heavy commands
    classify_cooldown_s: float = 1.0  # per user, between /classify calls
    pool: str = "thread"  # "thread" or "process"
    fool_steps: int | None = None  # None: the attack's own default
    ideal_steps: int | None = None
    guild_id: int | None = None
    sync: bool = True
    shards: int | None = None  # None: as many as Discord recommends (GET /gateway/bot)
    download_timeout_s: float = 20.0  # an attachment must arrive from the CDN within this
    # The most a job may take from the interaction to the answer (queue, download, compute,
    # retries): Discord's interaction token lives 15 minutes, so a reply must be sent well before.
    job_timeout_s: float = 600.0
    # Test-only: a local Discord emulator's origin (http://127.0.0.1:PORT) from
    # $PETLENS_DISCORD_URL; the API, the gateway and attachment downloads then go there.
    discord_url: str | None = None
    token: str = field(default="", repr=False)

    def attachment_origins(self) -> tuple[tuple[str, str, int], ...]:
        """Where attachments may be downloaded from: Discord's CDN (and the emulator in tests)."""
        from .download import DISCORD_CDN, origin

        local = origin(self.discord_url) if self.discord_url else None
        return DISCORD_CDN + ((local,) if local else ())


def _env(name: str, default: object) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None if default is None else str(default)
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``python -m bot`` and ``python -m bot.console``."""
    g = parser.add_argument_group("model and limits")
    g.add_argument("--model", type=Path, default=_env("PETLENS_MODEL", DEFAULT_MODEL),
                   help="ONNX classifier for /classify and to judge results (env PETLENS_MODEL; default %(default)s)")
    g.add_argument("--checkpoint", default=_env("PETLENS_CHECKPOINT", DEFAULT_CHECKPOINT),
                   help="torch checkpoint for /fool-me, /ideal and /explain; 'none' disables them "
                        "(env PETLENS_CHECKPOINT; default %(default)s)")
    g.add_argument("--server", default=_env("PETLENS_SERVER", None), metavar="URL",
                   help="a Triton server (http://host:8000, from python -m export --triton-repo) that classifies and "
                        "runs /fool-me, /ideal and /explain; --model and --checkpoint are then not used "
                        "(env PETLENS_SERVER; default: all in this process)")
    g.add_argument("--max-bytes", type=int, default=_env("PETLENS_MAX_BYTES", BOT_LIMITS.max_bytes),
                   help="largest upload accepted, in bytes (env PETLENS_MAX_BYTES; default %(default)s)")
    g.add_argument("--max-pixels", type=int, default=_env("PETLENS_MAX_PIXELS", BOT_LIMITS.max_pixels),
                   help="largest upload accepted, width×height (env PETLENS_MAX_PIXELS; default %(default)s)")
    g.add_argument("--max-output-side", type=int, default=_env("PETLENS_MAX_OUTPUT_SIDE", BOT_LIMITS.max_side),
                   help="longest side heavy jobs work at and send back (env PETLENS_MAX_OUTPUT_SIDE; default %(default)s)")
    g.add_argument("--fool-steps", type=int, default=_env("PETLENS_FOOL_STEPS", None),
                   help="attack steps for /fool-me (env PETLENS_FOOL_STEPS; default: the attack's own)")
    g.add_argument("--ideal-steps", type=int, default=_env("PETLENS_IDEAL_STEPS", None),
                   help="optimization steps for /ideal (env PETLENS_IDEAL_STEPS; default: ideal_image's own)")
    g.add_argument("--job-timeout", type=float, default=_env("PETLENS_JOB_TIMEOUT", Settings.job_timeout_s),
                   help="seconds a command may take from the interaction to the answer, all included; Discord's "
                        "interaction token lives 15 minutes (env PETLENS_JOB_TIMEOUT; default %(default)s)")
    g.add_argument("--download-timeout", type=float,
                   default=_env("PETLENS_DOWNLOAD_TIMEOUT", Settings.download_timeout_s),
                   help="seconds an attachment may take to download from Discord's CDN "
                        "(env PETLENS_DOWNLOAD_TIMEOUT; default %(default)s)")


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that only matter to a long-running bot: pools, limiter, command sync."""
    g = parser.add_argument_group("serving")
    g.add_argument("--guild-id", type=int, default=_env("DISCORD_GUILD_ID", None),
                   help="sync the commands to this server only, instantly (env DISCORD_GUILD_ID); "
                        "without it they are synced globally, which Discord may take a while to show")
    g.add_argument("--no-sync", dest="sync", action="store_false",
                   help="do not upload the command list at start (it has not changed since last time)")
    g.add_argument("--workers", type=int, default=_env("PETLENS_WORKERS", Settings.workers),
                   help="worker threads/processes for /classify (env PETLENS_WORKERS; default %(default)s)")
    g.add_argument("--max-heavy", type=int, default=_env("PETLENS_MAX_HEAVY", Settings.max_heavy),
                   help="bot-wide cap on concurrent /fool-me, /ideal, /explain jobs; more get a polite "
                        "'busy' reply (env PETLENS_MAX_HEAVY; default %(default)s)")
    g.add_argument("--max-queued", type=int, default=_env("PETLENS_MAX_QUEUED", Settings.max_queued),
                   help="bot-wide cap on /classify requests in flight (env PETLENS_MAX_QUEUED; default %(default)s)")
    g.add_argument("--cooldown", type=float, default=_env("PETLENS_COOLDOWN", Settings.cooldown_s),
                   help="seconds a user waits between heavy commands (env PETLENS_COOLDOWN; default %(default)s)")
    g.add_argument("--classify-cooldown", type=float,
                   default=_env("PETLENS_CLASSIFY_COOLDOWN", Settings.classify_cooldown_s),
                   help="seconds a user waits between /classify calls "
                        "(env PETLENS_CLASSIFY_COOLDOWN; default %(default)s)")
    g.add_argument("--shards", type=int, default=_env("PETLENS_SHARDS", None),
                   help="gateway shards to open (env PETLENS_SHARDS; default: as many as Discord "
                        "recommends, one per 1,000 servers or so; it requires sharding from 2,500)")
    g.add_argument("--pool", choices=("thread", "process"), default=_env("PETLENS_POOL", Settings.pool),
                   help="run the compute in threads (shared models, torch and onnxruntime release the GIL) "
                        "or in processes (env PETLENS_POOL; default %(default)s)")


def from_args(args: argparse.Namespace, token: str | None = None) -> Settings:
    """Settings from parsed flags (with their environment defaults); ``token`` defaults to
    ``$DISCORD_TOKEN``. Raises ``ValueError`` with a readable message on nonsense values."""
    ckpt = getattr(args, "checkpoint", DEFAULT_CHECKPOINT)
    checkpoint = None if ckpt is None or str(ckpt).lower() in ("", "none") else Path(ckpt)
    limits = Limits(max_bytes=int(args.max_bytes), max_pixels=int(args.max_pixels), max_side=int(args.max_output_side))
    settings = Settings(
        model=Path(args.model),
        checkpoint=checkpoint,
        server=getattr(args, "server", None) or None,
        limits=limits,
        workers=getattr(args, "workers", Settings.workers),
        max_heavy=getattr(args, "max_heavy", Settings.max_heavy),
        max_queued=getattr(args, "max_queued", Settings.max_queued),
        cooldown_s=getattr(args, "cooldown", 0.0),
        classify_cooldown_s=getattr(args, "classify_cooldown", 0.0),
        pool=getattr(args, "pool", "thread"),
        fool_steps=args.fool_steps,
        ideal_steps=args.ideal_steps,
        guild_id=getattr(args, "guild_id", None),
        sync=getattr(args, "sync", True),
        shards=getattr(args, "shards", None),
        download_timeout_s=float(getattr(args, "download_timeout", Settings.download_timeout_s)),
        job_timeout_s=float(getattr(args, "job_timeout", Settings.job_timeout_s)),
        discord_url=os.environ.get("PETLENS_DISCORD_URL") or None,
        token=(os.environ.get("DISCORD_TOKEN", "") if token is None else token).strip(),
    )
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    """Refuse settings that would make the bot misbehave later, naming the fix."""
    positive = {"--workers": s.workers, "--max-heavy": s.max_heavy, "--max-queued": s.max_queued,
                "--max-bytes": s.limits.max_bytes, "--max-pixels": s.limits.max_pixels,
                "--max-output-side": s.limits.max_side}
    for flag, value in positive.items():
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if s.cooldown_s < 0 or s.classify_cooldown_s < 0:
        raise ValueError("cooldowns cannot be negative")
    for flag, value in (("--fool-steps", s.fool_steps), ("--ideal-steps", s.ideal_steps)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if s.shards is not None and s.shards < 1:
        raise ValueError(f"--shards must be at least 1, got {s.shards}")
    if s.download_timeout_s <= 0:
        raise ValueError(f"--download-timeout must be positive, got {s.download_timeout_s}")
    if not 0 < s.job_timeout_s <= 840:
        raise ValueError(f"--job-timeout must be between 0 and 840 s (Discord's interaction token lives 15 minutes), "
                         f"got {s.job_timeout_s}")
    if s.discord_url is not None:
        from .download import origin

        found = origin(s.discord_url)
        if found is None or found[0] != "http" or found[1] not in LOOPBACK:
            raise ValueError(f"PETLENS_DISCORD_URL must be http://127.0.0.1:PORT (a local Discord emulator "
                             f"for tests), got {s.discord_url!r}; unset it to talk to Discord")
    if s.pool not in ("thread", "process"):
        raise ValueError(f"--pool must be 'thread' or 'process', got {s.pool!r}")
