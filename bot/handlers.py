"""The medium-independent bot: one async handler per command, shared by Discord and the console.

A handler takes plain inputs (an :class:`Upload` — attachment metadata plus a coroutine to
fetch the bytes — and options) and returns a :class:`Reply`. Along the way it

1. checks the upload's metadata (content type, size, width×height) *before* downloading,
2. asks the :class:`~bot.limiter.Limiter` for a slot (per-user cooldown, bot-wide cap),
3. calls ``acknowledge()`` — Discord's ``defer()`` — once the request is accepted, so
   refusals stay instant and private,
4. runs the compute from :mod:`bot.work` in a bounded pool via ``loop.run_in_executor``
   so the event loop never waits on a model,
5. turns every exception into a reply a person can act on; unexpected ones are logged with
   a short reference and never leak a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import mimetypes
import multiprocessing
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.images import ImageError
from training.labels import describe_labels, english_list
from training.verdict import UNSURE

from . import work
from .config import DEFAULT_CHECKPOINT, STRENGTHS, Limits, Settings
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
            raise work.UserError(f"{path.name}: no such file")

        async def read() -> bytes:
            return path.read_bytes()

        return cls(path.name, mimetypes.guess_type(path.name)[0], path.stat().st_size, None, None, read)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif")


def is_image(upload: Upload) -> bool:
    """Whether an attachment is an image, by Discord's content type or, lacking one, its name."""
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype:
        return ctype.startswith("image/") and ctype != "image/svg+xml"
    return Path(upload.filename or "").suffix.lower() in IMAGE_SUFFIXES


def first_image(uploads: list[Upload]) -> Upload | None:
    """The first image among a message's attachments (links and embeds are never used)."""
    return next((u for u in uploads if is_image(u)), None)


def no_image_reply(menu: str, slash: str) -> Reply:
    """The private answer to a context menu used on a message without an image attachment."""
    return Reply(False, f"That message has no image attached, so {menu} has nothing to work on. "
                        f"Right-click (or long-press) a message with a photo attached and pick Apps > {menu}, "
                        f"or use /{slash} and upload the photo. Links and embedded images are not used.",
                 ephemeral=True)


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def check_upload(upload: Upload, limits: Limits) -> str | None:
    """Why this attachment cannot be used, from its metadata alone; ``None`` if it may be."""
    name = upload.filename or "the attachment"
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype == "image/svg+xml":
        return f"{name}: SVG drawings are not supported; export it as PNG or JPEG and send that."
    if ctype and not ctype.startswith("image/"):
        return f"{name} is not an image ({ctype}). Send a photo: JPEG, PNG, WebP, GIF, BMP or TIFF."
    if upload.size == 0:
        return f"{name} is empty (0 bytes). Send a photo file (JPEG, PNG, ...)."
    if upload.size > limits.max_bytes:
        return f"{name} is {_mb(upload.size)}; the limit is {_mb(limits.max_bytes)}. Send a smaller photo."
    if upload.width and upload.height and upload.width * upload.height > limits.max_pixels:
        return (f"image too large: {upload.width}×{upload.height} pixels, limit "
                f"{limits.max_pixels / 1e6:.0f} megapixels. Resize it and send it again.")
    return None


def top_k_text(ranked: list[tuple[str, float]]) -> str:
    """``▰▰▰▰▰▰▰▰▰▱ **cat** 93.1%`` lines, best first."""
    lines = []
    for i, (label, p) in enumerate(ranked):
        filled = round(p * 10)
        bar = "▰" * filled + "▱" * (10 - filled)
        name = f"**{label}**" if i == 0 else label
        lines.append(f"{bar} {name} {p:.1%}")
    return "\n".join(lines)


