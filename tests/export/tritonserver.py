"""A real Triton Inference Server for the tests, from PyPI's ``nvidia-pytriton`` wheel.

The wheel ships ``tritonserver`` and its python backend, but no onnxruntime backend. So the
server runs the torch job models (``petlens_fool``, ...: python backend already) as written, and a *twin* of the repository ``python -m export --triton-repo`` writes: the same
``config.pbtxt`` except ``backend: "python"`` in place of ``platform: "onnxruntime_onnx"``,
the same ``labels.txt`` and ``model.onnx``, plus a ``model.py`` that runs that file with
onnxruntime. Everything the server checks -- the config, dims and reshapes against what the
model returns, dynamic batching, the classification extension -- is Triton's own code.

Serve an exported model by hand (what ``benchmarks/triton.py`` measures against)::

    python -m tests.export.tritonserver models/catsdogs.onnx     # prints the model's URL
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import importlib.metadata
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The stub runs an isolated interpreter (PyConfig_InitIsolatedConfig): PYTHONPATH is ignored
# and only the base Python's site-packages is seen. Whichever of model.py and
# triton_python_backend_utils.py the stub imports first puts this venv ahead of it.
STUB_PATH_FIX = """\
import os as _os, sys as _sys  # petlens tests: see the venv's numpy and onnxruntime first
_sys.path[:0] = [p for p in _os.environ.get("PETLENS_STUB_PATH", "").split(_os.pathsep) if p and p not in _sys.path]
"""

# The twin's model: one onnxruntime session, every request of a dynamic batch in one run.
MODEL_PY = STUB_PATH_FIX + '''
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("PETLENS_TWIN_THREADS", "2"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = config["input"][0]["name"]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        batches = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input)) for r in requests]
        results = self.session.run(self.outputs, {self.input: np.concatenate(batches)})
        responses, start = [], 0
        for batch in batches:
            stop = start + len(batch)
            # from_dlpack, not Tensor(name, array): the stub is built for numpy < 2 and, under
            # numpy 2, Tensor(name, array) answers shape-correct tensors with no bytes in them.
            tensors = [pb_utils.Tensor.from_dlpack(n, np.ascontiguousarray(r[start:stop])) for n, r in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses
'''


@dataclass(frozen=True)
class ServerFiles:
    """Where the wheel put the server binary, its libraries and the python backend."""

    binary: Path
    libs: Path
    backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python


def find_server() -> tuple[ServerFiles | None, str]:
    """The installed server's files, or (None, why the real-server tests must skip)."""
    try:
        dist = importlib.metadata.distribution("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        return None, "nvidia-pytriton is not installed (pip install --no-deps nvidia-pytriton)"
    root = Path(dist.locate_file("pytriton")) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    files = ServerFiles(
        binary=root / "bin" / "tritonserver",
        libs=Path(dist.locate_file("nvidia_pytriton.libs")),
        backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    missing = [str(p) for p in (files.binary, files.libs, files.backend, files.stub) if not p.exists()]
    if missing:
        return None, f"nvidia-pytriton lacks {', '.join(missing)} (no stub for Python {version}?)"
    if not sys.platform.startswith("linux"):
        return None, "the nvidia-pytriton server runs on Linux only"
    return files, ""


def python_twin(model_dir: str | os.PathLike, repo: str | os.PathLike) -> Path:
    """Copy the exported ``model_dir`` (``<repo>/<name>``) into ``repo`` as its python-backend
    twin; returns the twin's model folder. Only the platform line of the config changes."""
    model_dir, repo = Path(model_dir), Path(repo)
    twin = repo / model_dir.name
    shutil.copytree(model_dir, twin, dirs_exist_ok=True)
    config = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    twin_config, n = re.subn(r'^platform: "onnxruntime_onnx"$', 'backend: "python"', config, flags=re.M)
    if n != 1:
        raise ValueError(f"{model_dir / 'config.pbtxt'} has no platform line to swap")
    (twin / "config.pbtxt").write_text(twin_config, encoding="utf-8")
    for version in (p for p in twin.iterdir() if p.is_dir() and p.name.isdigit()):
        (version / "model.py").write_text(MODEL_PY, encoding="utf-8")
    return twin


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies (a killed
    pytest must not leave a server behind; atexit does not run on SIGKILL or SIGTERM)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """``tritonserver`` on a free loopback port serving ``repo``; a context manager.

    ``url``: ``http://127.0.0.1:<port>``. :meth:`stop` is idempotent and also runs at exit,
    so a failing test session never leaves a server behind."""

    def __init__(self, repo: str | os.PathLike, files: ServerFiles, workdir: str | os.PathLike, *, threads: int = 2):
        self.repo, self.files, self.workdir, self.threads = Path(repo), files, Path(workdir), threads
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "tritonserver.log"
        self.url = ""

    def _backends(self) -> Path:
        """A backend directory holding the python backend and this Python's stub (which the
        backend looks for beside its library)."""
        backends = self.workdir / "backends"
        python = backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for f in self.files.backend.iterdir():
            if f.is_file():
                shutil.copy2(f, python / f.name)
        shutil.copy2(self.files.stub, python / self.files.stub.name)
        # See STUB_PATH_FIX: this venv first, before the utilities import numpy.
        utils = python / "triton_python_backend_utils.py"
        utils.write_text(STUB_PATH_FIX + utils.read_text(encoding="utf-8"), encoding="utf-8")
        return backends

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The copied binaries no longer find the wheel's libraries by RPATH; the stub embeds
        # libpython, which must be this interpreter's (same build, same site-packages ABI).
        libs = [str(self.files.libs)]
        if sysconfig.get_config_var("Py_ENABLE_SHARED"):
            libs.insert(0, str(sysconfig.get_config_var("LIBDIR")))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        env["PETLENS_STUB_PATH"] = os.pathsep.join(site.getsitepackages())
        env["PETLENS_TWIN_THREADS"] = str(self.threads)
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU tests: no GPU probing in the server
        return env

    def start(self, timeout: float = 120.0, models: Sequence[str] | None = None, *, only: bool = False) -> TritonServer:
        """Start and wait until ready: the whole server, or when ``models`` is given, just
        those models (then the others may fail to load, as a test of that wants). ``only``:
        load nothing but ``models`` (a quick server beside the repository's heavier models)."""
        port = _free_port()
        strict = "true" if models is None else "false"
        cmd = [
            str(self.files.binary), f"--model-repository={self.repo}", f"--backend-directory={self._backends()}",
            "--http-address=127.0.0.1", f"--http-port={port}", "--allow-grpc=false", "--allow-metrics=false",
            f"--exit-on-error={strict}", f"--strict-readiness={strict}", "--exit-timeout-secs=5", "--log-verbose=0",
        ]
        if only and models:
            cmd += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                                         start_new_session=True, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        self.url = f"http://127.0.0.1:{port}"
        waiting = [f"{self.url}/v2/health/ready"] if models is None else [f"{self.url}/v2/models/{m}/ready" for m in models]
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with status {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(waiting[0], timeout=2) as resp:
                    if resp.status == 200:
                        waiting.pop(0)
                        continue
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        if waiting:
            self.stop()
            raise RuntimeError(f"tritonserver not ready after {timeout:.0f} s ({waiting[0]}):\n{self.log_text()}")
        return self

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL the whole process group (server and stubs)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        # A server whose exit timeout expires (a client still connected) leaves its python
        # backend stubs running; they are still in its process group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_text(self) -> str:
        """The server's error lines (what a failed start or a 500 was about)."""
        if not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("E") or "Error" in line]
        return "\n".join(errors or lines[-20:])[-4000:]

    def __enter__(self) -> TritonServer:
        return self if self.proc else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an exported ONNX model's python-backend twin on a real tritonserver.")
    parser.add_argument("onnx", type=Path, help="ONNX file exported by python -m export")
    parser.add_argument("--name", help="model name (default: the file's stem)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads inside the twin (default: %(default)s)")
    args = parser.parse_args(argv)
    files, why = find_server()
    if files is None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    from export.triton import write_triton_repo

    with tempfile.TemporaryDirectory() as tmp:
        exported = write_triton_repo(args.onnx, Path(tmp) / "exported", name=args.name)
        python_twin(exported, Path(tmp) / "twin")
        with TritonServer(Path(tmp) / "twin", files, tmp, threads=args.threads) as server:
            print(f"{server.url}/{exported.name}", flush=True)
            try:
                server.proc.wait()
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
