"""Benchmark /fool-me and ideal images the way users get them: 8-bit files judged by ONNX.

    python -m benchmarks.attacks --checkpoint models/catsdogs.pt --data DIR_OF_DOG_PHOTOS

- default mode at each ``--eps``: the share of photos the ONNX model calls ``--target``
  after the result is saved as PNG, the median / 90th-percentile seconds per photo;
- robust mode at ``--robust-eps``: the share still ``--target`` after PNG, after JPEG
  quality 85, after a 50% downscale (the re-shares the attack is checked against), and,
  as unseen controls, after JPEG quality 70 and a 50% Lanczos downscale;
- ideal images for ``--ideal-labels``: the ONNX probability of the label after PNG, after
  a Gaussian blur (σ = 2 px) and after a 50% downscale (noise that only fools the model
  does not survive those), seconds per image; with ``--imagenet-check ARCH`` also the top
  5 of an independent torchvision ImageNet classifier (needs its weights; see
  :mod:`training.imagenet`).

Prints a Markdown table and, with ``--json``, one JSON line of every figure. Timings
depend on the machine: ``--threads`` (default 2) fixes torch's and onnxruntime's threads.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from benchmarks import add_record, record
from training.adversarial import fool, reshare
from training.cli import UsageError, resolve_device, run
from training.fool import parse_eps
from training.images import image_files


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.attacks",
        description="Success rates and timings of fool-me and ideal images.",
        add_help=add_help,
    )
    parser.add_argument("--checkpoint", default="models/catsdogs.pt", help="torch checkpoint the attacks use")
    parser.add_argument(
        "--onnx", default=None,
        help="ONNX model that judges (default: the checkpoint's .onnx sibling, else a fresh export to a temp dir)",
    )
    parser.add_argument("--data", required=True, help="folder of dog photos to attack (e.g. a val/dog folder)")
    parser.add_argument("--target", default="cat", help="label the attacked photos should get (default cat)")
    parser.add_argument("--eps", default="1/255,2/255,4/255,8/255", help="comma-separated L-inf budgets, default mode")
    parser.add_argument("--robust-eps", default="8/255", help="L-inf budget of the robust mode (default 8/255)")
    parser.add_argument("--limit", type=int, default=100, help="at most this many photos, default mode (default 100)")
    parser.add_argument("--robust-limit", type=int, default=100, help="at most this many photos, robust mode (default 100)")
    parser.add_argument("--steps", type=int, default=None, help="most attack steps per photo (default: the library's)")
    parser.add_argument("--ideal-labels", default="cat,dog", help="comma-separated labels for ideal images ('' to skip)")
    parser.add_argument("--ideal-steps", type=int, default=None, help="ideal-image steps (default: the library's)")
    parser.add_argument("--ideal-out", default=None, help="folder to keep the ideal PNGs in (default: not kept)")
    parser.add_argument("--imagenet-check", default=None, metavar="ARCH",
                        help="also ask torchvision's ARCH (e.g. resnet50) for the ideal images' ImageNet top 5")
    parser.add_argument("--imagenet-weights", default=None, help="offline state dict for --imagenet-check")
    parser.add_argument("--readme-assets", default=None, metavar="DIR",
                        help="write ideal_<label>.png and fool_before_after.png (the ideal dog made a cat) into DIR")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: default, robust, ideal")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the attacks and ideal images run (the ONNX judge stays on onnxruntime's default; default: auto)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default 2)")
    parser.add_argument("--json", action="store_true", help="also print every figure as one JSON line")
    return add_record(parser)


def _png(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _half(image: Image.Image, resample=Image.BILINEAR) -> Image.Image:
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), resample)


RESHARES = {  # the checks fool() knows (training.adversarial.reshare), then two it was not tuned to
    "png": lambda im: reshare(im, "png"),
    "jpeg85": lambda im: reshare(im, "jpeg"),
    "half": lambda im: reshare(im, "half"),
    "jpeg70 (unseen)": lambda im: _jpeg(im, 70),
    "half-lanczos (unseen)": lambda im: _half(im, Image.LANCZOS),
}
DEFAULT_CHECKS = ("png", "jpeg85", "half")


def _stats(seconds: list[float]) -> dict:
    if not seconds:
        return {"median_s": None, "p90_s": None}
    ordered = sorted(seconds)
    return {"median_s": round(statistics.median(ordered), 3), "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 3)}


def bench_fool(model, labels, classifier, photos, target, eps, *, robust=False, steps=None) -> dict:
    """Attack every photo; judge the 8-bit PNG and its re-shares the way ``/classify`` does,
    with the ONNX classifier's whole verdict (``success_*``: the target label AND a pet;
    ``label_*``: the label alone)."""
    names = list(RESHARES) if robust else list(DEFAULT_CHECKS)
    hits, label_hits = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    seconds, used, linfs, n = [], [], [], 0
    for path in photos:
        image = Image.open(path).convert("RGB")
        r = fool(model, labels, image, target, eps=eps, robust=robust, steps=steps)
        n += 1
        seconds.append(r.seconds)
        used.append(r.steps)
        linfs.append(r.linf * 255)
        received = _png(r.image)
        for name in names:
            verdict = classifier.assess(RESHARES[name](received), top_k=1)
            label_hits[name] += verdict.top[0][0] == target
            hits[name] += verdict.top[0][0] == target and verdict.is_pet is not False
    out = {"eps": round(eps * 255, 3), "n": n, **{f"success_{k}": round(v / max(n, 1), 4) for k, v in hits.items()},
           **{f"label_{k}": round(v / max(n, 1), 4) for k, v in label_hits.items()}}
    out.update(_stats(seconds))
    out["median_steps"] = statistics.median(used) if used else None
    out["max_linf_255"] = max(linfs) if linfs else None
    return out


def bench_ideal(model, labels, classifier, label, *, steps, out_dir, judge=None) -> dict:
    """Render ``label``'s ideal image; its ONNX probability after PNG, blur and a downscale."""
    from training.ideal import ideal_image

    start = time.perf_counter()
    image = ideal_image(model, labels, label, steps=steps)
    seconds = time.perf_counter() - start
    received = _png(image)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        received.save(Path(out_dir) / f"ideal_{label}.png")
    views = {"png": received, "blur2": received.filter(ImageFilter.GaussianBlur(2)), "half": _half(received)}
    probs = {}
    for name, im in views.items():
        probs[name] = round(dict(classifier.predict(im, top_k=len(classifier.labels)))[label], 4)
    out = {"label": label, "seconds": round(seconds, 2), **{f"prob_{k}": v for k, v in probs.items()}}
    if judge is not None:
        out["imagenet_top5"] = judge(received)
    return out


