"""Make photos that the model calls ``--target`` (targeted adversarial examples).

    python -m training.fool --model models/catsdogs.pt --target cat --out fooled/ dog1.jpg dog2.png
    python -m training.fool --model models/catsdogs.pt --target cat --out fooled/ --robust --eps 8/255 dog.jpg

Each output is ``OUTDIR/<input stem>-<target>.png``: the same width×height as the input
(inputs longer than ``--max-side`` are downscaled to it first, and the line says so),
changed by at most ``--eps`` per pixel. PNG, because JPEG would re-quantize the tiny
change away (``--robust`` makes photos that survive that, at a visible price: use
``--eps 8/255``). With ``--json``, one line per image::

    {"image", "output", "source": {"label", "prob"},
     "result": {"label", "prob", "is_pet", "ood_score"}, "linf", "steps", "seconds", "success"}

(plus ``resized_from`` and, in robust mode, ``reshared``). ``success`` is the deployed model's
whole verdict on the saved PNG, as ``/classify`` gives it: the target label AND accepted as a
pet, not merely "probably a pet" (``is_pet``; it and ``ood_score`` are null for a model without
"is it a pet?" statistics; see :mod:`training.verdict`). A photo that cannot be used
(missing, not an image, damaged, too large) is the user's to fix: one ``error: <image>: why``
line on stderr (and ``{"image", "error"}`` with ``--json``), the others still run, and the exit
status is 2 at the end, as for every other mistake on the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

from .adversarial import MAX_SIDE, check_eps, fool
from .checkpoint import load_checkpoint
from .cli import (
    EXIT_USAGE,
    UsageError,
    add_device,
    add_json,
    add_model,
    describe_error,
    make_parser,
    out_folder,
    positive,
    report_error,
    resolve_device,
    run,
)
from .images import load_image


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
    parser = make_parser("petlens-fool", "Change photos imperceptibly so that the model calls them --target "
                         "and still takes them for a pet.", add_help=add_help)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photos to change (JPEG, PNG, WebP, ...)")
    add_model(parser, aliases=("--checkpoint",), help="model checkpoint (.pt), e.g. models/catsdogs.pt")
    parser.add_argument("--target", required=True, help="the label the model should see, e.g. cat")
    parser.add_argument("--out", required=True, help="folder for the changed photos (created if missing)")
    parser.add_argument(
        "--eps", type=parse_eps, default=None,
        help="L-inf budget per pixel in [0,1] units; fractions allowed (default 2/255, robust 8/255)",
    )
    parser.add_argument("--steps", type=positive(int), default=None, help="most attack steps (default 50, robust 150)")
    parser.add_argument(
        "--robust", action="store_true",
        help="also fool after JPEG re-encoding (quality 85) and a 50%% downscale; slower and more visible",
    )
    parser.add_argument(
        "--max-side", type=positive(int), default=MAX_SIDE,
        help=f"longest side to work at; larger inputs are downscaled first (default {MAX_SIDE})",
    )
    add_device(parser)
    add_json(parser, help="print one JSON line per image")
    return parser


def main(args: argparse.Namespace) -> int:
    eps = args.eps if args.eps is not None else (8 / 255 if args.robust else 2 / 255)
    out_dir = out_folder(args.out, contents=f"<photo name>-{args.target}.png")
    loaded = load_checkpoint(args.model, device=resolve_device(args.device))
    model, labels = loaded
    scorer = loaded.ood_scorer()  # the whole verdict: the label and "is it a pet?"
    if args.target not in labels:
        raise UsageError(f"unknown --target {args.target!r}; this model knows: {', '.join(labels)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    written: set[Path] = set()
    for src in args.images:
        try:
            r = fool(model, labels, load_image(src), args.target, eps=eps, steps=args.steps, robust=args.robust,
                     max_side=args.max_side, ood=scorer)
        except (ValueError, OSError) as exc:  # ImageError is a ValueError; unreadable paths are OSErrors
            failures += 1
            report_error(_naming(src, describe_error(exc)), json_record={"image": src} if args.json else None)
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
            "source": {"label": r.source.label, "prob": round(r.source.prob, 6)},
            "result": r.result.as_dict(),
            "linf": round(r.linf, 6),
            "steps": r.steps,
            "seconds": round(r.seconds, 3),
            "success": r.success,
            "resized_from": list(r.resized_from) if r.resized_from else None,
        }
        if r.reshared:
            record["reshared"] = {k: v.as_dict() for k, v in r.reshared.items()}
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            note = f" (downscaled from {r.resized_from[0]}×{r.resized_from[1]})" if r.resized_from else ""
            outcome = "fooled" if r.success else "NOT fooled"
            pet = {"pet": ", a pet", "unsure": ", a pet? (unlike the training photos)", "not_pet": ", NOT a pet",
                   None: ""}[r.result.pet_verdict]
            print(
                f"{src}: {r.source.label} {r.source.prob:.1%} -> {r.result.label} {r.result.prob:.1%}{pet} {outcome}, "
                f"L∞ {r.linf * 255:.0f}/255, {r.steps} steps, {r.seconds:.1f} s -> {output}{note}",
                flush=True,
            )
    return EXIT_USAGE if failures else 0


def _naming(src: str, message: str) -> str:
    """``message`` about photo ``src``, naming it as the user typed it: load_image's messages
    start with the file's base name ("dog.jpg is empty ..."), which becomes the path given."""
    name = Path(src).name
    return src + message[len(name):] if message.startswith(name) else f"{src}: {message}"


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry (``petlens-fool``): a bad flag or model is one line on stderr and
    exit 2; photos that cannot be used are reported one line each, the others still run, and
    the exit status is 2."""
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
