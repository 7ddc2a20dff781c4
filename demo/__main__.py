"""Serve the PetLens demo.

    python -m demo                                   # the shipped models, served on http://127.0.0.1:7860
    python -m demo --host 0.0.0.0 --port 8080        # reachable from other machines
    python -m demo --model run/model.onnx --checkpoint run/model.pt --examples my_photos/
    python -m demo --share                           # a temporary public gradio.live link
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from demo.app import SERVER_TIMEOUT_S, launch, load_demo
from demo.lanes import MAX_WAITING, PER_CLIENT
from training.cli import UsageError, add_model, make_parser, positive, run

DEFAULT_PORT = 7860  # gradio's, when neither --port nor GRADIO_SERVER_PORT names one
PORTS_TRIED = 100  # gradio's search: DEFAULT_PORT .. DEFAULT_PORT + 99


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = make_parser("petlens-demo", "Serve the PetLens Gradio demo (Classify, Fool me, Ideal image, Inside the network).",
                         add_help=add_help)
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: 127.0.0.1, or GRADIO_SERVER_NAME if set; "
                             "0.0.0.0 for every interface)")
    parser.add_argument("--port", type=positive(int), default=None,
                        help="port to listen on; busy is an error (default: GRADIO_SERVER_PORT if set, else 7860 "
                             "or, when that is busy, the next free one, which is then printed)")
    add_model(parser, required=False,
              help="ONNX classifier used for every label the demo shows, or a Triton URL "
                             "http://host:8000/<model> (default: models/catsdogs.onnx)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the matching torch checkpoint, used by Fool me, Ideal image and Inside the network "
                             "(default: models/catsdogs.pt)")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="a Triton server (http://host:8000, from python -m export --triton-repo) that classifies "
                             "and runs the heavy jobs; --model and --checkpoint are then not used (default: all in "
                             "this process)")
    parser.add_argument("--job-timeout", type=positive(float), default=SERVER_TIMEOUT_S,
                        help="seconds a heavy job may take on --server before it is given up "
                             f"(default: {SERVER_TIMEOUT_S:g})")
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


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as uvicorn binds)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: no such address on this machine") from exc
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError:
            return False
    return True


def _asked_port() -> tuple[int | None, str]:
    """The port the user named (``--port`` is read by the caller; here GRADIO_SERVER_PORT, as a
    Space sets it) and how they named it."""
    env = os.environ.get("GRADIO_SERVER_PORT")
    if not env:
        return None, ""
    try:
        return int(env), "GRADIO_SERVER_PORT"
    except ValueError:
        raise UsageError(f"GRADIO_SERVER_PORT={env!r} is not a port number") from None


def _busy(host: str, port: int, named_by: str) -> UsageError:
    return UsageError(f"port {port} is busy on {host} (asked for by {named_by}); stop what is using it, "
                      "or choose another port with --port")


def _serving_port(host: str) -> int:
    """Gradio would take the next free port after a busy 7860 without a word; say so."""
    port = next((p for p in range(DEFAULT_PORT, DEFAULT_PORT + PORTS_TRIED) if port_is_free(host, p)), None)
    if port is None:
        raise UsageError(f"ports {DEFAULT_PORT}-{DEFAULT_PORT + PORTS_TRIED - 1} are all busy on {host}; "
                         "choose a port with --port")
    if port != DEFAULT_PORT:
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        print(f"port {DEFAULT_PORT} is busy; serving on http://{shown}:{port} instead", file=sys.stderr, flush=True)
    return port


def main(args: argparse.Namespace) -> int:
    if args.server and (args.model is not None or args.checkpoint is not None):
        raise UsageError("--server serves the classifier and the heavy jobs; drop --model and --checkpoint")
    if args.examples is not None and not args.examples.is_dir():
        raise UsageError(f"--examples {args.examples}: no such folder")
    host = args.host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port, named_by = (args.port, "--port") if args.port is not None else _asked_port()
    if port is not None and not port_is_free(host, port):  # before the models take seconds to load
        raise _busy(host, port, named_by)
    # A missing file, a bad model, Triton unreachable, labels that do not match: one line, exit 2.
    app = load_demo(
        args.model, args.checkpoint, server=args.server, job_timeout=args.job_timeout, examples=args.examples, fool_steps=args.fool_steps,
        ideal_steps=args.ideal_steps, heavy_concurrency=args.heavy_concurrency, max_queue=args.max_queue,
        jobs_per_client=args.jobs_per_client,
    )
    searched = port is None
    if searched:
        port = _serving_port(host)
    try:
        launch(app, host=args.host, port=port, share=args.share, examples=args.examples)
    except OSError as exc:  # taken while the models loaded; gradio's own text is about launch()
        if port_is_free(host, port):
            raise
        if searched:
            raise UsageError(f"port {port} was taken while the demo loaded; run it again, "
                             "or choose a port with --port") from exc
        raise _busy(host, port, named_by) from exc
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry (``petlens-demo``): a user's mistake is one line on stderr, exit 2."""
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
