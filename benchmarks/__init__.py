"""Figure-producing scripts (``python -m benchmarks.X``), kept out of the product packages.

Every script takes ``--record``: it then also writes its figures, the exact command and the
machine they were measured on to ``benchmarks/results/<script>.json`` (:func:`record`). Those
files are where docs/benchmarks.md takes its numbers from, so a figure in the docs always has
a command and a machine behind it; docstrings state contracts, never figures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def add_record(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--record", action="store_true",
                        help="also write the figures, the command and the machine to benchmarks/results/<script>.json")
    return parser


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, load, and the versions that matter."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("torch", "torchvision", "onnxruntime", "gradio", "discord"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_1_5_15": load, "python": platform.python_version(),
            **versions}


def record(script: str, figures: Any, args: argparse.Namespace | None = None) -> Path | None:
    """With ``--record`` (``args.record``), write ``figures`` to ``benchmarks/results/<script>.json``
    with the command line, the date and :func:`machine`; returns the path (None without it)."""
    if args is not None and not getattr(args, "record", False):
        return None
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{script}.json"
    entry = {"command": " ".join(["python -m benchmarks." + script, *sys.argv[1:]]),
             "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"), "machine": machine(), "figures": figures}
    path.write_text(json.dumps(entry, indent=1, default=str) + "\n")
    print(f"recorded in {path.relative_to(RESULTS.parent.parent)}", file=sys.stderr)
    return path
