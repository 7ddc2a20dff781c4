"""The medium-independent bot: one async handler per command, shared by Discord and the console.

A handler takes plain inputs (an :class:`Upload` -- attachment metadata plus a coroutine to
fetch the bytes -- and options) and returns a :class:`Reply`. Along the way it

1. checks the upload's metadata (type, size, width×height) *before* downloading
   (:func:`service.photos.check_metadata`: the same limits and words as the demo),
2. asks the :class:`~bot.limiter.Limiter` whether the user may start a job (per-user cooldown),
   so refusals stay instant and private,
3. calls ``acknowledge()`` -- Discord's ``defer()`` -- and downloads the photo *before* taking
   one of the bot-wide slots, so a slow download never holds a slot others could use,
4. runs the job from :mod:`bot.work` (the :mod:`service` layer) in a bounded pool, off the
   event loop, all of it within ``job_timeout_s`` (Discord's interaction token lives 15 minutes),
5. turns every exception into a reply a person can act on; unexpected ones are logged with
   a short reference and never leak a traceback.

What a reply *says* comes from :mod:`service.answers`; here it is only laid out for Discord.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import multiprocessing
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service import UserError
from service.answers import Classified, accuracy_sentence, choose
from service.photos import check_metadata, looks_like_image
from training.images import ImageError

from . import work
from .config import DEFAULT_CHECKPOINT, STRENGTHS, Settings
from .limiter import Limiter, Refused

log = logging.getLogger("petlens.bot")

Acknowledge = Callable[[], Awaitable[Any]]


class ConfigError(RuntimeError):
    """The operator's setup is unusable (missing model, mismatched labels, ...)."""


@dataclass
class ReplyFile:
    name: str
    data: bytes


@dataclass
class Reply:
    """What to tell the user; the client renders it as an embed, the console as JSON."""

    ok: bool
    text: str
    files: list[ReplyFile] = field(default_factory=list)
    ephemeral: bool = False
    title: str = ""
    retry_after: float | None = None  # set when refused by the limiter


