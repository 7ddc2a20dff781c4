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


# --- the torch jobs (fool-me, ideal image, Grad-CAM) as python-backend models ---------------

# The python backend's model.py for every job model: it puts the project (and, for a venv, its
# site-packages) on the stub's sys.path, loads the checkpoint beside it once, and hands each
# batch of requests to export.jobs.run_jobs. The stub runs an isolated interpreter
# (PYTHONPATH is ignored), hence petlens.sys_path / PETLENS_STUB_PATH.
JOB_MODEL_PY = '''"""A petlens torch job on Triton's python backend (written by export.triton.write_job_models)."""
import os as _os, sys as _sys  # noqa: E401 -- before anything imports numpy: see the venv's packages first
_sys.path[:0] = [p for p in _os.environ.get("PETLENS_STUB_PATH", "").split(_os.pathsep) if p and p not in _sys.path]

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k[len("petlens."):]: v["string_value"] for k, v in (config.get("parameters") or {}).items()
                  if k.startswith("petlens.")}
        _sys.path[:0] = [p for p in params.get("sys_path", "").split(_os.pathsep) if p and p not in _sys.path]
        import torch

        from export.jobs import INPUTS, OUTPUTS, JobLimits
        from training import load_checkpoint

        if int(params.get("threads", "0")) > 0:
            torch.set_num_threads(int(params["threads"]))
        gpu = args.get("model_instance_kind") == "GPU"
        device = torch.device("cuda", int(args.get("model_instance_device_id") or 0)) if gpu else torch.device("cpu")
        checkpoint = _os.path.join(args["model_repository"], args["model_version"], params.get("checkpoint", "model.pt"))
        self.model, self.labels = load_checkpoint(checkpoint, device=device)
        self.model.requires_grad_(False)  # the jobs differentiate w.r.t. the input only
        self.job, self.limits = params["job"], JobLimits.from_params(params)
        self.input, self.outputs = INPUTS[self.job], OUTPUTS[self.job]

    def _request(self, request, arrived):
        from export.jobs import JobRequest

        options = json.loads(request.parameters() or "{}")
        budget = options.pop("timeout_s", None)
        data = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input)).tobytes()
        cancelled = getattr(request, "is_cancelled", lambda: False)
        return JobRequest(data, options, arrived + float(budget) if budget else float("inf"), cancelled)

    def execute(self, requests):
        from export.jobs import run_jobs

        arrived = time.monotonic()
        outcomes = run_jobs(self.job, self.model, self.labels, self.limits, [self._request(r, arrived) for r in requests])
        responses = []
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(outcome.wire())))
                continue
            # from_dlpack of a writable copy: the stub is built for numpy < 2 (see export.jobs).
            tensors = [pb_utils.Tensor.from_dlpack(n, np.frombuffer(outcome[n], np.uint8)[None].copy()) for n in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''

JOB_MAX_BATCH = 8


def job_config_pbtxt(job: str, labels: list[str], *, params: dict[str, str], max_batch_size: int = JOB_MAX_BATCH,
                     kind: str = "auto", count: int = 1, queue_delay_us: int = 20000) -> str:
    """The text of ``config.pbtxt`` for the python-backend model of ``job`` (fool, ideal, explain)."""
    from .jobs import INPUTS, MODEL_NAMES, OUTPUTS

    blob = "    data_type: TYPE_UINT8\n    dims: [ -1 ]\n"
    inputs = f'  {{\n    name: "{INPUTS[job]}"\n{blob}    allow_ragged_batch: true\n  }}'
    outputs = ",\n".join(f'  {{\n    name: "{name}"\n{blob}  }}' for name in OUTPUTS[job])
    instance = f"    count: {count}\n" + (f"    kind: {KINDS[kind]}\n" if KINDS[kind] else "")
    return (
        f"# petlens {job} job (torch, training.*), for labels {json.dumps(labels)}.\n"
        "# Blobs are UINT8 [-1] (encoded photo / UTF-8 label in; PNGs and a JSON result out);\n"
        "# options are request parameters; see export/jobs.py.\n"
        f'name: "{MODEL_NAMES[job]}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n" + inputs + "\n]\n"
        "output [\n" + outputs + "\n]\n"
        "# Requests arriving within the delay share one execute() call (fool-me: one attack loop).\n"
        "# A request that waited longer than its own timeout (tritonclient's timeout=) is rejected.\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n"
        "  default_queue_policy { timeout_action: REJECT allow_timeout_override: true }\n"
        "}\n"
        "instance_group [\n  {\n" + instance + "  }\n]\n"
        "# The job, the checkpoint beside model.py, where the stub finds the project, and the limits.\n"
        "parameters [\n" + ",\n".join(
            f"  {{ key: {_pbtxt_string('petlens.' + k)} value: {{ string_value: {_pbtxt_string(v)} }} }}" for k, v in params.items()
        ) + "\n]\n"
    )


def default_sys_path() -> list[str]:
    """Where this interpreter finds the project and its packages (what a stub on this machine
    needs); a container with petlens installed needs none."""
    import site

    return [str(Path(__file__).resolve().parents[1]), *site.getsitepackages()]


def write_job_models(
    checkpoint: str | os.PathLike,
    repo: str | os.PathLike,
    *,
    jobs: tuple[str, ...] = ("fool", "ideal", "explain"),
    kind: str = "auto",
    count: int = 1,
    max_batch_size: int = JOB_MAX_BATCH,
    limits=None,
    sys_path: list[str] | None = None,
    threads: int = 0,
) -> list[Path]:
    """Write ``repo/petlens_<job>/`` for each job: ``config.pbtxt`` (python backend, dynamic
    batching, ``petlens.*`` limits), ``1/model.py`` and ``1/model.pt`` (a copy of ``checkpoint``).
    ``sys_path``: folders the server's python stub must see (default :func:`default_sys_path`;
    ``[]`` where petlens is installed in the server's Python). ``threads``: torch threads per
    instance (0: torch's default). Returns the model folders."""
    from training import read_checkpoint

    from .jobs import JOBS, MODEL_NAMES, JobLimits

    checkpoint, repo = Path(checkpoint), Path(repo)
    bad = [j for j in jobs if j not in JOBS]
    if bad:
        raise ValueError(f"unknown job {bad[0]!r}; choose from {', '.join(JOBS)}")
    if kind not in KINDS:
        raise ValueError(f"instance kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 1 <= max_batch_size <= 64:
        raise ValueError(f"max_batch_size for the jobs must be between 1 and 64, got {max_batch_size}")
    labels = list(read_checkpoint(checkpoint)["config"]["labels"])
    limits = limits or JobLimits()
    paths = default_sys_path() if sys_path is None else list(sys_path)
    folders = []
    for job in jobs:
        folder = repo / MODEL_NAMES[job]
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint, folder / "1" / "model.pt")
        (folder / "1" / "model.py").write_text(JOB_MODEL_PY, encoding="utf-8")
        params = {"job": job, "checkpoint": "model.pt", "labels": json.dumps(labels), "sys_path": os.pathsep.join(paths),
                  "threads": str(threads), **limits.as_params()}
        config = job_config_pbtxt(job, labels, params=params, max_batch_size=max_batch_size, kind=kind, count=count)
        (folder / "config.pbtxt").write_text(config, encoding="utf-8")
        folders.append(folder)
    return folders