def readme_assets(model, labels, classifier, out_dir: Path, *, target: str, steps: int | None) -> list[Path]:
    """README pictures made from nothing but the model: each label's ideal image, and a
    before/after of the ideal non-target image attacked at 2/255 (no photo needed)."""
    from PIL import ImageDraw, ImageFont

    from training.adversarial import fool
    from training.ideal import ideal_image

    out_dir.mkdir(parents=True, exist_ok=True)
    written, ideals = [], {}
    for label in labels:
        ideals[label] = ideal_image(model, labels, label, steps=steps)
        ideals[label].save(out_dir / f"ideal_{label}.png")
        written.append(out_dir / f"ideal_{label}.png")
    source = next(label for label in labels if label != target)
    before = ideals[source]
    r = fool(model, labels, before, target, eps=2 / 255)
    after = _png(r.image)
    diff = np.abs(np.asarray(after, dtype=np.int16) - np.asarray(before, dtype=np.int16))
    shown = Image.fromarray(np.clip(127 + (np.asarray(after, dtype=np.int16) - np.asarray(before, dtype=np.int16)) * 40, 0, 255).astype(np.uint8))
    panels = [
        (before, "before: {} {:.1%}".format(*classifier.predict(before, top_k=1)[0])),
        (after, "after: {} {:.1%}".format(*classifier.predict(after, top_k=1)[0])),
        (shown, f"change x40 (max {int(diff.max())}/255)"),
    ]
    w, h = before.size
    sheet = Image.new("RGB", (3 * w + 20, h + 28), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    for i, (im, caption) in enumerate(panels):
        sheet.paste(im, (i * (w + 10), 0))
        draw.text((i * (w + 10) + 4, h + 5), caption, fill="black", font=font)
    sheet.save(out_dir / "fool_before_after.png")
    written.append(out_dir / "fool_before_after.png")
    return written


def _imagenet_judge(arch: str, weights: str | None):
    import torch

    from training.imagenet import CAT_CLASSES, DOG_CLASSES, load_imagenet_classifier
    from training.presets import preprocess

    net, categories = load_imagenet_classifier(arch, weights)

    @torch.inference_mode()
    def judge(image: Image.Image) -> list[str]:
        probs = net(torch.from_numpy(preprocess(image))[None]).softmax(-1)[0]
        top = probs.topk(5)
        tags = lambda i: " (cat)" if i in CAT_CLASSES else " (dog)" if i in DOG_CLASSES else ""
        return [f"{categories[i]}{tags(i)} {p:.2f}" for p, i in zip(top.values.tolist(), top.indices.tolist())]

    return judge


def _classifier(args, tmp_dir: Path):
    from export.runtime import Classifier

    onnx = Path(args.onnx) if args.onnx else Path(args.checkpoint).with_suffix(".onnx")
    if not onnx.is_file():
        if args.onnx:
            raise ValueError(f"ONNX model not found: {onnx}")
        from export.convert import export_onnx

        onnx = tmp_dir / "bench.onnx"
        export_onnx(args.checkpoint, onnx)
    return Classifier.load(onnx, threads=args.threads), onnx


def main(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from training.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    try:
        eps_list = [parse_eps(e) for e in args.eps.split(",") if e.strip()]
        robust_eps = parse_eps(args.robust_eps)
        device = resolve_device(args.device)
        model, labels = load_checkpoint(args.checkpoint, device)
        if args.target not in labels:
            raise ValueError(f"unknown --target {args.target!r}; this model knows: {', '.join(labels)}")
        photos = image_files(args.data, recursive=False) if Path(args.data).is_dir() else []
        if not photos and not {"default", "robust"} <= skip:
            raise UsageError(f"no photos in {args.data}")
    except argparse.ArgumentTypeError as exc:
        raise UsageError(str(exc)) from exc
    report: dict = {"checkpoint": args.checkpoint, "threads": args.threads, "target": args.target, "device": str(device)}
    with tempfile.TemporaryDirectory() as tmp:
        classifier, onnx = _classifier(args, Path(tmp))
        report["onnx"] = str(onnx)
        print(f"judge: {onnx}; attacks on {args.checkpoint} ({device}); {len(photos)} photos in {args.data}; {args.threads} threads")
        if "default" not in skip:
            report["default"] = []
            print("\n| mode | eps | n | target + pet after PNG (label only) | after JPEG q85 | after halving | median s | "
                  "p90 s | median steps | max L∞ |\n|---|---|---|---|---|---|---|---|---|---|")
            for eps in eps_list:
                row = bench_fool(model, labels, classifier, photos[: args.limit], args.target, eps, steps=args.steps)
                report["default"].append(row)
                print(f"| default | {row['eps']:g}/255 | {row['n']} | {row['success_png']:.0%} ({row['label_png']:.0%}) | "
                      f"{row['success_jpeg85']:.0%} | {row['success_half']:.0%} | {row['median_s']} | "
                      f"{row['p90_s']} | {row['median_steps']} | {row['max_linf_255']:g}/255 |", flush=True)
        if "robust" not in skip:
            row = bench_fool(model, labels, classifier, photos[: args.robust_limit], args.target, robust_eps, robust=True, steps=args.steps)
            report["robust"] = row
            names = list(RESHARES)
            print(f"\n| robust eps | n | {' | '.join(names)} | median s | p90 s | median steps |\n|" + "---|" * (len(names) + 5))
            print(f"| {row['eps']:g}/255 | {row['n']} | " + " | ".join(f"{row['success_' + k]:.0%}" for k in names)
                  + f" | {row['median_s']} | {row['p90_s']} | {row['median_steps']} |", flush=True)
        ideal_labels = [s.strip() for s in args.ideal_labels.split(",") if s.strip()]
        if "ideal" not in skip and ideal_labels:
            judge = _imagenet_judge(args.imagenet_check, args.imagenet_weights) if args.imagenet_check else None
            report["ideal"] = []
            print("\n| ideal | prob after PNG | after blur σ=2 | after 50% downscale | seconds |" + (" ImageNet top 5 |" if judge else "")
                  + "\n|---|---|---|---|---|" + ("---|" if judge else ""))
            for label in ideal_labels:
                row = bench_ideal(model, labels, classifier, label, steps=args.ideal_steps, out_dir=args.ideal_out, judge=judge)
                report["ideal"].append(row)
                print(f"| {label} | {row['prob_png']:.3f} | {row['prob_blur2']:.3f} | {row['prob_half']:.3f} | {row['seconds']} |"
                      + (f" {'; '.join(row['imagenet_top5'])} |" if judge else ""), flush=True)
        if args.readme_assets:
            written = readme_assets(model, labels, classifier, Path(args.readme_assets), target=args.target, steps=args.ideal_steps)
            print("\nwrote " + ", ".join(str(p) for p in written))
    record("attacks", report, args)
    if args.json:
        print(json.dumps(report))
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
