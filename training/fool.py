"""Make photos that the model calls ``--target`` (targeted adversarial examples).

    python -m training.fool --checkpoint models/catsdogs.pt --target cat --out fooled/ dog1.jpg dog2.png
    python -m training.fool --checkpoint models/catsdogs.pt --target cat --out fooled/ --robust --eps 8/255 dog.jpg

Each output is ``OUTDIR/<input stem>-<target>.png``: the same width×height as the input
(inputs longer than ``--max-side`` are downscaled to it first, and the line says so),
changed by at most ``--eps`` per pixel. PNG, because JPEG would re-quantize the tiny
change away (``--robust`` makes photos that survive that, at a visible price: use
``--eps 8/255``). With ``--json``, one line per image::

    {"image", "output", "source": {"label", "prob"}, "result": {"label", "prob"}, "linf", "steps", "seconds"}

(plus ``success``, ``resized_from`` and, in robust mode, ``reshared``). An image that
cannot be used gets ``{"image", "error"}`` and the others still run; the exit status is 1
if any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

from .adversarial import MAX_SIDE, check_eps


def parse_eps(text: str) -> float:
    """``"2/255"``, ``"0.0078"`` or ``"8/255"`` -> float, validated."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"--eps must be a number or a fraction like 2/255, got {text!r}") from None
    try:
        return check_eps(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.fool",
        description="Change photos imperceptibly so that the model calls them --target.", add_help=add_help
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photos to change (JPEG, PNG, WebP, ...)")
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (.pt), e.g. models/catsdogs.pt")
    parser.add_argument("--target", required=True, help="the label the model should see, e.g. cat")
    parser.add_argument("--out", required=True, help="folder for the changed photos (created if missing)")
    parser.add_argument(
        "--eps", type=parse_eps, default=None,
        help="L-inf budget per pixel in [0,1] units; fractions allowed (default 2/255, robust 8/255)",
    )
    parser.add_argument("--steps", type=int, default=None, help="most attack steps (default 50, robust 150)")
    parser.add_argument(
        "--robust", action="store_true",
        help="also fool after JPEG re-encoding (quality 85) and a 50%% downscale; slower and more visible",
    )
    parser.add_argument(
        "--max-side", type=int, default=MAX_SIDE,
        help=f"longest side to work at; larger inputs are downscaled first (default {MAX_SIDE})",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per image")
    return parser


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is available; use --device cpu")
    return name


def main(args: argparse.Namespace) -> int:
    from training.images import load_image

    from .adversarial import fool
    from .checkpoint import load_checkpoint

    if args.steps is not None and args.steps < 1:
        print(f"error: --steps must be at least 1, got {args.steps}", file=sys.stderr)
        return 2
    eps = args.eps if args.eps is not None else (8 / 255 if args.robust else 2 / 255)
    try:
        model, labels = load_checkpoint(args.checkpoint, device=_device(args.device))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.target not in labels:
        print(f"error: unknown --target {args.target!r}; this model knows: {', '.join(labels)}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    written: set[Path] = set()
    for src in args.images:
        try:
            image = load_image(src)
            r = fool(model, labels, image, args.target, eps=eps, steps=args.steps, robust=args.robust, max_side=args.max_side)
        except (ValueError, OSError) as exc:  # ImageError is a ValueError; unreadable paths are OSErrors
            failures += 1
            if args.json:
                print(json.dumps({"image": src, "error": str(exc)}), flush=True)
            else:
                print(f"{src}: error: {exc}", file=sys.stderr, flush=True)
            continue
        output = out_dir / f"{Path(src).stem}-{args.target}.png"
        n = 1
        while output in written:  # same stem from two folders: do not overwrite
            n += 1
            output = out_dir / f"{Path(src).stem}-{args.target}-{n}.png"
        written.add(output)
        r.image.save(output)
        record = {
            "image": src,
            "output": str(output),
            "source": {"label": r.source[0], "prob": round(r.source[1], 6)},
            "result": {"label": r.result[0], "prob": round(r.result[1], 6)},
            "linf": round(r.linf, 6),
            "steps": r.steps,
            "seconds": round(r.seconds, 3),
            "success": r.success,
            "resized_from": list(r.resized_from) if r.resized_from else None,
        }
        if r.reshared:
            record["reshared"] = {k: {"label": lab, "prob": round(p, 6)} for k, (lab, p) in r.reshared.items()}
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            note = f" (downscaled from {r.resized_from[0]}×{r.resized_from[1]})" if r.resized_from else ""
            verdict = "fooled" if r.success else "NOT fooled"
            print(
                f"{src}: {r.source[0]} {r.source[1]:.1%} -> {r.result[0]} {r.result[1]:.1%} {verdict}, "
                f"L∞ {r.linf * 255:.0f}/255, {r.steps} steps, {r.seconds:.1f} s -> {output}{note}",
                flush=True,
            )
    return 1 if failures else 0


def cli() -> None:
    sys.exit(main(get_args_parser().parse_args()))


if __name__ == "__main__":
    cli()