@dataclass
class Upload:
    """An attachment as Discord describes it, before anything is downloaded."""

    filename: str
    content_type: str | None
    size: int
    width: int | None
    height: int | None
    read: Callable[[], Awaitable[bytes]]

    @classmethod
    def from_attachment(cls, att: Any, read: Callable[[], Awaitable[bytes]] | None = None) -> Upload:
        """From a ``discord.Attachment`` (or anything with the same fields); ``read`` fetches
        the bytes (default: the object's own ``read``)."""
        return cls(att.filename, att.content_type, att.size, att.width, att.height, read or att.read)

    @classmethod
    def from_path(cls, path: str | Path) -> Upload:
        """From a local file (the console); the content type is guessed from the name."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path.name}: no such file")

        async def read() -> bytes:
            return path.read_bytes()

        return cls(path.name, mimetypes.guess_type(path.name)[0], path.stat().st_size, None, None, read)


def first_image(uploads: list[Upload]) -> Upload | None:
    """The first image among a message's attachments (links and embeds are never used): one
    labelled as an image, else one with no usable label (its bytes will tell)."""
    said = [looks_like_image(u.filename, u.content_type) for u in uploads]
    return next((u for u, ok in zip(uploads, said) if ok), None) or next(
        (u for u, ok in zip(uploads, said) if ok is None), None)


def no_image_reply(menu: str, slash: str) -> Reply:
    """The private answer to a context menu used on a message without an image attachment."""
    return Reply(False, f"That message has no image attached, so {menu} has nothing to work on. "
                        f"Right-click (or long-press) a message with a photo attached and pick Apps > {menu}, "
                        f"or use /{slash} and upload the photo. Links and embedded images are not used.",
                 ephemeral=True)


def top_k_text(ranked: list[tuple[str, float]]) -> str:
    """``▰▰▰▰▰▰▰▰▰▱ **cat** 93.1%`` lines, best first."""
    lines = []
    for i, (label, p) in enumerate(ranked):
        filled = round(p * 10)
        bar = "▰" * filled + "▱" * (10 - filled)
        name = f"**{label}**" if i == 0 else label
        lines.append(f"{bar} {name} {p:.1%}")
    return "\n".join(lines)


def classify_reply(found: Classified) -> Reply:
    """/classify's answer: the headline, the caveat when there is one, and the bars (the
    closest guess stays part of the lesson: a cats-vs-dogs network calls a car a cat or a dog)."""
    text = "\n".join(part for part in (found.breed_sentence(), found.caveat(), top_k_text(found.top)) if part)
    return Reply(True, text, title=found.headline())


def answer_reply(answer: Any, png: bytes | None) -> Reply:
    """A heavy job's answer (fool-me, ideal, explain) with its image; a fool-me that had nothing
    to do (the network already sees the target) is a private note, not a post."""
    if getattr(answer, "already", False):
        return Reply(False, answer.summary(), ephemeral=True, title=answer.headline())
    files = [ReplyFile(answer.file_name, png)] if png is not None else []
    return Reply(True, answer.summary(), files, title=answer.headline())


def _make_pool(kind: str, size: int, initargs: tuple, name: str) -> Executor:
    if kind == "process":
        # spawn, not fork: forking a process that has torch / onnxruntime threads running
        # can deadlock the child.
        return ProcessPoolExecutor(size, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=work.warm, initargs=initargs)
    return ThreadPoolExecutor(size, thread_name_prefix=name, initializer=work.warm, initargs=initargs)


class Handlers:
    """The bot's commands over one :class:`service.Service` (an ONNX model and a torch checkpoint)."""

    def __init__(self, settings: Settings, *, verify_checkpoint: bool = True):
        """Load the classifier and check the checkpoint; raises :class:`ConfigError`.

        ``verify_checkpoint=False`` only checks that the checkpoint file exists, sparing the
        torch import (seconds) to a one-shot console call that will not use it.
        """
        self.settings = settings
        self.limits = settings.limits
        self.model_path = settings.server or str(settings.model)
        if settings.server:  # the server holds the classifier and the job models
            checkpoint, disabled = None, None
        elif not Path(self.model_path).is_file():
            raise ConfigError(f"model not found: {settings.model}. Export one with `python -m export` "
                              "or point --model / PETLENS_MODEL at an .onnx file.")
        else:
            checkpoint, disabled = self._check_checkpoint(settings.checkpoint, verify_checkpoint)
        self.spec = work.Spec(self.model_path, checkpoint, settings.limits, settings.fool_steps, settings.ideal_steps,
                              disabled, settings.server, settings.job_timeout_s)
        try:
            self.service = work.service(self.spec)
        except Exception as exc:
            raise ConfigError(str(exc) if settings.server else f"cannot load {settings.model}: {exc}") from exc
        self.labels: list[str] = list(self.service.labels)
        if checkpoint and verify_checkpoint and (found := work.checkpoint_labels(checkpoint)) != self.labels:
            raise ConfigError(f"{checkpoint} has labels {found} but {self.model_path} has {self.labels}; "
                              "export the ONNX model from this checkpoint.")
        self.checkpoint, self.heavy_disabled = checkpoint, self.service.heavy_disabled
        self.light_pool = self._new_pool("light_pool")
        self.heavy_pool = self._new_pool("heavy_pool")
        self._ideals: dict[str, tuple[Any, bytes]] = {}  # label -> (answer, PNG): deterministic, small
        self.light = Limiter(settings.max_queued, settings.classify_cooldown_s, name="/classify", typical_s=0.5)
        self.heavy = Limiter(settings.max_heavy, settings.cooldown_s, name="/fool-me, /ideal or /explain",
                             typical_s=10.0)

    def _check_checkpoint(self, path: Path | None, verify: bool) -> tuple[str | None, str | None]:
        """``(checkpoint, reason heavy commands are off)``; a checkpoint that was asked for
        explicitly but is unusable stops the bot instead."""
        if path is None:
            return None, "this bot runs without a torch checkpoint (--checkpoint none)"
        if not path.is_file():
            if path == DEFAULT_CHECKPOINT:  # the default is optional: /classify still works
                log.warning("no checkpoint at %s: /fool-me, /ideal and /explain are disabled", path)
                return None, f"this bot has no torch checkpoint ({path} is missing)"
            raise ConfigError(f"checkpoint not found: {path}")
        if verify:
            try:
                work.checkpoint_labels(path)
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(str(exc)) from exc
        return str(path), None

    def _new_pool(self, which: str) -> Executor:
        s = self.settings
        threads = work.default_torch_threads(s.max_heavy)
        if which == "light_pool":  # ONNX only: no torch in these workers
            return _make_pool(s.pool, s.workers, (self.spec, threads, False), "classify")
        return _make_pool(s.pool, s.max_heavy, (self.spec, threads, True), "heavy")

    async def warm_up(self) -> None:
        """Start every worker and load its models now, so the first users do not wait."""
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(pool, time.sleep, 0.05)
                for pool, size in ((self.light_pool, self.settings.workers),
                                   (self.heavy_pool, self.settings.max_heavy))
                for _ in range(size)]
        await asyncio.gather(*jobs)

    def close(self) -> None:
        self.light_pool.shutdown(wait=False, cancel_futures=True)
        self.heavy_pool.shutdown(wait=False, cancel_futures=True)

    # --- the common path ------------------------------------------------------------------

    async def _download(self, upload: Upload) -> bytes:
        try:
            return await upload.read()
        except UserError:  # already a message for the user (deleted, too slow, too big, ...)
            raise
        except Exception as exc:  # expired attachment URL, network hiccup, ...
            log.warning("download of %r failed: %r", upload.filename, exc)
            raise UserError(f"I could not download {upload.filename or 'your file'} from Discord; "
                            "please send it again.") from exc

    async def _serve(self, command: str, limiter: Limiter, user: Hashable, upload: Upload | None,
                     acknowledge: Acknowledge | None, pool: str, job: Callable[..., Any],
                     render: Callable[..., Reply], *args: Any) -> Reply:
        """Check, acknowledge, download, then compute in ``pool`` ("light_pool" or "heavy_pool")
        holding one of ``limiter``'s slots, and render; all within ``job_timeout_s``. Never raises."""
        # A thread pool can be told to stop a job at its next step; a process can not share the event.
        cancel = threading.Event() if pool == "heavy_pool" and self.settings.pool == "thread" else None
        try:
            async with asyncio.timeout(self.settings.job_timeout_s):
                if upload is not None and (problem := check_metadata(
                        upload.filename, upload.content_type, upload.size, upload.width, upload.height, self.limits)):
                    return Reply(False, problem, ephemeral=True)
                limiter.check(user)  # cooldown or a request still running: an instant, private refusal
                with limiter.waiting(user):
                    if acknowledge is not None:
                        await acknowledge()
                    job_args = (*args, await self._download(upload), upload.filename) if upload is not None else args
                with limiter.slot(user):  # only now: a slow download holds no slot
                    extra = (cancel,) if cancel is not None else ()
                    result = await asyncio.get_running_loop().run_in_executor(
                        getattr(self, pool), job, self.spec, *job_args, *extra)
            return render(*result)
        except TimeoutError:
            minutes = self.settings.job_timeout_s / 60
            return Reply(False, f"Sorry, /{command} took more than {minutes:.0f} minute{'s' * (minutes >= 2)}, so I "
                                "stopped it. The bot is very busy: try again in a few minutes.", ephemeral=True)
        except Refused as exc:
            return Reply(False, f"Sorry, {exc}", ephemeral=True, retry_after=exc.retry_after)
        except (ImageError, UserError) as exc:
            return Reply(False, str(exc), ephemeral=True)
        except Exception as exc:
            if isinstance(exc, BrokenExecutor):
                # A worker died (killed for memory, a native crash) or could not start: a broken
                # pool refuses every later job, so replace it and let the next request retry.
                getattr(self, pool).shutdown(wait=False, cancel_futures=True)
                setattr(self, pool, self._new_pool(pool))
            ref = uuid.uuid4().hex[:8]
            log.exception("/%s failed (ref %s)", command, ref)
            return Reply(False, f"Sorry, something went wrong on my side while running /{command} "
                                f"(reference {ref}). Try again; if it keeps failing, give the bot's "
                                "operator that reference.", ephemeral=True)
        finally:
            if cancel is not None:
                cancel.set()  # a job cut off by the timeout stops at its next step

    def _heavy_unavailable(self, command: str) -> Reply | None:
        if self.heavy_disabled:
            return Reply(False, f"/{command} is not available: {self.heavy_disabled}. /classify still works.",
                         ephemeral=True)
        return None

    # --- commands -------------------------------------------------------------------------

    async def classify(self, upload: Upload, *, user: Hashable = "console",
                       acknowledge: Acknowledge | None = None) -> Reply:
        """Top-3 labels with confidences, and what the network makes of the photo (a pet,
        probably one, or not a cat or a dog at all: :class:`service.Classified`)."""
        return await self._serve("classify", self.light, user, upload, acknowledge, "light_pool",
                                 work.classify, lambda found, _png: classify_reply(found))

    async def fool_me(self, upload: Upload, *, target: str | None = None, strength: str = "normal",
                      user: Hashable = "console", acknowledge: Acknowledge | None = None) -> Reply:
        """The photo, changed invisibly until the network calls it ``target`` (default: the other label)."""
        if (off := self._heavy_unavailable("fool-me")) is not None:
            return off
        try:
            target = None if target is None else choose(target, self.labels, "target")
            strength = choose(strength, list(STRENGTHS), "strength")
        except UserError as exc:
            return Reply(False, str(exc), ephemeral=True)
        return await self._serve("fool-me", self.heavy, user, upload, acknowledge, "heavy_pool",
                                 _fool_job, answer_reply, target, strength)

    async def ideal(self, label: str, *, user: Hashable = "console",
                    acknowledge: Acknowledge | None = None) -> Reply:
        """The image the network finds most ``label``-like."""
        if (off := self._heavy_unavailable("ideal")) is not None:
            return off
        try:
            label = choose(label, self.labels)
        except UserError as exc:
            return Reply(False, str(exc), ephemeral=True)
        if label in self._ideals:
            # Same model, label, seed and steps give the same picture: a repeat costs nothing
            # and takes no heavy slot.
            return answer_reply(*self._ideals[label])

        def render(answer, png: bytes) -> Reply:
            self._ideals[answer.label] = (answer, png)
            return answer_reply(answer, png)

        return await self._serve("ideal", self.heavy, user, None, acknowledge, "heavy_pool", work.ideal, render, label)

    async def explain(self, upload: Upload, *, user: Hashable = "console",
                      acknowledge: Acknowledge | None = None) -> Reply:
        """Grad-CAM: where in the photo the network looked to decide."""
        if (off := self._heavy_unavailable("explain")) is not None:
            return off
        return await self._serve("explain", self.heavy, user, upload, acknowledge, "heavy_pool",
                                 _explain_job, answer_reply)

    def about(self) -> Reply:
        """What model this is, how good it is, and how the commands work."""
        meta = dict(getattr(self.service.classifier, "metadata", {}) or {})
        arch = meta.get("arch", "a torchvision CNN")
        acc = accuracy_sentence(meta)
        cooldown = (f" One heavy command per person every {self.settings.cooldown_s:.0f} s."
                    if self.settings.cooldown_s >= 1 else "")
        lines = [
            f"**Model**: {arch} fine-tuned on pet photos, labels: {', '.join(self.labels)} "
            f"({Path(self.model_path).name}). {acc}".rstrip(),
            "**How it works**: a network pretrained on ImageNet (1.3 M photos) already knows edges, "
            "fur and eyes; its last layers were retrained on these labels (transfer learning). "
            "/classify runs it through ONNX Runtime.",
            "/fool-me changes every pixel by at most a few 1/255 steps, following the network's "
            "gradient towards the target label (a targeted PGD attack): invisible to you, decisive "
            "for the network. /ideal starts from noise and climbs the same gradient. /explain shows "
            "where in the photo the evidence was (Grad-CAM).",
            f"**Limits**: photos up to {self.limits.max_bytes / 1024 / 1024:.0f} MB and "
            f"{self.limits.max_pixels / 1e6:.0f} megapixels.{cooldown}",
        ]
        if self.heavy_disabled:
            lines.append(f"/fool-me, /ideal and /explain are off: {self.heavy_disabled}.")
        return Reply(True, "\n".join(lines), title="petlens: a pet classifier you can poke at")


# Module-level wrappers put the upload (bytes, file name) where work's jobs take it; being
# top-level functions they pickle, so the same calls work with a process pool.
def _fool_job(spec, target, strength, data, filename, cancel=None):
    return work.fool_me(spec, data, filename, target, strength, cancel)


def _explain_job(spec, data, filename, cancel=None):
    return work.explain(spec, data, filename, cancel)
