"""The one onnxruntime loader: :class:`Classifier` serves every prediction in the product.

One ``InferenceSession`` per model file, created once and shared (``run`` is thread-safe).
Providers: CUDA when onnxruntime has the CUDA provider *and* the machine has a usable
NVIDIA device, else CPU; TensorRT only when asked for explicitly. On a CPU-only machine
with ``onnxruntime-gpu`` installed this means no CUDA provider is ever requested, so no
"Failed to load libcublasLt" errors are logged.

Example::

    from export.runtime import Classifier
    clf = Classifier.load("models/catsdogs.onnx")
    clf.predict("photo.jpg")            # [("cat", 0.97), ("dog", 0.03)]
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from training.presets import CROP_SIZE, preprocess, resize_size_for

from training.images import ImageError, ImageSource, load_image

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
MAX_BATCH = 256  # predict_batch runs bigger lists in chunks of this many


class ModelError(ValueError):
    """A model file that cannot be served; the message says what is wrong."""


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """NVIDIA devices the driver reports, asked of ``libcuda`` directly (no torch import).

    0 when there is no driver library or no device, which is how a CPU machine with
    ``onnxruntime-gpu`` installed is told apart from a GPU machine.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0
    count = ctypes.c_int(0)
    try:
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:
        return 0
    return count.value


def default_providers() -> list[str]:
    """CUDA -> CPU when both onnxruntime and the machine can do CUDA, else CPU alone."""
    if CUDA in ort.get_available_providers() and cuda_device_count() > 0:
        return [CUDA, CPU]
    return [CPU]


def _prepare_cuda() -> None:
    # onnxruntime-gpu finds cuDNN/cuBLAS from the pip `nvidia-*` wheels (or torch) only
    # after preload_dlls; best effort, since a system CUDA install works without it.
    try:
        ort.preload_dlls()
    except Exception:
        pass


