"""The local backend: one onnxruntime ``InferenceSession`` per model file.

Created once and shared (``run`` is thread-safe). Providers: CUDA when onnxruntime has the
CUDA provider *and* the machine has a usable NVIDIA device, else CPU; TensorRT only when
asked for explicitly. On a CPU-only machine with ``onnxruntime-gpu`` installed this means no
CUDA provider is ever requested, so no "Failed to load libcublasLt" errors are logged.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from training.presets import CROP_SIZE
from training.sniff import file_kind

from .backend import ModelError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


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
    """Options for a long-lived server session (see :meth:`OnnxBackend.open`)."""
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


def _refuse_non_onnx(path: Path) -> None:
    """A torch checkpoint, a photo or an empty file where the ONNX model goes, in words
    (onnxruntime would say 'INVALID_PROTOBUF : ... Protobuf parsing failed')."""
    kind = file_kind(path)
    if kind == "torch":
        onnx = path.with_suffix(".onnx")
        if onnx == path:
            onnx = path.with_name(f"{path.stem}-exported.onnx")
        raise ModelError(f"{path} is a torch checkpoint; this needs the ONNX model exported from it: "
                         f"`python -m export --checkpoint {path} --out {onnx}`")
    if kind == "empty":
        raise ModelError(f"{path} is empty (0 bytes), not an ONNX model")
    if kind not in ("onnx", "other"):
        raise ModelError(f"{path} is a {kind} image, not an ONNX model; give the model, e.g. models/catsdogs.onnx")


class OnnxBackend:
    """An ONNX file in onnxruntime (see :class:`export.backend.Backend`). Use :meth:`open`.
    ``session`` is the ``InferenceSession``, ``input_name`` its one input."""

    def __init__(self, session: ort.InferenceSession, labels: list[str], metadata: dict[str, str]):
        self.session = session
        self.labels = labels
        self.metadata = metadata
        self.providers = session.get_providers()
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        side = inp.shape[-1] if isinstance(inp.shape[-1], int) else int(metadata.get("image_size") or CROP_SIZE)
        self.input_shape = (3, side, side)
        self.outputs = tuple(o.name for o in session.get_outputs())
        self._on_cuda = self.providers[0] in (CUDA, TENSORRT)

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, providers: Sequence[str] | None = None, threads: int | None = None, spinning: bool = False
    ) -> OnnxBackend:
        """Open the ONNX file ``path`` (arguments: see :meth:`export.runtime.Classifier.load`).
        Raises :class:`ModelError` for a missing or unreadable file or an unusable provider."""
        path = Path(path)
        if path.is_dir():
            raise ModelError(f"{path} is a folder; give the ONNX model file, e.g. models/catsdogs.onnx")
        if not path.is_file():
            raise ModelError(f"model not found: {path}. Export one with `python -m export --checkpoint C --out {path.name}`.")
        _refuse_non_onnx(path)
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
            if "INVALID_PROTOBUF" in str(exc):  # not ONNX at all: its parser's words would not help
                raise ModelError(f"{path} is not an ONNX model; give one written by `python -m export`, "
                                 "e.g. models/catsdogs.onnx") from exc
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
        return cls(session, labels, meta)

    def run(self, names: Sequence[str], batch: np.ndarray) -> list[np.ndarray]:
        """``session.run`` of ``names``; on CUDA through IO binding (one host->device copy of
        the batch, outputs allocated on the device and copied back once)."""
        if not self._on_cuda:
            return self.session.run(list(names), {self.input_name: batch})
        binding = self.session.io_binding()  # per call: bindings are not thread-safe
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        for name in names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def __repr__(self) -> str:
        return f"OnnxBackend(providers={self.providers})"