def _stem(filename: str) -> str:
    """A safe, short file stem derived from the user's file name."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(filename or "photo").stem).strip("-")[:40]
    return stem or "photo"


def _make_pool(kind: str, size: int, initargs: tuple, name: str) -> Executor:
    if kind == "process":
        # spawn, not fork: forking a process that has torch / onnxruntime threads running
        # can deadlock the child.
        return ProcessPoolExecutor(size, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=work.warm, initargs=initargs)
    return ThreadPoolExecutor(size, thread_name_prefix=name, initializer=work.warm, initargs=initargs)


class Handlers:
    """The bot's commands over one ONNX ``Classifier`` and one torch checkpoint."""

    def __init__(self, settings: Settings, *, verify_checkpoint: bool = True):
        """Load the classifier and check the checkpoint; raises :class:`ConfigError`.

        ``verify_checkpoint=False`` only checks that the checkpoint file exists, sparing the
        torch import (seconds) to a one-shot console call that will not use it.
        """
        self.settings = settings
        self.limits = settings.limits
        self.model_path = str(settings.model)
        if not Path(self.model_path).is_file():
            raise ConfigError(f"model not found: {settings.model}. Export one with `python -m export` "
                              "or point --model / PETLENS_MODEL at an .onnx file.")
        try:
            self.classifier = work.classifier(self.model_path)
        except Exception as exc:
            raise ConfigError(f"cannot load {settings.model}: {exc}") from exc
        self.labels: list[str] = list(self.classifier.labels)
        self.checkpoint, self.heavy_disabled, self.checkpoint_metrics = self._check_checkpoint(
            settings.checkpoint, verify_checkpoint)
        self.light_pool = self._new_pool("light_pool")
        self.heavy_pool = self._new_pool("heavy_pool")
        self._ideals: dict[str, work.IdealOutput] = {}  # label -> result (deterministic, small)
        self.light = Limiter(settings.max_queued, settings.classify_cooldown_s, name="/classify", typical_s=0.5)
        self.heavy = Limiter(settings.max_heavy, settings.cooldown_s, name="/fool-me, /ideal or /explain",
                             typical_s=10.0)

    def _check_checkpoint(self, path: Path | None, verify: bool) -> tuple[str | None, str | None, dict]:
        """``(checkpoint, reason heavy commands are off, metrics)``; a checkpoint that was
        asked for explicitly but is unusable stops the bot instead."""
        if path is None:
            return None, "this bot runs without a torch checkpoint (--checkpoint none)", {}
        if not path.is_file():
            if path == DEFAULT_CHECKPOINT:  # the default is optional: /classify still works
                log.warning("no checkpoint at %s: /fool-me, /ideal and /explain are disabled", path)
                return None, f"this bot has no torch checkpoint ({path} is missing)", {}
            raise ConfigError(f"checkpoint not found: {path}")
        if not verify:
            return str(path), None, {}
        from training.checkpoint import read_checkpoint

        try:
            ckpt = read_checkpoint(path)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        labels = list(ckpt["config"]["labels"])
        if labels != self.labels:
            raise ConfigError(f"{path} has labels {labels} but {self.model_path} has {self.labels}; "
                              "export the ONNX model from this checkpoint.")
        return str(path), None, dict(ckpt.get("metrics") or {})

    def _new_pool(self, which: str) -> Executor:
        s = self.settings
        threads = work.default_torch_threads(s.max_heavy)
        if which == "light_pool":  # ONNX only: no torch in these workers
            return _make_pool(s.pool, s.workers, (self.model_path, None, threads), "classify")
        return _make_pool(s.pool, s.max_heavy, (self.model_path, self.checkpoint, threads), "heavy")

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
        except work.UserError:  # already a message for the user (deleted, too slow, too big, ...)
            raise
        except Exception as exc:  # expired attachment URL, network hiccup, ...
            log.warning("download of %r failed: %r", upload.filename, exc)
            raise work.UserError(f"I could not download {upload.filename or 'your file'} from Discord; "
                                 "please send it again.") from exc

    async def _serve(self, command: str, limiter: Limiter, user: Hashable, upload: Upload | None,
                     acknowledge: Acknowledge | None, pool: str,
                     compute: Callable[..., Any], render: Callable[[Any, Upload | None], Reply],
                     *args: Any) -> Reply:
        """Check, admit, acknowledge, download, compute off the loop in ``pool``
        ("light_pool" or "heavy_pool"), render; never raises."""
        try:
            if upload is not None and (problem := check_upload(upload, self.limits)):
                return Reply(False, problem, ephemeral=True)
            with limiter.slot(user):
                if acknowledge is not None:
                    await acknowledge()
                job_args = (*args, await self._download(upload)) if upload is not None else args
                result = await asyncio.get_running_loop().run_in_executor(getattr(self, pool), compute, *job_args)
            return render(result, upload)
        except Refused as exc:
            return Reply(False, f"Sorry, {exc}", ephemeral=True, retry_after=exc.retry_after)
        except (ImageError, work.UserError) as exc:
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

    def _heavy_unavailable(self, command: str) -> Reply | None:
        if self.heavy_disabled:
            return Reply(False, f"/{command} is not available: {self.heavy_disabled}. /classify still works.",
                         ephemeral=True)
        return None

    # --- commands -------------------------------------------------------------------------

    async def classify(self, upload: Upload, *, user: Hashable = "console",
                       acknowledge: Acknowledge | None = None) -> Reply:
        """Top-3 labels with confidences for a photo; "probably a dog, but ..." when it is only
        partly like the training photos; a plain "that's not a pet" with the closest guess when
        it is unlike all of them (the three answers of :mod:`training.verdict`)."""
        def render(found, up: Upload | None) -> Reply:
            if (warning := found.message()) is None:
                return Reply(True, top_k_text(found.top), title=f"I see a {found.top[0][0]}")
            if found.verdict == UNSURE:  # an answer with a caveat: an unusual pet, or another animal
                text = (f"{warning}: maybe a breed or a setting it has seen few of, or maybe not "
                        f"{describe_labels(self.labels)} at all.\n{top_k_text(found.top)}")
                return Reply(True, text, title=f"Probably a {found.top[0][0]}")
            # Still show the bars: the closest guess is part of the lesson (a cats-vs-dogs
            # network calls a car a cat or a dog, often at 99%).
            text = (f"{warning}\n{top_k_text(found.top)}\n"
                    f"The network only knows {_names(self.labels)}, so it always picks one of them; "
                    "but this photo is unlike every photo it learned from.")
            return Reply(True, text, title="That doesn't look like a pet")

        return await self._serve("classify", self.light, user, upload, acknowledge, "light_pool",
                                 _classify_job, render, self.model_path, self.limits)

    async def fool_me(self, upload: Upload, *, target: str | None = None, strength: str = "normal",
                      user: Hashable = "console", acknowledge: Acknowledge | None = None) -> Reply:
        """The photo, changed invisibly until the network calls it ``target``."""
        if (off := self._heavy_unavailable("fool-me")) is not None:
            return off
        if strength not in STRENGTHS:
            return Reply(False, f"unknown strength {strength!r}; choose one of: {', '.join(STRENGTHS)}.",
                         ephemeral=True)
        if target is not None:
            try:
                target = work.check_label(target, self.labels, "target")
            except work.UserError as exc:
                return Reply(False, str(exc), ephemeral=True)
        eps = STRENGTHS[strength]

        def render(out: work.FoolOutput, up: Upload | None) -> Reply:
            name = f"{_stem(up.filename)}-as-{out.target}.png"
            if out.success:
                verdict = f"The network now says **{out.after[0]}** ({out.after[1]:.1%}), and a pet."
                check = "The verdict is the ONNX model's, on this very PNG: save it and try /classify."
            elif out.after[0] == out.target and out.verdict == UNSURE:  # /classify would add a caveat
                verdict = (f"Not quite fooled: it says **{out.after[0]}** ({out.after[1]:.1%}), but /classify "
                           "would add that the photo is unlike the ones it learned from. Try `strength: strong`.")
                check = "The verdict is the ONNX model's, on this very PNG."
            elif out.after[0] == out.target:  # the label moved, but /classify would say "not a pet"
                verdict = (f"Not fooled this time: it says **{out.after[0]}**, but no longer takes the photo "
                           "for a pet. Try `strength: strong`.")
                check = "The verdict is the ONNX model's, on this very PNG."
            else:
                verdict = (f"Not fooled this time: it still says **{out.after[0]}** ({out.after[1]:.1%}). "
                           "Try `strength: strong`.")
                check = "The verdict is the ONNX model's, on this very PNG."
            text = (f"Before: **{out.before[0]}** ({out.before[1]:.1%}). {verdict}\n"
                    f"No pixel moved by more than {math.ceil(out.linf * 255 - 1e-6)}/255 "
                    f"({out.steps} steps, {out.seconds:.1f} s). {check}")
            return Reply(True, text, [ReplyFile(name, out.png)],
                         title=f"A {out.before[0]} the network swears is a {out.target}"
                         if out.success else "Not fooled this time")

        return await self._serve("fool-me", self.heavy, user, upload, acknowledge, "heavy_pool",
                                 _fool_job, render, self.model_path, self.checkpoint, target, eps,
                                 self.settings.fool_steps, self.limits)

    async def ideal(self, label: str, *, user: Hashable = "console",
                    acknowledge: Acknowledge | None = None) -> Reply:
        """The image the network finds most ``label``-like."""
        if (off := self._heavy_unavailable("ideal")) is not None:
            return off
        try:
            label = work.check_label(label, self.labels)
        except work.UserError as exc:
            return Reply(False, str(exc), ephemeral=True)

        def render(out: work.IdealOutput, up: Upload | None) -> Reply:
            self._ideals[out.label] = out
            text = (f"What the network imagines when it thinks **{out.label}**: starting from noise, "
                    f"the pixels were changed to make '{out.label}' as likely as possible. "
                    f"It judges the result **{out.judged[0]}** at {out.judged[1]:.1%}.")
            return Reply(True, text, [ReplyFile(f"ideal-{out.label}.png", out.png)],
                         title=f"The ideal {out.label}")

        if label in self._ideals:
            # Same model, label, seed and steps give the same picture: a repeat costs nothing
            # and takes no heavy slot.
            return render(self._ideals[label], None)
        return await self._serve("ideal", self.heavy, user, None, acknowledge, "heavy_pool",
                                 work.ideal, render, self.model_path, self.checkpoint, label,
                                 self.settings.ideal_steps)

    async def explain(self, upload: Upload, *, user: Hashable = "console",
                      acknowledge: Acknowledge | None = None) -> Reply:
        """Grad-CAM: where in the photo the network looked to decide."""
        if (off := self._heavy_unavailable("explain")) is not None:
            return off

        def render(out: work.ExplainOutput, up: Upload | None) -> Reply:
            text = (f"The network says **{out.label}** ({out.prob:.1%}). Warm colours mark the parts "
                    f"of the photo that pushed it towards '{out.label}' the most (Grad-CAM on the "
                    f"last convolutional block; {out.seconds:.1f} s).")
            return Reply(True, text, [ReplyFile(f"{_stem(up.filename)}-gradcam.png", out.png)],
                         title=f"Why {out.label}?")

        return await self._serve("explain", self.heavy, user, upload, acknowledge, "heavy_pool",
                                 _explain_job, render, self.checkpoint, self.limits)

    def about(self) -> Reply:
        """What model this is, how good it is, and how the commands work."""
        meta = dict(getattr(self.classifier, "metadata", {}) or {})
        arch = meta.get("arch", "a torchvision CNN")
        acc = _accuracy(meta, self.checkpoint_metrics)
        cooldown = (f" One heavy command per person every {self.settings.cooldown_s:.0f} s."
                    if self.settings.cooldown_s >= 1 else "")
        lines = [
            f"**Model**: {arch} fine-tuned on pet photos, labels: {', '.join(self.labels)} "
            f"({Path(self.model_path).name}{', ' + acc if acc else ''}).",
            "**How it works**: a network pretrained on ImageNet (1.3 M photos) already knows edges, "
            "fur and eyes; its last layers were retrained on these labels (transfer learning). "
            "/classify runs it through ONNX Runtime.",
            "/fool-me changes every pixel by at most a few 1/255 steps, following the network's "
            "gradient towards the target label (a targeted PGD attack): invisible to you, decisive "
            "for the network. /ideal starts from noise and climbs the same gradient. /explain shows "
            "where in the photo the evidence was (Grad-CAM).",
            f"**Limits**: photos up to {_mb(self.limits.max_bytes)} and "
            f"{self.limits.max_pixels / 1e6:.0f} megapixels.{cooldown}",
        ]
        if self.heavy_disabled:
            lines.append(f"/fool-me, /ideal and /explain are off: {self.heavy_disabled}.")
        return Reply(True, "\n".join(lines), title="petlens: a pet classifier you can poke at")


