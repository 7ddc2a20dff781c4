"""``python -m benchmarks.heavy_jobs``: N concurrent fool-me jobs, in-process pool vs Triton.

The same N photos, the same attack settings, on one machine in one run:

- **in-process**: a ``ThreadPoolExecutor`` of ``--workers`` threads running
  :func:`training.adversarial.fool`, as the bot's heavy pool does (``bot/work.py``: 2 workers,
  ``cpu_count // workers`` torch threads each, the model loaded once, no parameter grads);
- **Triton**: N clients at once against the ``petlens_fool`` model (python backend, dynamic
  batching: requests that arrive together share one ``execute()`` and one attack loop,
  :func:`training.adversarial.fool_batch`), as many instances as the pool has workers, the
  same torch threads each (on a busy CPU, more threads per process than cores free make
  OpenMP spin: 1 thread per job runner measured fastest here).

Every job is submitted at t=0; latency is submission to result, throughput N / wall time.
Photos: ``--photos DIR`` or generated (``--size``, default 1024x768, a downscaled phone
photo); each photo's target is the label the model does not give it, so every job attacks::

    python -m benchmarks.heavy_jobs --checkpoint models/catsdogs.pt -N 1 8 32 --json

Without ``--url`` it starts PyPI's ``nvidia-pytriton`` tritonserver on a free loopback port
(tests/export/tritonserver.py) serving the repository ``export.triton.write_job_models`` writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from benchmarks import add_record, record
from benchmarks.inference import cpu_summary
from training.cli import UsageError, add_json, add_model, make_parser, positive, run


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = make_parser("python -m benchmarks.heavy_jobs",
                         "N concurrent fool-me jobs: the bot's in-process pool vs a Triton server with dynamic batching.",
                         add_help=add_help)
    add_model(parser, aliases=("--checkpoint",), required=False, default=Path("models/catsdogs.pt"),
              help="checkpoint (.pt) (default: %(default)s)")
    parser.add_argument("-N", "--concurrency", type=positive(int), nargs="+", default=[1, 8, 32],
                        help="numbers of jobs submitted at once (default: 1 8 32)")
    parser.add_argument("--photos", type=Path, metavar="DIR", help="photos to attack (default: generated ones)")
    parser.add_argument("--size", default="1024x768", help="WxH of generated photos (default: %(default)s)")
    parser.add_argument("--steps", type=positive(int), default=50, help="most attack steps per job (default: %(default)s)")
    parser.add_argument("--eps", type=float, default=2 / 255, help="L-inf budget (default: 2/255)")
    parser.add_argument("--workers", type=positive(int), default=2, help="in-process pool threads, as the bot's --max-heavy (default: %(default)s)")
    parser.add_argument("--threads", type=positive(int), default=os.cpu_count() or 1,
                        help="torch threads in all, split among the pool's workers and among the Triton instances alike (default: %(default)s)")
    parser.add_argument("--instances", type=positive(int), default=None,
                        help="Triton instances of petlens_fool (default: --workers, so both sides run as many jobs side by side)")
    parser.add_argument("--max-batch-size", type=positive(int), default=8, help="the Triton model's max_batch_size (default: %(default)s)")
    parser.add_argument("--url", help="a Triton server already serving petlens_fool for this checkpoint (default: start one)")
    add_json(parser, help="also print the figures as one JSON line")
    return add_record(parser)


def generated_photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like image (smooth background, a few soft blobs and some grain) of ``size``."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(40, 220, (max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8)
    image = Image.fromarray(small, "RGB").resize(size, Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        r = int(rng.integers(min(w, h) // 8, min(w, h) // 3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(max(1, min(w, h) // 150)))
    grain = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8), "RGB")


def load_photos(args: argparse.Namespace, n: int) -> list[Image.Image]:
    if args.photos:
        from training.images import image_files, load_image

        files = image_files(args.photos, limit=n)
        if not files:
            raise UsageError(f"no photos in {args.photos}")
        return [load_image(files[i % len(files)]) for i in range(n)]
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must be WxH, e.g. 1024x768, got {args.size!r}") from None
    return [generated_photo(i, (w, h)) for i in range(n)]


def summarize(latencies: list[float], wall: float, results) -> dict:
    lat = np.asarray(latencies)
    return {"jobs_per_s": round(len(lat) / wall, 4), "wall_s": round(wall, 3), "p50_s": round(float(np.percentile(lat, 50)), 3),
            "p99_s": round(float(np.percentile(lat, 99)), 3), "success": round(float(np.mean([r.success for r in results])), 3)}


def timed(submit, jobs: list, pool_size: int) -> dict:
    """Submit every job at once to a pool of ``pool_size`` threads; latency per job from t=0."""
    start = time.perf_counter()

    def one(job):
        result = submit(*job)
        return result, time.perf_counter() - start

    with ThreadPoolExecutor(pool_size) as pool:
        done = list(pool.map(one, jobs))
    return summarize([t for _, t in done], time.perf_counter() - start, [r for r, _ in done])


def measure(args: argparse.Namespace, url: str, model, labels, photos: list[Image.Image], targets: list[str]) -> list[dict]:
    from export.triton_jobs import TritonJobs
    from training.adversarial import fool

    remote = TritonJobs(url, timeout=3600).check(jobs=("fool",))
    local = lambda photo, target: fool(model, labels, photo, target, eps=args.eps, steps=args.steps)
    served = lambda photo, target: remote.fool(photo, target, eps=args.eps, steps=args.steps)
    local(photos[0], targets[0])  # warm both (first-call allocations, the stub's imports)
    served(photos[0], targets[0])
    runs = []
    for n in args.concurrency:
        jobs = list(zip(photos[:n], targets[:n]))
        row = {"n": n, "inprocess": timed(local, jobs, args.workers), "triton": timed(served, jobs, n)}
        row["speedup"] = round(row["triton"]["jobs_per_s"] / row["inprocess"]["jobs_per_s"], 3)
        print(f"N={n:3d}: in-process {row['inprocess']['jobs_per_s']:.3f} jobs/s (p50 {row['inprocess']['p50_s']:.1f} s, "
              f"p99 {row['inprocess']['p99_s']:.1f} s) | Triton {row['triton']['jobs_per_s']:.3f} jobs/s "
              f"(p50 {row['triton']['p50_s']:.1f} s, p99 {row['triton']['p99_s']:.1f} s) | x{row['speedup']:.2f}", flush=True)
        runs.append(row)
    return runs


def main(args: argparse.Namespace) -> int:
    import torch

    from training import load_checkpoint
    from training.adversarial import check_eps
    from training.ideal import label_probability

    checkpoint = Path(args.model)
    if not checkpoint.is_file():
        raise UsageError(f"{checkpoint} not found (train one with python -m training, or use models/catsdogs.pt)")
    check_eps(args.eps)
    instances = args.instances or args.workers
    torch.set_num_threads(max(1, args.threads // args.workers))  # as the bot's pool: cores split among workers
    model, labels = load_checkpoint(checkpoint)
    model.requires_grad_(False)  # as the bot: attacks differentiate w.r.t. the input only
    photos = load_photos(args, max(args.concurrency))
    # Each photo's target: the label the model does not give it, so every job really attacks.
    targets = [min(labels, key=lambda label, p=p: label_probability(model, labels, p, label)) for p in photos]
    if args.url:
        runs = measure(args, args.url, model, labels, photos, targets)
        where = args.url
    else:
        from export.triton import write_job_models
        from tests.export.tritonserver import TritonServer, find_server

        files, why = find_server()
        if files is None:
            raise UsageError(why)
        with tempfile.TemporaryDirectory() as tmp:
            write_job_models(checkpoint, Path(tmp) / "repo", jobs=("fool",), kind="cpu", count=instances,
                             threads=max(1, args.threads // instances), max_batch_size=args.max_batch_size)
            with TritonServer(Path(tmp) / "repo", files, tmp).start(timeout=600) as server:
                runs = measure(args, server.url, model, labels, photos, targets)
        where = (f"local tritonserver (python backend, {instances} instance(s) x {max(1, args.threads // instances)} torch "
                 f"threads, max_batch_size {args.max_batch_size})")
    report = {"cpu": cpu_summary(), "checkpoint": str(checkpoint), "photo_size": list(photos[0].size), "steps": args.steps,
              "eps": round(args.eps, 6), "workers": args.workers, "threads": args.threads, "instances": instances, "server": where, "runs": runs}
    print(f"# {report['cpu']}; {checkpoint}; photos {photos[0].width}x{photos[0].height}; steps <= {args.steps}; "
          f"in-process: {args.workers} workers x {max(1, args.threads // args.workers)} torch threads; Triton: {where}")
    record("heavy_jobs", report, args)
    if args.json:
        print(json.dumps(report))
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
