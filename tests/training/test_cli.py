"""One command-line convention for every tool (training/cli.py): the console scripts' names,
``--help``, ``--device``, ``--model``, and a user's mistake = one ``error:`` line + exit 2."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_tool
from training import cli

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
# Tools that load a torch model take --device; the bot and the demo serve ONNX and take none.
TORCH_TOOLS = {"petlens-train", "petlens-evaluate", "petlens-fool", "petlens-ideal", "petlens-explain"}


def entry(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def parser_of(spec: str):
    return importlib.import_module(spec.partition(":")[0]).get_args_parser()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_has_help_named_after_itself(script, capsys):
    code, out, _ = run_tool(entry(SCRIPTS[script]), ["--help"], capsys)
    assert code == 0
    assert out.startswith(f"usage: {script}"), out[:80]
    assert parser_of(SCRIPTS[script]).prog == script


@pytest.mark.parametrize("script", sorted(TORCH_TOOLS))
def test_torch_tools_share_one_device_flag(script):
    actions = {a.dest: a for a in parser_of(SCRIPTS[script])._actions}
    assert actions["device"].choices == cli.DEVICES and actions["device"].default == "auto"


@pytest.mark.parametrize("script", ["petlens-evaluate", "petlens-fool", "petlens-ideal", "petlens-explain",
                                    "petlens-calibrate", "petlens-export", "petlens-demo"])
def test_the_model_file_is_always_model(script):
    actions = {a.dest: a for a in parser_of(SCRIPTS[script])._actions}
    assert "--model" in actions["model"].option_strings


def _missing_model_argv(script: str, tmp: Path) -> list[str]:
    missing = str(tmp / "missing.pt")
    photo = tmp / "photo.png"
    from tests.conftest import synthetic_photo

    synthetic_photo("cat", 0).save(photo)
    return {
        "petlens-evaluate": ["--model", missing, "--data", str(tmp)],
        "petlens-fool": ["--model", missing, "--target", "cat", "--out", str(tmp / "out"), str(photo)],
        "petlens-ideal": ["--model", missing, "--label", "cat", "--out", str(tmp / "i.png")],
        "petlens-explain": ["--model", missing, "--image", str(photo), "--out", str(tmp / "out")],
        "petlens-calibrate": ["--model", missing, "--data", str(tmp)],
        "petlens-export": ["--model", missing, "--out", str(tmp / "m.onnx")],
        "petlens-demo": ["--model", str(tmp / "missing.onnx"), "--checkpoint", missing],
    }[script]


@pytest.mark.parametrize("script", ["petlens-evaluate", "petlens-fool", "petlens-ideal", "petlens-explain",
                                    "petlens-calibrate", "petlens-export", "petlens-demo"])
def test_a_missing_model_file_is_one_line_and_exit_2(script, tmp_path, capsys):
    code, _, err = run_tool(entry(SCRIPTS[script]), _missing_model_argv(script, tmp_path), capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0], err


def test_a_bad_flag_value_is_exit_2_with_the_flag_named(capsys, tmp_path):
    code, _, err = run_tool(entry(SCRIPTS["petlens-train"]), ["--data", tmp_path, "--out", tmp_path, "--epochs", "0"], capsys)
    assert code == 2 and "--epochs" in err


def test_resolve_device():
    assert cli.resolve_device("cpu").type == "cpu"
    with pytest.raises(cli.UsageError, match="choose auto, cpu, cuda"):
        cli.resolve_device("tpu")
    import torch

    if not torch.cuda.is_available():
        assert cli.resolve_device("auto").type == "cpu"
        with pytest.raises(cli.UsageError, match="no CUDA GPU"):
            cli.resolve_device("cuda")


def _tool(main, **flags):
    p = cli.make_parser("petlens-test", "a test tool")
    cli.add_json(p)
    return lambda argv: cli.run(p, main, argv, **flags)


def test_run_reports_errors_the_one_way(capsys):
    def broken(args):
        raise FileNotFoundError(2, "No such file or directory", "rex.jpg")

    code, out, err = run_tool(_tool(broken), ["--json"], capsys)
    assert code == 2 and err == "error: rex.jpg: no such file or directory\n"
    assert json.loads(out) == {"error": "rex.jpg: no such file or directory"}

    def multiline(args):
        raise ValueError("first\nsecond")

    code, out, err = run_tool(_tool(multiline), [], capsys)
    assert code == 2 and err == "error: first second\n" and out == ""


def test_run_exit_statuses(capsys):
    class Failed(RuntimeError):
        pass

    def fails(args):
        raise Failed("parity check failed")

    assert run_tool(_tool(fails, failures=(Failed,)), [], capsys)[:2] == (1, "")
    assert run_tool(_tool(lambda a: 3), [], capsys)[0] == 3
    assert run_tool(_tool(lambda a: {"accuracy": 1.0}), [], capsys)[0] == 0

    def interrupted(args):
        raise KeyboardInterrupt

    assert run_tool(_tool(interrupted), [], capsys)[0] == 130

    def bug(args):
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        _tool(bug)([])


def test_positive_and_fraction():
    import argparse

    assert cli.positive(int)("3") == 3
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.positive(int)(bad)
    assert cli.fraction("0.2") == 0.2
    with pytest.raises(argparse.ArgumentTypeError):
        cli.fraction("1.5")


def test_training_imports_nothing_from_the_layers_above():
    """The ground floor: importing every training module pulls in no export/bot/demo module."""
    code = (
        "import importlib, pkgutil, sys, training\n"
        "for m in pkgutil.iter_modules(training.__path__):\n"
        "    importlib.import_module('training.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('export', 'bot', 'demo', 'benchmarks'))\n"
        "print(','.join(bad))\n"
    )
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"training imports upward: {proc.stdout}"