def _names(labels: list[str]) -> str:
    """"cat and dog", "cat, dog and rabbit", or "37 labels" when there are many."""
    if len(labels) > 6:
        return f"{len(labels)} labels"
    return english_list(labels, "and")


def _accuracy(meta: dict, metrics: dict) -> str | None:
    """"validation accuracy 97.5% (n=400)" from the ONNX metadata or the checkpoint metrics."""
    found: dict = {}
    try:  # the exporter stores the checkpoint's metrics as JSON, and a few of them as keys
        found.update(json.loads(meta.get("metrics") or "{}"))
    except (TypeError, ValueError):
        pass
    found.update({k: v for k, v in meta.items() if k in ("val_accuracy", "accuracy")})
    found.update(metrics)
    for key in ("val_accuracy", "accuracy"):
        try:
            value = float(found[key])
        except (KeyError, TypeError, ValueError):
            continue
        n = found.get("n_val") or found.get("n")
        name = "validation accuracy" if key == "val_accuracy" else "accuracy"
        return f"{name} {value:.1%}" + (f" (n={n})" if n else "")
    return None


# Module-level wrappers put the upload bytes last, as _serve passes them; being top-level
# functions they pickle, so the same calls work with a process pool.
def _classify_job(model_path: str, limits: Limits, data: bytes):
    return work.classify(model_path, data, limits)


def _fool_job(model_path, checkpoint, target, eps, steps, limits, data):
    return work.fool_me(model_path, checkpoint, data, target, eps, steps, limits)


def _explain_job(checkpoint, limits, data):
    return work.explain(checkpoint, data, limits)
