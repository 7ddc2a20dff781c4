"""Lay out the demo as a Hugging Face Space, ready to upload.

A Gradio Space installs its Python packages from a ``requirements.txt`` at the root of the
Space repository (``pyproject.toml`` is ignored) and installs ``gradio`` itself at the
README's ``sdk_version``. This repository's top level is fixed, so instead of keeping a
second dependency list by hand, this command writes the Space from the repository:
its card (``demo/SPACE.md`` with the Space front matter), the packages, the example photos, the models,
and a ``requirements.txt`` generated from ``pyproject.toml``.

    python -m demo.space OUT                      # then: hf upload USER/SPACE OUT --repo-type=space
    python -m demo.space OUT --model run/model.onnx --checkpoint run/model.pt --gpu

The Space runs ``python demo/app.py`` (its ``app_file``) from the repository root, which
serves the shipped models with no arguments.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from training.cli import make_parser, run

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "export", "service", "demo")
EXTRAS = ("demo",)  # pyproject extras the demo needs on top of the base dependencies
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
FRONT_MATTER = """\
---
title: PetLens
emoji: 🐾
colorFrom: indigo
colorTo: pink
sdk: gradio
sdk_version: {gradio}
python_version: "3.11"
app_file: demo/app.py
pinned: false
license: mit
short_description: Classify, fool and look inside a cats-vs-dogs CNN
---
"""
GITATTRIBUTES = "*.onnx filter=lfs diff=lfs merge=lfs -text\n*.pt filter=lfs diff=lfs merge=lfs -text\n"


def space_requirements(pyproject: str | Path = REPO_ROOT / "pyproject.toml", *, gpu: bool = False) -> list[str]:
    """requirements.txt lines for the Space, from ``pyproject.toml``'s dependencies and the
    ``demo`` extra. ``gradio`` is left out (the Space pins it through ``sdk_version``).
    ``gpu=False`` (free CPU Spaces): onnxruntime instead of onnxruntime-gpu and PyTorch's
    CPU wheel index, which spares the multi-gigabyte CUDA build."""
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads(Path(pyproject).read_text())["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project.get("optional-dependencies", {}).get(extra, [])
    out = [] if gpu else [f"--extra-index-url {CPU_TORCH_INDEX}"]
    for line in lines:
        req = Requirement(line)
        if req.name == "gradio":
            continue
        if not gpu and req.name == "onnxruntime-gpu":
            line = f"onnxruntime{req.specifier}"
        elif not gpu and req.name == "onnxruntime":
            continue  # the darwin-only line; the swapped one above covers every platform
        if line not in out:
            out.append(line)
    return out


def readme(source: Path, gradio_version: str) -> str:
    """The Space's own short card (``demo/SPACE.md``: for visitors, not for developers), with
    the Space front matter in front unless it has one."""
    text = source.read_text(encoding="utf-8") if source.is_file() else "# PetLens\n"
    return text if text.startswith("---\n") else FRONT_MATTER.format(gradio=gradio_version) + "\n" + text


def write_space(out: str | Path, *, model: str | Path | None = None, checkpoint: str | Path | None = None,
                gpu: bool = False) -> Path:
    """Write the Space into ``out`` (created; must be empty or missing). Returns ``out``."""
    import gradio

    from demo.app import DEFAULT_CHECKPOINT, DEFAULT_MODEL, resolve_model_file

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; pick a new folder")
    models = {DEFAULT_MODEL: resolve_model_file(model, DEFAULT_MODEL),
              DEFAULT_CHECKPOINT: resolve_model_file(checkpoint, DEFAULT_CHECKPOINT)}
    out.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, out / package, ignore=ignore)
    for name, source in models.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out / name)
    (out / "requirements.txt").write_text("\n".join(space_requirements(gpu=gpu)) + "\n")
    (out / "README.md").write_text(readme(REPO_ROOT / "demo" / "SPACE.md", gradio.__version__), encoding="utf-8")
    (out / ".gitattributes").write_text(GITATTRIBUTES)
    return out


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = make_parser("python -m demo.space", "Write the demo as a Hugging Face Space folder.", add_help=add_help)
    parser.add_argument("out", type=Path, help="folder to create (must be empty or missing)")
    parser.add_argument("--model", type=Path, default=None, help="ONNX model to ship (default: models/catsdogs.onnx)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="torch checkpoint to ship (default: models/catsdogs.pt)")
    parser.add_argument("--gpu", action="store_true",
                        help="keep the CUDA builds of torch and onnxruntime (for GPU Spaces; default: CPU wheels)")
    return parser


def main(args: argparse.Namespace) -> int:
    out = write_space(args.out, model=args.model, checkpoint=args.checkpoint, gpu=args.gpu)
    print(f"wrote the Space to {out}; upload it with: hf upload USER/SPACE {out} --repo-type=space")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
