"""``python -m benchmarks.triton``: the same model through a real tritonserver vs local onnxruntime.

Starts PyPI's ``nvidia-pytriton`` server on a free loopback port, serving the python-backend
twin of the repository ``python -m export --triton-repo`` writes for ``--model`` (see
tests/export/tritonserver.py: the twin runs the very ONNX file with onnxruntime, since the
wheel has no onnxruntime backend), and times ``Classifier.probabilities`` on batches of 1 and
32 there and locally, interleaved, in one run. Also prints the largest probability
difference. One JSON line with ``--json``.

    python -m benchmarks.triton --model models/catsdogs.onnx --repeat 30 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export.runtime import Classifier
from export.triton import write_triton_repo
from tests.export.tritonserver import TritonServer, find_server, python_twin
from training.cli import UsageError, add_json, add_model, make_parser, positive, run


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = make_parser("python -m benchmarks.triton", "Latency through a real tritonserver vs local onnxruntime.",
                    add_help=add_help)
    add_model(p, required=False, default=Path("models/catsdogs.onnx"), help="exported ONNX model (default: %(default)s)")
    p.add_argument("--repeat", type=positive(int), default=30, help="timed calls per batch size (default: %(default)s)")
    p.add_argument("--threads", type=positive(int), default=2, help="onnxruntime threads, locally and in the server (default: %(default)s)")
    add_json(p, help="also print the figures as one JSON line")
    return p


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(args: argparse.Namespace) -> int:
    model = Path(args.model)
    if not model.is_file():
        raise UsageError(f"{model} not found (export it first: python -m export --checkpoint C --out M.onnx)")
    files, why = find_server()
    if files is None:
        raise UsageError(why)
    local = Classifier.load(model, providers=["CPUExecutionProvider"], threads=args.threads)
    rng = np.random.default_rng(0)
    size = local.image_size
    batches = {n: rng.random((n, 3, size, size), dtype=np.float32) for n in (1, 32)}
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        exported = write_triton_repo(model, Path(tmp) / "exported", name="bench")
        python_twin(exported, Path(tmp) / "twin")
        with TritonServer(Path(tmp) / "twin", files, tmp, threads=args.threads) as server:
            remote = Classifier.load(f"{server.url}/bench")
            for n, x in batches.items():
                figures[f"local_b{n}_ms"] = _median_ms(lambda x=x: local.probabilities(x), args.repeat)
                figures[f"triton_b{n}_ms"] = _median_ms(lambda x=x: remote.probabilities(x), args.repeat)
                figures[f"max_prob_diff_b{n}"] = float(np.abs(remote.probabilities(x) - local.probabilities(x)).max())
    for key, value in figures.items():
        print(f"{key:<20} {value:.3g}")
    if args.json:
        print(json.dumps({k: round(v, 6) for k, v in figures.items()}))
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(get_args_parser(), main, argv, user_errors=(ValueError, OSError, RuntimeError))


if __name__ == "__main__":
    sys.exit(cli())
