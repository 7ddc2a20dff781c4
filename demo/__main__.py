"""Serve the PetLens demo.

    python -m demo                                   # the shipped models, served on http://127.0.0.1:7860
    python -m demo --host 0.0.0.0 --port 8080        # reachable from other machines
    python -m demo --model run/model.onnx --checkpoint run/model.pt --examples my_photos/
    python -m demo --share                           # a temporary public gradio.live link
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from demo.app import launch, load_demo
from demo.lanes import MAX_WAITING, PER_CLIENT
from training.cli import UsageError, add_model, make_parser, positive, run


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = make_parser("petlens-demo", "Serve the PetLens Gradio demo (Classify, Fool me, Ideal image, Inside the network).",
                         add_help=add_help)
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: 127.0.0.1, or GRADIO_SERVER_NAME if set; "
                             "0.0.0.0 for every interface)")
    parser.add_argument("--port", type=positive(int), default=None,
                        help="port to listen on (default: 7860 or the next free one, or GRADIO_SERVER_PORT if set)")
    add_model(parser, required=False,
              help="ONNX classifier used for every label the demo shows, or a Triton URL "
                             "http://host:8000/<model> (default: models/catsdogs.onnx)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the matching torch checkpoint, used by Fool me, Ideal image and Inside the network "
                             "(default: models/catsdogs.pt)")
    parser.add_argument("--examples", type=Path, default=None,
                        help="folder of example photos shown under the inputs (default: demo/examples)")
    parser.add_argument("--fool-steps", type=positive(int), default=None,
                        help="attack steps for Fool me (default: the attack's own; fewer is faster and weaker)")
    parser.add_argument("--ideal-steps", type=positive(int), default=None,
                        help="optimization steps for Ideal image (default: the library's own; fewer is faster)")
    parser.add_argument("--heavy-concurrency", type=positive(int), default=1,
                        help="how many torch jobs (fool, ideal, explain) run at once (default: 1)")
    parser.add_argument("--max-queue", type=positive(int), default=MAX_WAITING,
                        help="how many torch jobs may wait before new ones are turned away; Classify has its own lane "
                             f"and never waits behind them (default: {MAX_WAITING})")
    parser.add_argument("--jobs-per-client", type=positive(int), default=PER_CLIENT,
                        help="torch jobs one client (IP address) may have waiting or running at once "
                             f"(default: {PER_CLIENT})")
    parser.add_argument("--share", action="store_true",
                        help="also open a temporary public link through gradio's share servers")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.examples is not None and not args.examples.is_dir():
        raise UsageError(f"--examples {args.examples}: no such folder")
    # A missing file, a bad model, Triton unreachable, labels that do not match: one line, exit 2.
    app = load_demo(
        args.model, args.checkpoint, examples=args.examples, fool_steps=args.fool_steps,
        ideal_steps=args.ideal_steps, heavy_concurrency=args.heavy_concurrency, max_queue=args.max_queue,
        jobs_per_client=args.jobs_per_client,
    )
    launch(app, host=args.host, port=args.port, share=args.share, examples=args.examples)
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry (``petlens-demo``): a user's mistake is one line on stderr, exit 2."""
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
