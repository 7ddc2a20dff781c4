"""The four operations both surfaces offer, over the deployed classifier and the torch side.

:class:`Service` holds the ONNX ``Classifier`` (``export.runtime``: a local file or a Triton
model) that gives every verdict a user sees, and the *jobs* that change pixels: fool-me, the
ideal image and Grad-CAM. :class:`LocalJobs` runs them in this process with the project's own
torch functions (``training.adversarial.fool``, ``training.ideal.ideal_image``,
``training.explain.explain``); :class:`RemoteJobs` sends the same jobs to a Triton server
(``export.triton_jobs``), and :meth:`Service.connect` puts the classifier there too.

Every result is judged where the user checks it next: the fool-me image and the ideal image
by the deployed classifier, on the 8-bit image itself.

Example::

    service = Service.load("models/catsdogs.onnx", "models/catsdogs.pt")
    photo = service.photo("rex.jpg", heavy=True)
    answer = service.fool(photo)              # the other species, at strength 2/255
    answer.success, answer.summary()
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from .answers import Classified, Dreamed, Explained, Fooled, Unavailable, UserError, choose, server_unavailable
from .photos import Limits, Photo, open_photo

log = logging.getLogger("petlens.service")

STRENGTHS = {"subtle": 1, "normal": 2, "strong": 4}  # fool-me budgets in 8-bit grey levels
MAX_STRENGTH = 16  # beyond this the change starts to show

Progress = Callable[..., None] | None


class ConfigError(ValueError):
    """The operator's setup is unusable (missing model, labels that do not match, ...)."""


class LocalJobs:
    """Fool-me, ideal image and explain in this process, on one torch checkpoint.

    The model is loaded once per thread: Grad-CAM registers hooks on it, and two concurrent
    jobs must never see each other's."""

    def __init__(self, checkpoint: str | Path):
        self.checkpoint = str(checkpoint)
        self._local = threading.local()

    def model(self):
        """``(model, labels)`` for this thread."""
        if getattr(self._local, "model", None) is None:
            from training.checkpoint import load_checkpoint

            model, labels = load_checkpoint(self.checkpoint)
            model.requires_grad_(False)  # attacks and Grad-CAM differentiate w.r.t. the input only
            self._local.model = (model, labels)
        return self._local.model

    def fool(self, image: Image.Image, target: str, *, eps: float, steps: int | None, robust: bool = False,
             progress: Progress = None):
        from training.adversarial import fool

        model, labels = self.model()
        return fool(model, labels, image, target, eps=eps, steps=steps, robust=robust, max_side=max(image.size),
                    progress=progress)

    def ideal(self, label: str, *, steps: int | None, size: int | None, seed: int = 0,
              progress: Progress = None) -> Image.Image:
        from training.ideal import ideal_image

        model, labels = self.model()
        return ideal_image(model, labels, label, steps=steps, size=size, seed=seed, progress=progress)

    def explain(self, image: Image.Image, *, label: str | None = None):
        from training.explain import explain

        model, labels = self.model()
        return explain(model, labels, image, label=label)


class RemoteJobs:
    """The same three jobs on a Triton server (``export.triton_jobs.TritonJobs``), each call
    bounded by ``timeout`` seconds (the server drops a job whose caller gave up).

    Progress is only "sent" and "back": the work happens elsewhere. A ``progress`` callback
    that raises (a caller that stopped waiting) stops the job before it is sent."""

    def __init__(self, url: str, *, timeout: float):
        from export.triton_jobs import TritonJobs

        self.client = TritonJobs(url, timeout=timeout)
        self.url, self.timeout = self.client.url, timeout

    def check(self) -> RemoteJobs:
        self.client.check()
        return self

    def fool(self, image: Image.Image, target: str, *, eps: float, steps: int | None, robust: bool = False,
             progress: Progress = None):
        with _reported(progress):
            return self.client.fool(image, target, eps=eps, steps=steps, robust=robust)

    def ideal(self, label: str, *, steps: int | None, size: int | None, seed: int = 0,
              progress: Progress = None) -> Image.Image:
        with _reported(progress):
            return self.client.ideal(label, steps=steps, size=size, seed=seed)

    def explain(self, image: Image.Image, *, label: str | None = None):
        return self.client.explain(image, label=label)

    def __repr__(self) -> str:
        return f"RemoteJobs({self.url}, timeout={self.timeout:g} s)"


