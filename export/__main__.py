"""``python -m export``: checkpoint -> verified ONNX (+ int8, + Triton repository).

Examples::

    python -m export --checkpoint models/catsdogs.pt --out models/catsdogs.onnx \\
        --verify PHOTOS/val
    python -m export --checkpoint models/catsdogs.pt --out models/catsdogs.onnx \\
        --int8 --calibration PHOTOS/train       # also models/catsdogs-int8.onnx
    python -m export --checkpoint models/catsdogs.pt --triton-repo triton   # triton/catsdogs/...
        # ... and triton/petlens_fool, petlens_ideal, petlens_explain (the torch jobs; docs/deploy-triton.md)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from training.cli import UsageError, add_model, make_parser, positive, run
from training.images import image_files

from .convert import OPSET, ExportError, export_onnx
from .quantize import MIN_CALIBRATION, describe, quantize_int8
from .triton import write_job_models, write_triton_repo


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = make_parser(
        "petlens-export",
        "Export a petlens checkpoint to ONNX, check it against torch, optionally quantize it "
        "to int8 and lay it out as a Triton model repository.",
        add_help=add_help,
    )
    add_model(parser, aliases=("--checkpoint",), help="checkpoint from `python -m training` (.pt)")
    parser.add_argument("--out", type=Path, help="ONNX file to write (e.g. models/catsdogs.onnx); optional with --triton-repo")
    parser.add_argument("--verify", type=Path, metavar="DIR",
                        help="folder of real photos to check torch/onnxruntime parity on (default: --calibration, "
                        "else generated images)")
    parser.add_argument("--n-verify", type=positive(int), default=32, help="photos used for the parity check (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="max allowed probability difference torch vs onnxruntime (default: 1e-4; 5e-2 with --fp16)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 20)")
    parser.add_argument("--fp16", action="store_true",
                        help="compute in float16 inside the graph (float32 input/output): for GPUs; slower on most CPUs")
    parser.add_argument("--int8", action="store_true", help="also write a statically quantized int8 model")
    parser.add_argument("--calibration", type=Path, metavar="DIR", help="folder of real photos for int8 calibration (required with --int8)")
    parser.add_argument("--int8-out", type=Path, help="int8 file to write (default: <out stem>-int8.onnx next to --out)")
    parser.add_argument("--triton-repo", type=Path, metavar="DIR", help="also write a Triton model repository: DIR/<name>/config.pbtxt, DIR/<name>/1/model.onnx")
    parser.add_argument("--triton-name", help="model name in the Triton repository (default: stem of --out or of the checkpoint)")
    parser.add_argument("--max-batch-size", type=positive(int), default=32, help="Triton max_batch_size (default: %(default)s)")
    parser.add_argument("--triton-kind", choices=["auto", "gpu", "cpu"], default="auto", help="Triton instance kind (default: %(default)s)")
    parser.add_argument("--no-triton-jobs", dest="triton_jobs", action="store_false",
                        help="leave out the torch job models (petlens_fool, petlens_ideal, petlens_explain) from --triton-repo")
    parser.add_argument("--triton-sys-path", default=None, metavar="PATHS",
                        help="folders (os.pathsep-separated) the server's python stub must add to sys.path to import petlens "
                        "and torch; '' where petlens is installed in the server's Python (default: this checkout and this "
                        "interpreter's site-packages)")
    parser.add_argument("--triton-threads", type=int, default=0,
                        help="torch threads per job-model instance (default: 0 = torch's default)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if not args.out and not args.triton_repo:
        raise UsageError("nothing to write: give --out M.onnx and/or --triton-repo DIR")
    if args.int8 and not args.calibration:
        raise UsageError("--int8 needs --calibration DIR (a folder of real photos, e.g. your training images)")
    if args.int8 and not args.out:
        raise UsageError("--int8 needs --out M.onnx (the int8 file goes next to it)")
    if args.int8 and args.fp16:
        raise UsageError("--int8 quantizes the float32 model; run it without --fp16 (export the fp16 model separately)")
    if args.calibration and not args.calibration.is_dir():
        raise UsageError(f"calibration folder not found: {args.calibration}")
    if args.verify and not args.verify.exists():
        raise UsageError(f"verification folder not found: {args.verify}")
    if args.out and args.out.suffix != ".onnx":
        raise UsageError(f"--out should end in .onnx, got {args.out}")
    # What would otherwise fail only after the export (tens of seconds) is refused first.
    if args.out and args.out.is_dir():
        raise UsageError(f"--out is the ONNX file to write, and {args.out} is a folder; "
                         f"give a file name, e.g. --out {args.out / 'model.onnx'}")
    if args.triton_repo and args.triton_repo.exists() and not args.triton_repo.is_dir():
        raise UsageError(f"--triton-repo is a folder (its models go in <name>/config.pbtxt and <name>/1/model.onnx), "
                         f"and {args.triton_repo} is a file")
    n_calibration = len(image_files(args.calibration)) if args.int8 else MIN_CALIBRATION
    if n_calibration < MIN_CALIBRATION:
        raise UsageError(f"--calibration {args.calibration} has {n_calibration} photos; "
                         f"int8 calibration needs at least {MIN_CALIBRATION} real photos (ideally 100+)")


def main(args: argparse.Namespace) -> int:
    _check_args(args)
    model = Path(args.model)
    verify = args.verify or args.calibration
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / f"{args.triton_name or model.stem}.onnx"
        report = export_onnx(model, out, verify_images=verify, n_verify=args.n_verify,
                             tolerance=args.tolerance, opset=args.opset or OPSET, fp16=args.fp16)
        source = "real photos" if report.real_images else "generated images (pass --verify DIR for real photos)"
        print(f"wrote {out if args.out else 'ONNX model'} ({report.metadata['arch']}, {report.metadata['precision']}, "
              f"labels {report.metadata['labels']}); torch vs onnxruntime max prob diff {report.max_abs_diff:.1e} "
              f"<= {report.tolerance:.0e} on {report.n_images} {source}; {report.seconds:.0f}s")
        if args.int8:
            int8_out = args.int8_out or out.with_name(f"{out.stem}-int8.onnx")
            print(describe(quantize_int8(out, int8_out, args.calibration)))
        if args.triton_repo:
            folder = write_triton_repo(out, args.triton_repo, name=args.triton_name or out.stem,
                                       max_batch_size=args.max_batch_size, kind=args.triton_kind)
            print(f"wrote Triton model repository {folder} (serve with: tritonserver --model-repository={args.triton_repo})")
            if args.triton_jobs:
                sys_path = None if args.triton_sys_path is None else [p for p in args.triton_sys_path.split(os.pathsep) if p]
                jobs = write_job_models(model, args.triton_repo, kind=args.triton_kind, sys_path=sys_path,
                                        threads=args.triton_threads)
                print(f"wrote the torch job models {', '.join(f.name for f in jobs)} (python backend) into {args.triton_repo}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry (``petlens-export``): a user's mistake (bad flags, an unusable
    checkpoint or photo folder) is one line on stderr and exit 2; an export that fails its
    parity check is one line and exit 1."""
    return run(get_args_parser(), main, argv, failures=(ExportError,))


if __name__ == "__main__":
    sys.exit(cli())
