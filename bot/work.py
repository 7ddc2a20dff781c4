"""What runs in the bot's worker pools: one :class:`service.Service` per process, and a job per command.

Plain functions over bytes and a picklable :class:`Spec`, returning the service's answer and the
PNG to send, so the same code runs in a worker thread or a worker process. Nothing here knows
about Discord or asyncio; everything a user reads comes from :mod:`service.answers`.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from service import Limits, Service
from service.jobs import LocalJobs

_lock = threading.Lock()
_services: dict[Spec, Service] = {}


@dataclass(frozen=True)
class Spec:
    """Everything a worker needs to build its :class:`Service`."""

    model: str
    checkpoint: str | None
    limits: Limits = Limits()
    fool_steps: int | None = None
    ideal_steps: int | None = None
    heavy_disabled: str | None = None
    server: str | None = None  # a Triton server for everything (model and checkpoint unused)
    job_timeout: float = 600.0  # seconds a job may take on the server


def service(spec: Spec) -> Service:
    """The service for ``spec``, built once per process (the ONNX session is thread-safe; the
    torch model is loaded once per thread by :class:`~service.jobs.LocalJobs`)."""
    with _lock:
        if spec not in _services:
            from export.runtime import Classifier

            settings = dict(limits=spec.limits, fool_steps=spec.fool_steps, ideal_steps=spec.ideal_steps)
            if spec.server:
                _services[spec] = Service.connect(spec.server, timeout=spec.job_timeout, **settings)
            else:
                jobs = LocalJobs(spec.checkpoint) if spec.checkpoint else None
                _services[spec] = Service(Classifier.load(spec.model), jobs, heavy_disabled=spec.heavy_disabled,
                                          **settings)
        return _services[spec]


def warm(spec: Spec, torch_threads: int, heavy: bool) -> None:
    """Pool initializer: size torch's thread pool and load the models before the first job."""
    svc = service(spec)
    if heavy and isinstance(svc.jobs, LocalJobs):
        import torch

        # Several jobs run side by side; a share of the cores each avoids oversubscribing them.
        torch.set_num_threads(max(1, torch_threads))
        svc.jobs.model()
        # Import the heavy commands' modules here too: a first import (compiling .py files,
        # holding the GIL) inside the first /fool-me would stall the event loop for ~0.5 s.
        import training.adversarial
        import training.explain
        import training.ideal  # noqa: F401


def default_torch_threads(concurrent_jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, concurrent_jobs))


def png_bytes(img: Image.Image) -> bytes:
    """Lossless 8-bit PNG: an adversarial change of 1/255 would not survive JPEG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


# --- one job per command: (answer, PNG to send or None) ------------------------------------

def classify(spec: Spec, data: bytes, filename: str):
    svc = service(spec)
    return svc.classify(svc.photo(data, name=filename)), None


def fool_me(spec: Spec, data: bytes, filename: str, target: str | None, strength: str, cancel=None):
    svc = service(spec)
    answer = svc.fool(svc.photo(data, name=filename, heavy=True), target, strength, progress=_stop_on(cancel))
    return answer, None if answer.image is None else png_bytes(answer.image)


def ideal(spec: Spec, label: str, cancel=None):
    answer = service(spec).ideal(label, progress=_stop_on(cancel))
    return answer, png_bytes(answer.image)


def explain(spec: Spec, data: bytes, filename: str, cancel=None):
    svc = service(spec)
    answer = svc.explain(svc.photo(data, name=filename, heavy=True))
    return answer, png_bytes(answer.overlay)


class Cancelled(Exception):
    """The job's caller stopped waiting (its time ran out)."""


def _stop_on(cancel: threading.Event | None):
    """A progress callback that stops the job at its next step once ``cancel`` is set."""
    if cancel is None:
        return None

    def progress(*_args) -> None:
        if cancel.is_set():
            raise Cancelled
    return progress


def checkpoint_labels(path: str | Path) -> list[str]:
    from training.checkpoint import read_checkpoint

    return list(read_checkpoint(path)["config"]["labels"])