def default_threads() -> int:
    """Intra-op threads: the CPUs this process may use (cgroup affinity), at most 8 --
    beyond that a small CNN at batch 1 gains nothing and starves the web server."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """Options for a long-lived server session (see :meth:`Classifier.load`)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a CNN is a chain; parallel mode only adds threads
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    # Spinning worker threads busy-wait after every run: a little lower latency (measured
    # 5.4 vs 7.8 ms best case at batch 1, 2 threads) for whole cores taken from the web
    # server and the torch-side attacks that share the process.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3  # errors only: node-placement notes are not for users
    return so


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Classifier:
    """An ONNX pet classifier with its labels and preprocessing.

    Use :meth:`load`. Attributes: ``labels``, ``metadata`` (the file's metadata_props),
    ``image_size``, ``providers`` (what the session actually runs on), ``session``.
    """

    def __init__(self, session: ort.InferenceSession, labels: list[str], metadata: dict[str, str], path: Path | None = None):
        self.session = session
        self.path = path
        self.metadata = metadata
        self.labels = labels
        self.providers = session.get_providers()
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        outputs = [o.name for o in session.get_outputs()]
        self._outputs = outputs
        # Prefer the in-graph softmax; a logits-only model (exported elsewhere) still works.
        self._output = "probabilities" if "probabilities" in outputs else outputs[0]
        self._apply_softmax = self._output != "probabilities"
        size = metadata.get("image_size") or (inp.shape[-1] if isinstance(inp.shape[-1], int) else CROP_SIZE)
        self.image_size = int(size)
        self.resize_size = int(metadata.get("resize_size") or resize_size_for(self.image_size))
        self._on_cuda = self.providers[0] in (CUDA, TENSORRT)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, providers: Sequence[str] | None = None, threads: int | None = None, spinning: bool = False
    ) -> "Classifier":
        """Open ``path``: an ONNX file exported by ``python -m export``, or the URL of a model
        on a Triton server (``http://host:8000/<model name>``, see :mod:`export.triton_client`).

        ``providers``: onnxruntime execution providers in order of preference; default
        CUDA -> CPU when a GPU is usable, else CPU. Pass e.g.
        ``["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]``
        for TensorRT. ``threads``: intra-op threads (default: usable CPUs, at most 8).
        ``spinning``: let idle worker threads busy-wait (lower latency on a dedicated
        machine; off by default because it takes CPU from everything else in the process).
        Raises :class:`ModelError` for a missing or unreadable file.
        """
        url = re.sub(r"^(https?):/+", r"\1://", str(path))  # Path() collapses "//"
        if url.startswith(("http://", "https://")):
            from .triton_client import TritonClassifier

            return TritonClassifier.connect(url)
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model not found: {path}. Export one with `python -m export --checkpoint C --out {path.name}`.")
        providers = list(providers) if providers else default_providers()
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            raise ModelError(
                f"execution provider(s) {', '.join(unknown)} not available in this onnxruntime; "
                f"available: {', '.join(ort.get_available_providers())}"
            )
        if any(p in (CUDA, TENSORRT) for p in providers):
            if cuda_device_count() == 0:
                raise ModelError(f"{', '.join(p for p in providers if p in (CUDA, TENSORRT))} requested, but no NVIDIA GPU is usable here")
            _prepare_cuda()
        try:
            session = ort.InferenceSession(str(path), sess_options=session_options(threads, spinning), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{path} is not an ONNX model onnxruntime can run ({str(exc).splitlines()[0][:200]})") from exc
        meta = dict(session.get_modelmeta().custom_metadata_map)
        n_out = session.get_outputs()[0].shape[-1]
        try:
            labels = [str(label) for label in json.loads(meta["labels"])]
        except (KeyError, ValueError, TypeError):
            # Exported elsewhere: serve it with numbered classes rather than refuse.
            labels = [f"class_{i}" for i in range(n_out if isinstance(n_out, int) else 0)]
        if isinstance(n_out, int) and len(labels) != n_out:
            raise ModelError(f"{path}: metadata lists {len(labels)} labels but the model has {n_out} outputs")
        return cls(session, labels, meta, path)

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """Decode (safely, see :func:`training.images.load_image`) and preprocess one image to
        float32 ``[3, S, S]`` in [0, 1]. Raises :class:`~training.images.ImageError`."""
        img = load_image(image, min_side=self.resize_size)
        return preprocess(img, self.resize_size, self.image_size)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, C]`` for a preprocessed float32 batch ``[N, 3, S, S]``."""
        batch = np.asarray(batch)
        want = (3, self.image_size, self.image_size)
        if batch.ndim != 4 or batch.shape[1:] != want:
            raise ValueError(f"expected a batch of shape [N, {', '.join(map(str, want))}], got {list(batch.shape)}")
        if len(batch) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = self._infer(np.ascontiguousarray(batch, dtype=np.float32))
        return softmax(out) if self._apply_softmax else out

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """The model's chosen output for a validated float32 batch (subclasses: remote servers)."""
        if self._on_cuda:
            return self._run_bound(batch)
        return self.session.run([self._output], {self.input_name: batch})[0]

    def _run_bound(self, batch: np.ndarray) -> np.ndarray:
        """IO binding on CUDA: one host->device copy of the whole batch, the output
        allocated on the device and copied back once, no intermediate staging copies."""
        binding = self.session.io_binding()  # per call: bindings are not thread-safe
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        binding.bind_output(self._output, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

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

    @functools.cached_property  # read once: assess() runs per request
    def ood_threshold(self) -> float | None:
        """The calibrated "is it a pet?" threshold, or None for a model without an OOD score."""
        if "ood_score" not in getattr(self, "_outputs", ()):  # remote models: no OOD output
            return None
        try:
            return float(json.loads(self.metadata["ood"])["threshold"])
        except (KeyError, ValueError, TypeError):
            return None

    def ood_scores(self, batch: np.ndarray) -> np.ndarray:
        """"Is it a pet?" scores ``[N]`` (higher = less like the training photos) for a
        preprocessed batch; compare with :attr:`ood_threshold`. Needs a model with OOD output."""
        if self.ood_threshold is None:
            raise ModelError("this model has no ood_score output (export it from a calibrated checkpoint)")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(["ood_score"], {self.input_name: batch})[0].reshape(-1)

    def assess(self, image: ImageSource, top_k: int = 3) -> "Assessment":
        """:meth:`predict` plus the out-of-distribution verdict, in one ``session.run``.

        ``is_pet`` is False when the photo looks unlike every training photo (score above
        the threshold calibrated at export time to accept ~95% of real pets); for a model
        exported without OOD statistics ``score``/``threshold``/``is_pet`` are None and the
        photo is treated as a pet. Unusable input raises an ``ImageError``."""
        top_k = self._check_top_k(top_k)
        batch = self.preprocess(image)[None]
        threshold = self.ood_threshold
        if threshold is None or self._on_cuda:
            probs = self.probabilities(batch)[0]
            score = None
            if threshold is not None:  # CUDA path: a second output costs one more small run
                score = float(self.session.run(["ood_score"], {self.input_name: batch})[0][0])
        else:
            out, scores = self.session.run([self._output, "ood_score"], {self.input_name: batch})
            probs = (softmax(out) if self._apply_softmax else out)[0]
            score = float(scores[0])
        is_pet = None if score is None else bool(score <= threshold)
        return Assessment(self._top(probs, top_k), score, threshold, is_pet, tuple(self.labels))

    def __repr__(self) -> str:
        return f"Classifier({self.path}, labels={self.labels}, providers={self.providers})"


def describe_labels(labels: Sequence[str]) -> str:
    """What a model knows, for "This doesn't look like ...": ``["cat", "dog"]`` -> "a cat or
    a dog"; up to four labels are named, more become "any of the 37 pets this model knows"."""
    names = [str(label).replace("_", " ") for label in labels]
    if not names:
        return "anything this model knows"
    if len(names) > 4:
        return f"any of the {len(names)} pets this model knows"
    named = [f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}" for name in names]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + f" or {named[-1]}"


@dataclass(frozen=True)
class Assessment:
    """What :meth:`Classifier.assess` found: ``top`` = ``[(label, prob), ...]``; ``score``
    (higher = less like the training photos), ``threshold`` and ``is_pet`` are None when the
    model carries no OOD score. ``labels``: every label the model knows (for the wording)."""

    top: list[tuple[str, float]]
    score: float | None
    threshold: float | None
    is_pet: bool | None
    labels: tuple[str, ...] = ()

    @property
    def looks_like_training_data(self) -> bool:
        return self.is_pet is not False

    def message(self, describe: str | None = None) -> str | None:
        """The user-facing warning for an out-of-distribution photo, else None: "This doesn't
        look like a cat or a dog — closest guess: dog 61%". ``describe`` overrides what the
        model knows (default: :func:`describe_labels` of ``labels``)."""
        if self.is_pet is not False:
            return None
        label, prob = self.top[0]
        describe = describe or describe_labels(self.labels)
        return f"This doesn't look like {describe} — closest guess: {label} {prob:.0%}"