@contextlib.contextmanager
def _reported(progress: Progress) -> Iterator[None]:
    if progress is not None:
        progress(0, 1)
    yield
    if progress is not None:
        progress(1, 1)


def split_server(url: str, default_model: str = "catsdogs") -> tuple[str, str]:
    """``"http://host:8000"`` -> ``("http://host:8000", "catsdogs")``;
    ``"http://host:8000/pets"`` -> ``("http://host:8000", "pets")``. Raises :class:`ConfigError`."""
    m = re.fullmatch(r"(https?://[^/\s]+)/*([A-Za-z0-9_.-]*)/*", str(url).strip())
    if not m:
        raise ConfigError(f"--server {url!r} is not a Triton server URL; expected http://host:8000 "
                          "(or http://host:8000/<classifier model name>)")
    return m.group(1), m.group(2) or default_model


class Service:
    """classify, fool-me, ideal image and explain for one deployed model.

    ``classifier``: an ``export.runtime.Classifier``; ``jobs``: what runs the torch jobs
    (:class:`LocalJobs`, or None: the heavy operations are off and say why, ``heavy_disabled``);
    ``limits``: what a photo may be; ``fool_steps``/``ideal_steps``/``ideal_size``: the jobs'
    settings (None: the library defaults).
    """

    def __init__(self, classifier, jobs: Any = None, *, limits: Limits = Limits(), fool_steps: int | None = None,
                 ideal_steps: int | None = None, ideal_size: int | None = None, heavy_disabled: str | None = None):
        self.classifier = classifier
        self.labels: list[str] = list(classifier.labels)
        self.jobs = jobs
        self.limits = limits
        self.fool_steps, self.ideal_steps, self.ideal_size = fool_steps, ideal_steps, ideal_size
        self.heavy_disabled = heavy_disabled if jobs is None else None
        if jobs is None and self.heavy_disabled is None:
            self.heavy_disabled = "this service runs without a torch checkpoint"

    @classmethod
    def connect(cls, server: str, *, timeout: float = 120.0, **options: Any) -> Service:
        """The service on a Triton server that ``python -m export --triton-repo`` filled: the
        classifier (``http://host:8000/<name>``, default ``catsdogs``) and the torch job
        models, each call bounded by ``timeout`` seconds. Raises :class:`ConfigError` naming
        what is missing when the server is down or lacks a model."""
        from export.runtime import Classifier

        url, name = split_server(server)
        try:
            classifier = Classifier.load(f"{url}/{name}")
            jobs = RemoteJobs(url, timeout=timeout).check()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--server {server}: {exc}") from exc
        return cls(classifier, jobs, **options)

    @classmethod
    def load(cls, model: str | Path, checkpoint: str | Path | None, **options: Any) -> Service:
        """The service on an ONNX file (or Triton URL) and its torch checkpoint (None: no heavy
        jobs). Raises :class:`ConfigError` naming the file and the fix."""
        from export.runtime import Classifier

        try:
            classifier = Classifier.load(model)
        except (OSError, ValueError) as exc:  # the loader's message usually names the file already
            raise ConfigError(str(exc) if str(model) in str(exc) else f"cannot load {model}: {exc}") from exc
        jobs = None
        if checkpoint is not None:
            from training.checkpoint import read_checkpoint

            try:
                labels = list(read_checkpoint(checkpoint)["config"]["labels"])
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(str(exc)) from exc
            if labels != list(classifier.labels):
                raise ConfigError(f"{checkpoint} has labels {labels} but {model} has {list(classifier.labels)}; "
                                  "export the ONNX model from this checkpoint (python -m export) or pass the matching pair.")
            jobs = LocalJobs(checkpoint)
        return cls(classifier, jobs, **options)

    # --- photos ---------------------------------------------------------------------------

    def photo(self, source, *, name: str | None = None, heavy: bool = False) -> Photo:
        """Decode a user's photo under this service's limits (see :func:`service.photos.open_photo`)."""
        return open_photo(source, name=name, limits=self.limits, heavy=heavy)

    def _require_jobs(self, what: str) -> None:
        if self.jobs is None:
            raise UserError(f"{what} is not available: {self.heavy_disabled}. Classify still works.")

    @contextlib.contextmanager
    def _served(self, what: str) -> Iterator[None]:
        """A model server that fails (down, overloaded, misconfigured: ``ModelError``) becomes
        :class:`Unavailable` for the user; the operator's log gets the server's own words."""
        from export.backend import ModelError

        try:
            yield
        except ModelError as exc:
            log.warning("%s failed on the model server: %s", what, exc)
            raise Unavailable(server_unavailable(what)) from exc

    # --- the operations -----------------------------------------------------------------------

    def classify(self, photo: Photo | Image.Image, top_k: int = 3) -> Classified:
        """The deployed classifier's top-k and its verdict on one photo."""
        image = photo.image if isinstance(photo, Photo) else photo
        with self._served("Classify"):
            return Classified.of(self.classifier.assess(image, top_k=top_k))

    def check_label(self, label: str) -> str:
        """``label`` as the model spells it, or a :class:`UserError` naming the choices."""
        return choose(label, self.labels)

    def check_target(self, target: str | None) -> str | None:
        return None if target in (None, "") else choose(target, self.labels, "target")

    def check_strength(self, strength: int | float | str) -> int:
        """A fool-me budget in grey levels: a number 1-16 or one of :data:`STRENGTHS`' names."""
        if isinstance(strength, str) and strength.strip().lower() in STRENGTHS:
            return STRENGTHS[strength.strip().lower()]
        try:
            levels = float(strength)
        except (TypeError, ValueError):
            levels = float("nan")
        if not (1 <= levels <= MAX_STRENGTH and levels == int(levels)):
            names = ", ".join(f"{k} ({v})" for k, v in STRENGTHS.items())
            raise UserError(f"strength must be a whole number of 1/255 steps from 1 to {MAX_STRENGTH}, or one of "
                            f"{names}; got {strength!r}.")
        return int(levels)

    def fool(self, photo: Photo, target: str | None = None, strength: int | str = "normal", *, robust: bool = False,
             progress: Progress = None) -> Fooled:
        """Change ``photo`` by at most ``strength``/255 per colour value until the deployed
        classifier's whole verdict is ``target`` (default: the most likely other label)."""
        self._require_jobs("Fool me")
        target, levels = self.check_target(target), self.check_strength(strength)
        source = self.classify(photo, top_k=len(self.labels))
        target = target or source.top[1][0]
        common = dict(source=source, target=target, strength=levels, name=photo.name, original_size=photo.original_size)
        if source.label == target:
            return Fooled(**common)
        with self._served("Fool me"):
            r = self.jobs.fool(photo.image, target, eps=levels / 255, steps=self.fool_steps, robust=robust,
                               progress=progress)
        reshared = {how: Classified([(v.label, v.prob)], v.pet_verdict, source.labels)
                    for how, v in (r.reshared or {}).items() if how != "png"}
        return Fooled(**common, result=self.classify(r.image), image=r.image, linf=round(r.linf * 255),
                      steps=int(r.steps), seconds=float(r.seconds), reshared=reshared)

    def ideal(self, label: str, *, seed: int = 0, progress: Progress = None) -> Dreamed:
        """The image the network finds the most ``label``-like, judged by the deployed classifier."""
        self._require_jobs("The ideal image")
        label = choose(label, self.labels)
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise UserError(f"the seed must be a whole number, got {seed!r}.") from None
        start = time.perf_counter()
        with self._served("The ideal image"):
            image = self.jobs.ideal(label, steps=self.ideal_steps, size=self.ideal_size, seed=seed, progress=progress)
            prob = dict(self.classifier.predict(image, top_k=len(self.labels)))[label]
        from training.optvis import DEFAULT_STEPS

        return Dreamed(label, image, float(prob), self.ideal_steps or DEFAULT_STEPS, time.perf_counter() - start, seed)

    def explain(self, photo: Photo, label: str | None = None) -> Explained:
        """Where the evidence is: Grad-CAM for ``label`` (default: the deployed answer's label)."""
        self._require_jobs("Explain")
        label = None if label in (None, "") else choose(label, self.labels)
        source = self.classify(photo)
        with self._served("Explain"):
            e = self.jobs.explain(photo.image, label=label or source.label)
        return Explained(source, e.label, float(e.prob), e.overlay, dict(e.grids), float(e.seconds), photo.name)
