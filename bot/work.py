"""The compute behind the commands: what runs in the worker pools.

Plain functions over bytes and strings that return plain, picklable data, so the very same
code runs in a worker thread or a worker process. Nothing here knows about Discord or
asyncio.

Models are loaded lazily and cached: the ONNX ``Classifier`` once per process
(``InferenceSession.run`` is thread-safe), the torch model once per *thread*, because
Grad-CAM registers hooks on the model and two concurrent jobs must never see each other's.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from training.images import load_image
from training.presets import RESIZE_SIZE

from .config import Limits

_lock = threading.Lock()
_classifiers: dict[str, object] = {}
_local = threading.local()


class UserError(ValueError):
    """A request that cannot be served as asked; ``str(err)`` is meant for the user."""


# --- models -----------------------------------------------------------------------------

def classifier(path: str | Path):
    """The ONNX ``Classifier`` for ``path``, loaded once per process."""
    key = str(path)
    with _lock:
        if key not in _classifiers:
            from export.runtime import Classifier

            _classifiers[key] = Classifier.load(key)
        return _classifiers[key]


def torch_model(path: str | Path):
    """``(model, labels)`` from a checkpoint, loaded once per worker thread."""
    cache = _local.__dict__.setdefault("models", {})
    key = str(path)
    if key not in cache:
        from training.checkpoint import load_checkpoint

        model, labels = load_checkpoint(key)
        model.requires_grad_(False)  # attacks and Grad-CAM differentiate w.r.t. the input only
        cache[key] = (model, labels)
    return cache[key]


def warm(model_path: str, checkpoint: str | None, torch_threads: int) -> None:
    """Pool initializer: size torch's thread pool and load the models before the first job."""
    if checkpoint:
        import torch

        # Several jobs run side by side; one intra-op thread each avoids oversubscribing cores.
        torch.set_num_threads(max(1, torch_threads))
        torch_model(checkpoint)
        # Import the heavy commands' modules here too: a first import (compiling .py files,
        # holding the GIL) inside the first /fool-me would stall the event loop for ~0.5 s.
        import training.adversarial
        import training.explain
        import training.ideal  # noqa: F401
    classifier(model_path)


def default_torch_threads(concurrent_jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, concurrent_jobs))


# --- images -----------------------------------------------------------------------------

def decode(data: bytes, limits: Limits, min_side: int | None = None) -> Image.Image:
    """The one door for uploads: ``training.images.load_image`` under the bot's limits."""
    return load_image(data, min_side=min_side, max_pixels=limits.max_pixels, max_bytes=limits.max_bytes)


def png_bytes(img: Image.Image) -> bytes:
    """Lossless 8-bit PNG: an adversarial perturbation of 1/255 would not survive JPEG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def fit(img: Image.Image, max_side: int) -> Image.Image:
    if max(img.size) <= max_side:
        return img
    img = img.copy()
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def check_label(label: str, labels: list[str], what: str = "label") -> str:
    match = {name.lower(): name for name in labels}.get(label.strip().lower())
    if match is None:
        raise UserError(f"unknown {what} {label!r}; choose one of: {', '.join(labels)}.")
    return match


# --- commands ---------------------------------------------------------------------------

def classify(model_path: str, data: bytes, limits: Limits, top_k: int = 3):
    """Top-k ``(label, probability)`` and the "is it a pet?" verdict for an uploaded photo:
    an ``export.runtime.Assessment`` (``is_pet`` None for a model without an OOD score)."""
    img = decode(data, limits, min_side=RESIZE_SIZE)  # big JPEGs decode at reduced scale
    return classifier(model_path).assess(img, top_k=top_k)


@dataclass
class FoolOutput:
    png: bytes
    target: str
    before: tuple[str, float]  # ONNX classifier on the upload
    after: tuple[str, float]  # ONNX classifier on the PNG we send back, not on a float tensor
    linf: float
    steps: int
    seconds: float
    size: tuple[int, int]
    is_pet: bool | None = None  # the same run's "is it a pet?" verdict on that PNG (None: not judged)
    verdict: str | None = None  # "pet", "unsure" or "not_pet" (training.verdict); None: not judged

    @property
    def success(self) -> bool:
        """What /classify will say of the PNG: the target label, and a pet."""
        return self.after[0] == self.target and self.is_pet is not False


def fool_me(model_path: str, checkpoint: str, data: bytes, target: str | None, eps: float,
            steps: int | None, limits: Limits) -> FoolOutput:
    """Nudge the photo, within ``eps`` per pixel, until the network calls it ``target``."""
    from training.adversarial import fool

    clf = classifier(model_path)
    img = decode(data, limits, min_side=limits.max_output_side)
    ranked = clf.predict(img, top_k=len(clf.labels))
    before = (ranked[0][0], float(ranked[0][1]))
    if target is None:  # the most plausible other label: the easiest lie to tell
        target = ranked[1][0]
    target = check_label(target, clf.labels, "target")
    if target == before[0]:
        others = ", ".join(name for name in clf.labels if name != target)
        raise UserError(
            f"the network already sees a {target} here ({before[1]:.0%}). Pick another target: {others}."
        )
    model, labels = torch_model(checkpoint)
    result = fool(model, labels, img, target, eps=eps, steps=steps, max_side=limits.max_output_side)
    png = png_bytes(result.image)
    verdict = clf.assess(png, top_k=1)  # the whole verdict /classify gives, on the very PNG
    after = verdict.top[0]
    return FoolOutput(png=png, target=target, before=before, after=(after[0], float(after[1])),
                      linf=float(result.linf), steps=int(result.steps), seconds=float(result.seconds),
                      size=result.image.size, is_pet=verdict.is_pet, verdict=verdict.verdict)


@dataclass
class IdealOutput:
    png: bytes
    label: str
    judged: tuple[str, float]  # what the ONNX classifier makes of the PNG


def ideal(model_path: str, checkpoint: str, label: str, steps: int | None) -> IdealOutput:
    """The image that excites ``label`` the most, judged again by the ONNX classifier."""
    from training.ideal import ideal_image

    clf = classifier(model_path)
    label = check_label(label, clf.labels)
    model, labels = torch_model(checkpoint)
    png = png_bytes(ideal_image(model, labels, label, steps=steps))
    judged = clf.predict(png, top_k=1)[0]
    return IdealOutput(png=png, label=label, judged=(judged[0], float(judged[1])))


@dataclass
class ExplainOutput:
    png: bytes
    label: str
    prob: float
    seconds: float


def explain(checkpoint: str, data: bytes, limits: Limits) -> ExplainOutput:
    """Grad-CAM overlay for the predicted label, at most ``max_output_side`` pixels wide."""
    from training.explain import explain as grad_cam

    img = decode(data, limits, min_side=limits.max_output_side)
    model, labels = torch_model(checkpoint)
    e = grad_cam(model, labels, img)
    return ExplainOutput(png=png_bytes(fit(e.overlay.convert("RGB"), limits.max_output_side)),
                         label=e.label, prob=float(e.prob), seconds=float(e.seconds))
