"""The one :class:`Classifier` serving every prediction in the product.

It owns decoding, the one preprocessing, softmax, top-k and the "is it a pet?" verdict, over
a backend that runs the model (:class:`export.backend.Backend`): a local ONNX file in
onnxruntime (:mod:`export.onnx_backend`) or a model on a Triton server
(:mod:`export.triton_client`). ``Classifier.load`` picks one from what it is given.

Example::

    from export.runtime import Classifier
    clf = Classifier.load("models/catsdogs.onnx")          # or "http://localhost:8000/catsdogs"
    clf.predict("photo.jpg")            # [("cat", 0.97), ("dog", 0.03)]
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.images import ImageError, ImageSource, load_image
from training.presets import CROP_SIZE, preprocess, resize_size_for
from training.verdict import verdict

from .backend import Backend, ModelError
from .onnx_backend import CPU, CUDA, TENSORRT, OnnxBackend, cuda_device_count, default_providers, default_threads, session_options
from .triton_client import TritonBackend

__all__ = [
    "CPU", "CUDA", "TENSORRT", "MAX_BATCH", "Assessment", "Classifier", "ModelError",
    "cuda_device_count", "default_providers", "default_threads", "session_options", "softmax",
]

MAX_BATCH = 256  # predict_batch runs bigger lists in chunks of this many


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Classifier:
    """A pet classifier: labels, preprocessing and predictions over one backend.

    Use :meth:`load`. Attributes: ``labels``, ``metadata`` (the model's metadata_props),
    ``image_size``, ``resize_size``, ``providers`` (where the model actually runs),
    ``backend`` (an :class:`~export.onnx_backend.OnnxBackend` or
    :class:`~export.triton_client.TritonBackend`), ``path`` (the file or URL it came from),
    ``ood_threshold`` and ``ood_refuse_threshold`` (:mod:`training.verdict`).
    """

    def __init__(self, backend: Backend, path: str | Path | None = None):
        self.backend = backend
        self.path = path
        self.labels = list(backend.labels)
        self.metadata = dict(backend.metadata)
        self.providers = list(backend.providers)
        outputs = backend.outputs
        # Prefer the in-graph softmax; a logits-only model (exported elsewhere) still works.
        self.output = "probabilities" if "probabilities" in outputs else outputs[0]
        self._apply_softmax = self.output != "probabilities"
        self.image_size = int(self.metadata.get("image_size") or backend.input_shape[-1] or CROP_SIZE)
        self.resize_size = int(self.metadata.get("resize_size") or resize_size_for(self.image_size))
        self.ood_threshold = _ood_threshold(self.metadata) if "ood_score" in outputs else None
        self.ood_refuse_threshold = _ood_threshold(self.metadata, "refuse_threshold") if self.ood_threshold is not None else None

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, providers: Sequence[str] | None = None, threads: int | None = None, spinning: bool = False
    ) -> Classifier:
        """Open ``path``: an ONNX file exported by ``python -m export``, or the URL of a model
        on a Triton server (``http://host:8000/<model name>``, see :mod:`export.triton_client`).

        ``providers``: onnxruntime execution providers in order of preference; default
        CUDA -> CPU when a GPU is usable, else CPU. Pass e.g.
        ``["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]``
        for TensorRT. ``threads``: intra-op threads (default: usable CPUs, at most 8).
        ``spinning``: let idle worker threads busy-wait (lower latency on a dedicated
        machine; off by default because it takes CPU from everything else in the process).
        The three are for local files; a Triton server has its own settings.
        Raises :class:`ModelError` for a missing or unreadable file, or a server that is
        down, does not have the model ready, or serves one not shaped like an export.
        """
        url = re.sub(r"^(https?):/+", r"\1://", str(path))  # Path() collapses "//"
        if url.startswith(("http://", "https://")):
            return cls(TritonBackend.connect(url), url)
        return cls(OnnxBackend.open(path, providers=providers, threads=threads, spinning=spinning), Path(path))

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """Decode (safely, see :func:`training.images.load_image`) and preprocess one image to
        float32 ``[3, S, S]`` in [0, 1]. Raises :class:`~training.images.ImageError`."""
        img = load_image(image, min_side=self.resize_size)
        return preprocess(img, self.resize_size, self.image_size)

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        want = (3, self.image_size, self.image_size)
        if batch.ndim != 4 or batch.shape[1:] != want:
            raise ValueError(f"expected a batch of shape [N, {', '.join(map(str, want))}], got {list(batch.shape)}")
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _probs(self, out: np.ndarray) -> np.ndarray:
        return softmax(out) if self._apply_softmax else out

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, C]`` for a preprocessed float32 batch ``[N, 3, S, S]``."""
        batch = self._check_batch(batch)
        if len(batch) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._probs(self.backend.run([self.output], batch)[0])

    def _top(self, probs: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        order = np.argsort(-probs, kind="stable")[:top_k]
        return [(self.labels[i], float(probs[i])) for i in order]

    def _check_top_k(self, top_k: int) -> int:
        if not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        return min(int(top_k), len(self.labels))

    def predict(self, image: ImageSource, top_k: int = 3) -> list[tuple[str, float]]:
        """``[(label, probability), ...]`` for one image (path, bytes, file object or PIL
        image), most probable first. Unusable input raises an ``ImageError`` (a
        ``ValueError``) whose message can be shown to the user."""
        top_k = self._check_top_k(top_k)
        probs = self.probabilities(self.preprocess(image)[None])[0]
        return self._top(probs, top_k)

    def predict_batch(self, images: Sequence[ImageSource], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """:meth:`predict` for many images, run as batches; any unusable image raises
        its ``ImageError`` (with the position in the list prepended)."""
        top_k = self._check_top_k(top_k)
        results: list[list[tuple[str, float]]] = []
        for start in range(0, len(images), MAX_BATCH):
            chunk = []
            for i, image in enumerate(images[start : start + MAX_BATCH], start):
                try:
                    chunk.append(self.preprocess(image))
                except ImageError as exc:
                    raise type(exc)(f"image {i + 1} of {len(images)}: {exc}") from exc
            probs = self.probabilities(np.stack(chunk))
            results.extend(self._top(p, top_k) for p in probs)
        return results

    def ood_scores(self, batch: np.ndarray) -> np.ndarray:
        """"Is it a pet?" scores ``[N]`` (higher = less like the training photos) for a
        preprocessed batch; compare with :attr:`ood_threshold`. Needs a model with OOD output."""
        if self.ood_threshold is None:
            raise ModelError("this model has no ood_score output (export it from a calibrated checkpoint)")
        return self.backend.run(["ood_score"], self._check_batch(batch))[0].reshape(-1)

    def assess(self, image: ImageSource, top_k: int = 3) -> Assessment:
        """:meth:`predict` plus the out-of-distribution verdict, from one model run.

        ``verdict`` is ``"pet"`` (score under the threshold calibrated to give ~95% of real pets
        the plain answer), ``"unsure"`` (under the second one, ~98%: probably a pet, but unlike
        the training photos) or ``"not_pet"`` (:mod:`training.verdict`); ``is_pet`` is True for
        ``"pet"`` alone. For a model exported without OOD statistics ``score``/``threshold``/
        ``is_pet``/``verdict`` are None and the photo is treated as a pet. Unusable input
        raises an ``ImageError``."""
        top_k = self._check_top_k(top_k)
        batch = self.preprocess(image)[None]
        threshold = self.ood_threshold
        if threshold is None:
            probs, score, is_pet = self.probabilities(batch)[0], None, None
        else:
            out, scores = self.backend.run([self.output, "ood_score"], batch)
            probs, score = self._probs(out)[0], float(scores.reshape(-1)[0])
            is_pet = bool(score <= threshold)
        return Assessment(self._top(probs, top_k), score, threshold, is_pet, tuple(self.labels),
                          self.ood_refuse_threshold if threshold is not None else None)

    def __repr__(self) -> str:
        return f"Classifier({self.path}, labels={self.labels}, providers={self.providers})"


def _ood_threshold(metadata: dict[str, str], key: str = "threshold") -> float | None:
    """A calibrated "is it a pet?" threshold (``key``) from the metadata, or None."""
    try:
        return float(json.loads(metadata["ood"])[key])
    except (KeyError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class Assessment:
    """What :meth:`Classifier.assess` found: ``top`` = ``[(label, prob), ...]``; ``score``
    (higher = less like the training photos), ``threshold`` and ``is_pet`` are None when the
    model carries no OOD score. ``labels``: every label the model knows (for the wording).
    ``refuse_threshold``: above it "not a pet", between the two "unsure" (None: a model
    calibrated before the middle answer, which answers "pet" or "not a pet")."""

    top: list[tuple[str, float]]
    score: float | None
    threshold: float | None
    is_pet: bool | None
    labels: tuple[str, ...] = ()
    refuse_threshold: float | None = None

    @property
    def verdict(self) -> str | None:
        """``"pet"``, ``"unsure"``, ``"not_pet"`` (:mod:`training.verdict`), or None without a score."""
        if self.score is None or self.threshold is None:
            return None
        return verdict(self.score, self.threshold, self.refuse_threshold)
