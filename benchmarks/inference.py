"""``python -m benchmarks.inference``: how fast and how faithful the deployed models are.

Prints one table: latency of torch eager vs onnxruntime fp32 vs int8 at batch 1 and 32,
end-to-end ``Classifier.predict`` from a file vs the bare ``session.run`` it wraps,
accuracy of fp32 vs int8 on a labelled folder, and the largest probability difference
between the ``.pt`` checkpoint and the ``.onnx`` file on those real photos.

    python -m benchmarks.inference --checkpoint models/catsdogs.pt --onnx models/catsdogs.onnx \\
        --int8 models/catsdogs-int8.onnx --data ../shared/data/catsdogs/val

``--sweep-int8 --calibration DIR`` also quantizes the fp32 model with several settings
(format, per-channel, reduce-range, activation type, pre-processing) and reports each one's
latency and accuracy on this CPU. Timings are medians over ``--repeat`` runs after warm-up,
taken round-robin across the engines compared so background load hits each alike;
on a busy machine they are inflated, so the load average is printed with them (``--stat
min`` reports the best run instead, closer to what a quiet machine gives).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import add_record, record
from training.cli import UsageError, add_device, add_model, make_parser, positive, resolve_device, run

STAT = {"median": np.median, "min": np.min}


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, stat: str = "median", warmup: int = 2) -> dict[str, float]:
    """Seconds per call of each function, timed round-robin so that load from other
    processes falls on all of them alike (timing one after the other would not)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(STAT[stat](t)) for name, t in times.items()}


def cpu_summary() -> str:
    model, flags = platform.processor() or "cpu", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "cpu", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} CPUs, {' '.join(isa) or 'no AVX2'}; load average {load:.1f}"


