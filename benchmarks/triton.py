"""``python -m benchmarks.triton``: latency through a real Triton server vs local onnxruntime.

Times ``Classifier.probabilities`` on the same preprocessed batches of 1 and 32 with the same
ONNX file, once loaded locally and once through Triton (``Classifier.load(url)``), round-robin
in one run so that load from other processes falls on both alike, and checks that both give the
same probabilities (within 1e-4)::

    python -m benchmarks.triton --model models/catsdogs.onnx                    # starts a server
    python -m benchmarks.triton --model models/catsdogs.onnx --url http://localhost:8000/catsdogs

Without ``--url`` it starts PyPI's ``nvidia-pytriton`` tritonserver on a free loopback port,
serving the python-backend twin of the exported repository (the test harness,
tests/export/tritonserver.py; the wheel has no onnxruntime backend), with the same number of
onnxruntime threads inside the server as the local session gets. The difference is then what
Triton adds: HTTP, the binary tensor encoding, the dynamic batcher's queue delay and the python
backend's hand-off to its stub process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import add_record, record
from benchmarks.inference import cpu_summary, interleaved
from training.cli import UsageError, add_json, add_model, make_parser, positive, run


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = make_parser("python -m benchmarks.triton", "Latency at batch 1 and 32: a real Triton server vs local onnxruntime.",
                         add_help=add_help)
    add_model(parser, aliases=("--onnx",), required=False, default=Path("models/catsdogs.onnx"),
              help="ONNX model exported by python -m export (default: %(default)s)")
    parser.add_argument("--url", help="a model already served by Triton (http://host:8000/<name>); default: start a local server")
    parser.add_argument("--threads", type=positive(int), default=2, help="onnxruntime threads, local and in the server (default: %(default)s)")
    parser.add_argument("--repeat", type=positive(int), default=30, help="timed runs at batch 1; batch 32 uses a third (default: %(default)s)")
    add_json(parser, help="also print the figures as one JSON line")
    return add_record(parser)


def measure(local, remote, repeat: int) -> dict[str, float]:
    """Median milliseconds per call, local vs remote, at batch 1 and 32 (after checking that
    both answer alike)."""
    rng = np.random.default_rng(0)
    x32 = rng.random((32, *local.backend.input_shape), dtype=np.float32)
    x1 = np.ascontiguousarray(x32[:1])
    diff = float(np.abs(remote.probabilities(x32) - local.probabilities(x32)).max())
    if diff > 1e-4:
        raise RuntimeError(f"the server's probabilities differ from the local ones by {diff:.2g}")
    b1 = interleaved({"local": lambda: local.probabilities(x1), "triton": lambda: remote.probabilities(x1)}, repeat)
    b32 = interleaved({"local": lambda: local.probabilities(x32), "triton": lambda: remote.probabilities(x32)}, max(3, repeat // 3))
    return {"local_b1_ms": b1["local"] * 1e3, "triton_b1_ms": b1["triton"] * 1e3,
            "local_b32_ms": b32["local"] * 1e3, "triton_b32_ms": b32["triton"] * 1e3, "max_abs_diff": diff}


def main(args: argparse.Namespace) -> int:
    from export.runtime import CPU, Classifier

    model = Path(args.model)
    if not model.is_file():
        raise UsageError(f"{model} not found (export it first: python -m export --checkpoint C --out M.onnx)")
    local = Classifier.load(model, providers=[CPU], threads=args.threads)
    if args.url:
        figures = measure(local, Classifier.load(args.url), args.repeat)
        where = args.url
    else:
        from export.triton import write_triton_repo
        from tests.export.tritonserver import TritonServer, find_server, python_twin

        files, why = find_server()
        if files is None:
            raise UsageError(why)
        with tempfile.TemporaryDirectory() as tmp:
            exported = write_triton_repo(model, Path(tmp) / "exported")
            python_twin(exported, Path(tmp) / "twin")
            with TritonServer(Path(tmp) / "twin", files, tmp, threads=args.threads) as server:
                figures = measure(local, Classifier.load(f"{server.url}/{exported.name}"), args.repeat)
        where = f"local tritonserver (python-backend twin, {args.threads} onnxruntime threads)"
    print(f"# {cpu_summary()}")
    print(f"# {model} via {where}; median of {args.repeat} (batch 1) / {max(3, args.repeat // 3)} (batch 32) runs")
    print(f"batch  1: local onnxruntime {figures['local_b1_ms']:7.1f} ms | Triton {figures['triton_b1_ms']:7.1f} ms "
          f"(+{figures['triton_b1_ms'] - figures['local_b1_ms']:.1f} ms)")
    print(f"batch 32: local onnxruntime {figures['local_b32_ms']:7.1f} ms | Triton {figures['triton_b32_ms']:7.1f} ms "
          f"(+{figures['triton_b32_ms'] - figures['local_b32_ms']:.1f} ms)")
    print(f"largest probability difference: {figures['max_abs_diff']:.1e}")
    record("triton", {k: round(v, 6) for k, v in figures.items()}, args)
    if args.json:
        print(json.dumps({k: round(v, 6) for k, v in figures.items()}))
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
