"""An NVIDIA Triton Inference Server model repository for an exported model.

Layout (what ``tritonserver --model-repository DIR`` expects)::

    DIR/<name>/config.pbtxt     platform "onnxruntime_onnx", dynamic batching, the model's
                                metadata as parameters "petlens.<key>"
    DIR/<name>/labels.txt       one class name per line (Triton's classification extension)
    DIR/<name>/1/model.onnx     the model, version 1

Serve it with the official container, e.g.::

    docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
        -v $PWD/triton:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
        tritonserver --model-repository=/models
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import onnx

DEFAULT_MAX_BATCH = 32
KINDS = {"auto": None, "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
_ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64",
}


def _tensor_spec(value_info: onnx.ValueInfoProto) -> tuple[str, str, list[int]]:
    """(name, Triton data type, dims without the batch axis) of a graph input/output."""
    tensor = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    dtype = _ONNX_TO_TRITON.get(tensor.elem_type)
    if dtype is None:
        raise ValueError(f"tensor {value_info.name!r} has ONNX type {tensor.elem_type}, which this writer does not map")
    return value_info.name, dtype, dims[1:]


def _block(name: str, dtype: str, dims: list[int], extra: str = "") -> str:
    if not dims:  # a per-image scalar ([N] in ONNX): Triton wants dims [1] reshaped to []
        dims, extra = [1], "    reshape: { shape: [ ] }\n" + extra
    return (
        "  {\n"
        f'    name: "{name}"\n'
        f"    data_type: {dtype}\n"
        f"    dims: [ {', '.join(map(str, dims))} ]\n"
        f"{extra}"
        "  }"
    )


def _pbtxt_string(value: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept as is; quotes, backslashes and
    line breaks escaped)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _parameters(meta: dict[str, str]) -> str:
    """The export's metadata as model-config parameters (``petlens.<key>``): what
    ``export.triton_client`` reads back (image size, OOD threshold, ...), since Triton's
    model metadata has no place for it. Backends ignore parameter keys they do not know."""
    if not meta:
        return ""
    entries = [
        f"  {{ key: {_pbtxt_string('petlens.' + key)} value: {{ string_value: {_pbtxt_string(value)} }} }}"
        for key, value in meta.items()
    ]
    return "# The exported model's metadata, for clients (export.triton_client).\nparameters [\n" + ",\n".join(entries) + "\n]\n"


def config_pbtxt(model: onnx.ModelProto, name: str, *, max_batch_size: int = DEFAULT_MAX_BATCH, kind: str = "auto", count: int = 1, queue_delay_us: int = 2000) -> str:
    """The text of ``config.pbtxt`` for ``model`` (an exported petlens classifier)."""
    meta = {p.key: p.value for p in model.metadata_props}
    inputs = [_tensor_spec(v) for v in model.graph.input]
    outputs = [_tensor_spec(v) for v in model.graph.output]
    label_line = '    label_filename: "labels.txt"\n' if "labels" in meta else ""
    out_blocks = [
        _block(n, t, d, label_line if n == "probabilities" or len(outputs) == 1 else "") for n, t, d in outputs
    ]
    instance = f"    count: {count}\n" + (f"    kind: {KINDS[kind]}\n" if KINDS[kind] else "")
    return (
        f"# {meta.get('arch', 'model')} pet classifier; labels {meta.get('labels', '?')}.\n"
        "# Input: RGB float32 in [0,1], shorter side resized to "
        f"{meta.get('resize_size', 256)} then center-cropped to {meta.get('image_size', 224)} "
        "(normalization is inside the graph).\n"
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n" + ",\n".join(_block(*i) for i in inputs) + "\n]\n"
        "output [\n" + ",\n".join(out_blocks) + "\n]\n"
        "# Requests arriving within the delay are run as one batch (up to max_batch_size).\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n"
        "}\n"
        "instance_group [\n  {\n" + instance + "  }\n]\n"
        + _parameters(meta) +
        "# On a GPU, TensorRT is often faster still; uncomment to let onnxruntime hand the graph to it:\n"
        "# optimization { execution_accelerators { gpu_execution_accelerator: [\n"
        '#   { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }\n'
    )


def write_triton_repo(
    onnx_path: str | os.PathLike,
    repo: str | os.PathLike,
    *,
    name: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    kind: str = "auto",
    version: int = 1,
) -> Path:
    """Copy ``onnx_path`` into ``repo/<name>/<version>/model.onnx`` with its config and
    labels; returns the model folder. ``name`` defaults to the file's stem."""
    onnx_path, repo = Path(onnx_path), Path(repo)
    name = name or onnx_path.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"Triton model name {name!r} must be letters, digits, '_', '.' or '-'")
    if not 1 <= max_batch_size <= 4096:
        raise ValueError(f"max_batch_size must be between 1 and 4096, got {max_batch_size}")
    if kind not in KINDS:
        raise ValueError(f"instance kind must be one of {', '.join(KINDS)}, got {kind!r}")
    model = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props}
    labels = json.loads(meta["labels"]) if "labels" in meta else None
    folder = repo / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    if onnx_path.resolve() != (folder / str(version) / "model.onnx").resolve():
        shutil.copyfile(onnx_path, folder / str(version) / "model.onnx")
    if labels:
        (folder / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    (folder / "config.pbtxt").write_text(config_pbtxt(model, name, max_batch_size=max_batch_size, kind=kind), encoding="utf-8")
    return folder