def labelled_files(root: Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    """``root/<label>/*`` for the model's labels (folders named otherwise are ignored)."""
    from training.images import image_files

    files, ys = [], []
    for y, label in enumerate(labels):
        if (root / label).is_dir():
            found = image_files(root / label)
            files += found
            ys += [y] * len(found)
    if not files:
        raise UsageError(f"{root} has no class folders named {labels}")
    return files, np.array(ys)


def accuracy(clf, batch: np.ndarray, ys: np.ndarray) -> float:
    probs = np.concatenate([clf.probabilities(batch[i : i + 64]) for i in range(0, len(batch), 64)])
    return float((probs.argmax(1) == ys).mean())


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = make_parser("python -m benchmarks.inference", "Latency and accuracy of torch vs onnxruntime fp32 vs int8.",
                         add_help=add_help)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/catsdogs.pt"), help="torch checkpoint (default: %(default)s)")
    add_model(parser, aliases=("--onnx",), required=False, default=Path("models/catsdogs.onnx"),
              help="fp32 ONNX model (default: %(default)s)")
    parser.add_argument("--int8", type=Path, default=Path("models/catsdogs-int8.onnx"), help="int8 ONNX model (default: %(default)s; skipped if missing)")
    parser.add_argument("--data", type=Path, required=True, help="labelled photos: DIR/<label>/* (e.g. a dataset's val/ folder)")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and onnxruntime (default: the Classifier's default)")
    parser.add_argument("--repeat", type=positive(int), default=30, help="timed runs per batch-1 measurement; batch 32 uses a third (default: %(default)s)")
    parser.add_argument("--stat", choices=sorted(STAT), default="median",
                        help="per-measurement statistic; 'min' approximates a quiet machine when others share the CPU (default: %(default)s)")
    parser.add_argument("--spinning", action="store_true", help="let onnxruntime's idle threads busy-wait (lower latency, more CPU)")
    add_device(parser, what="cuda: torch on the GPU and onnxruntime's CUDA provider (IO binding)")
    parser.add_argument("--sweep-int8", action="store_true", help="also quantize --onnx with several settings and time each (needs --calibration)")
    parser.add_argument("--calibration", type=Path, help="photos for --sweep-int8 calibration (e.g. a dataset's train/ folder)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return add_record(parser)


def main(args: argparse.Namespace) -> int:
    import torch

    from export.runtime import CPU, CUDA, Classifier, ModelError, default_threads
    from training import load_checkpoint, read_checkpoint
    from training.ood import ClassifierWithOOD, ood_scorer_from_checkpoint

    args.model = Path(args.model)
    for path in (args.checkpoint, args.model):
        if not path.is_file():
            raise UsageError(f"{path} not found (export it first: python -m export --checkpoint C --out M.onnx)")
    args.device = resolve_device(args.device).type
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    providers = [CPU]
    if args.device == "cuda":
        if CUDA in __import__("onnxruntime").get_available_providers():
            providers = [CUDA, CPU]
        else:
            print("note: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu); "
                  "torch runs on the GPU, onnxruntime on the CPU", file=sys.stderr)
        # fp32 means fp32: cuDNN's default TF32 convolutions move probabilities by ~1e-2.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device)
    model, labels = load_checkpoint(args.checkpoint, device=device)
    # torch does the same work as the ONNX graph: with the OOD score (and its reference blocks) when it has one.
    scorer = ood_scorer_from_checkpoint(read_checkpoint(args.checkpoint))
    net = ClassifierWithOOD(model, scorer).to(device).eval() if scorer is not None else model
    try:
        fp32 = Classifier.load(args.model, providers=providers, threads=threads, spinning=args.spinning)
        int8 = Classifier.load(args.int8, providers=[CPU], threads=threads, spinning=args.spinning) if args.int8 and args.int8.is_file() else None
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    files, ys = labelled_files(args.data, labels)
    batch = np.stack([fp32.preprocess(f) for f in files])
    x1, x32 = batch[:1], np.resize(batch, (32, *batch.shape[1:]))
    rows: list[tuple[str, str]] = []
    figures: dict[str, float] = {}

    def torch_run(x: np.ndarray):
        with torch.inference_mode():
            out = net(torch.from_numpy(x).to(device))
            return out[0].cpu() if isinstance(out, tuple) else out.cpu()  # includes the device sync on CUDA

    # Latency, the three engines interleaved.
    where = "torch cuda, ort cpu" if args.device == "cuda" and providers[0] != CUDA else args.device
    for bs, x, rep in ((1, x1, args.repeat), (32, x32, max(3, args.repeat // 3))):
        fns = {"torch": lambda x=x: torch_run(x), "ort_fp32": lambda x=x: fp32.probabilities(x)}
        if int8:
            fns["ort_int8"] = lambda x=x: int8.probabilities(x)
        for name, sec in interleaved(fns, rep, stat=args.stat).items():
            figures[f"{name}_b{bs}_ms"] = sec * 1e3
        line = f"torch {figures[f'torch_b{bs}_ms']:.1f} | ort fp32 {figures[f'ort_fp32_b{bs}_ms']:.1f}"
        line += f" | ort int8 {figures[f'ort_int8_b{bs}_ms']:.1f}" if int8 else ""
        line += f"  (ort {figures[f'torch_b{bs}_ms'] / figures[f'ort_fp32_b{bs}_ms']:.1f}x torch"
        line += f", int8 {figures[f'ort_fp32_b{bs}_ms'] / figures[f'ort_int8_b{bs}_ms']:.2f}x fp32)" if int8 else ")"
        rows.append((f"latency batch {bs} (ms, {where})", line))

    # End to end: decode + preprocess + run + top-k from a file vs the bare session.run.
    photo = files[0]
    e2e_times = interleaved({"bare": lambda: fp32.backend.session.run([fp32.output], {fp32.backend.input_name: x1}),
                             "e2e": lambda: fp32.predict(photo)}, args.repeat, stat=args.stat)
    bare, e2e = e2e_times["bare"] * 1e3, e2e_times["e2e"] * 1e3
    figures.update(bare_run_ms=bare, predict_file_ms=e2e)
    from PIL import Image

    with Image.open(photo) as im:
        size = f"{im.width}x{im.height}"
    rows.append(("predict(file) vs session.run (ms)", f"{e2e:.1f} vs {bare:.1f} ({e2e / bare:.2f}x; {size} JPEG)"))

    # Accuracy and parity.
    figures["acc_fp32"] = accuracy(fp32, batch, ys)
    acc = f"fp32 {figures['acc_fp32']:.1%}"
    if int8:
        figures["acc_int8"] = accuracy(int8, batch, ys)
        acc += f" | int8 {figures['acc_int8']:.1%} ({(figures['acc_int8'] - figures['acc_fp32']) * 100:+.1f} points)"
    rows.append((f"accuracy on {args.data} ({len(files)} photos)", acc))
    with torch.inference_mode():
        ref = np.concatenate([torch.softmax(torch_run(batch[i : i + 32]), 1).numpy() for i in range(0, len(batch), 32)])
    got = np.concatenate([fp32.probabilities(batch[i : i + 32]) for i in range(0, len(batch), 32)])
    figures["max_prob_diff_pt_onnx"] = float(np.abs(ref - got).max())
    rows.append((".pt vs .onnx max |prob diff|", f"{figures['max_prob_diff_pt_onnx']:.1e} over {len(files)} photos"))

    if args.sweep_int8:
        rows += sweep_int8(args, fp32, batch, ys, x1, x32, threads)

    width = max(len(k) for k, _ in rows)
    print(f"# {cpu_summary()}; {threads} threads, spinning {'on' if args.spinning else 'off'}; providers {fp32.providers}; {args.stat} of runs")
    print(f"# torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, {args.model.name}")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    record("inference", {k: round(v, 6) for k, v in figures.items()}, args)
    if args.json:
        print(json.dumps({k: round(v, 6) for k, v in figures.items()}))
    return 0


def sweep_int8(args, fp32, batch, ys, x1, x32, threads) -> list[tuple[str, str]]:
    """Quantize with each setting and measure; returns table rows."""
    from export.quantize import QuantSettings, quantize_int8
    from export.runtime import CPU, Classifier

    if not args.calibration:
        raise UsageError("--sweep-int8 needs --calibration DIR")
    variants = {
        "QDQ per-channel U8S8, 7 float convs (default)": QuantSettings(),
        "QDQ per-channel U8S8, all convs int8": QuantSettings(float_convs=0),
        "QDQ per-channel U8S8, 4 float convs": QuantSettings(float_convs=4),
        "QDQ per-channel U8S8, no pre-process": QuantSettings(pre_process=False),
        "QOperator per-channel U8S8": QuantSettings(format="qoperator"),
        "QDQ per-channel U8S8 reduce-range": QuantSettings(reduce_range=True),
        "QDQ per-channel S8S8": QuantSettings(activation="int8"),
        "QOperator per-channel U8U8": QuantSettings(format="qoperator", weight="uint8"),
        "QDQ per-tensor U8S8": QuantSettings(per_channel=False),
        "QDQ per-channel U8S8 percentile": QuantSettings(method="percentile"),
    }
    rows = [("int8 sweep: fp32 reference", f"acc {accuracy(fp32, batch, ys):.1%}; speed-ups below are timed interleaved with it")]
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in variants.items():
            out = Path(tmp) / "q.onnx"
            try:
                rep = quantize_int8(args.model, out, args.calibration, settings=settings, min_agreement=0.0)
            except Exception as exc:  # report and go on: the sweep is for comparing
                rows.append((f"int8 sweep: {name}", f"failed: {exc}"))
                continue
            q = Classifier.load(out, providers=[CPU], threads=threads, spinning=args.spinning)
            b1 = interleaved({"f": lambda: fp32.probabilities(x1), "q": lambda q=q: q.probabilities(x1)}, args.repeat, stat=args.stat)
            b32 = interleaved({"f": lambda: fp32.probabilities(x32), "q": lambda q=q: q.probabilities(x32)}, max(3, args.repeat // 3), stat=args.stat)
            rows.append((f"int8 sweep: {name}", f"b1 {b1['q'] * 1e3:.1f} ms ({b1['f'] / b1['q']:.2f}x) | b32 {b32['q'] * 1e3:.0f} ms "
                         f"({b32['f'] / b32['q']:.2f}x) | acc {accuracy(q, batch, ys):.1%} | agree {rep.agreement:.1%}"))
            print(f"  {name}: done", file=sys.stderr, flush=True)
    return rows


def cli(argv: list[str] | None = None) -> int:
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
