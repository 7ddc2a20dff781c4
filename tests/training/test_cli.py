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


def _checkpoint_tool_argv(script: str, model: Path, tmp: Path, *, onnx: Path) -> list[str]:
    """``script``'s command line with ``model`` where its torch checkpoint goes."""
    photo = tmp / "photo.png"
    from tests.conftest import synthetic_photo

    synthetic_photo("cat", 0).save(photo)
    return {
        "petlens-evaluate": ["--model", model, "--data", tmp],
        "petlens-fool": ["--model", model, "--target", "cat", "--out", tmp / "out", photo],
        "petlens-ideal": ["--model", model, "--label", "cat", "--out", tmp / "i.png"],
        "petlens-explain": ["--model", model, "--image", photo, "--out", tmp / "out"],
        "petlens-calibrate": ["--model", model, "--data", tmp],
        "petlens-export": ["--model", model, "--out", tmp / "m.onnx"],
        "petlens-demo": ["--model", onnx, "--checkpoint", model],
    }[script]


CHECKPOINT_TOOLS = ["petlens-fool", "petlens-ideal", "petlens-explain", "petlens-calibrate", "petlens-export",
                    "petlens-demo"]


@pytest.mark.parametrize("script", CHECKPOINT_TOOLS)
def test_an_onnx_export_where_the_checkpoint_goes_is_named_plainly(script, tiny_onnx, tmp_path, capsys):
    """`petlens-explain --model models/catsdogs.onnx` answered 'UnpicklingError... Train one'."""
    onnx = tmp_path / "catsdogs.onnx"
    onnx.write_bytes(tiny_onnx.read_bytes())
    code, _, err = run_tool(entry(SCRIPTS[script]), _checkpoint_tool_argv(script, onnx, tmp_path, onnx=tiny_onnx), capsys)
    assert code == 2
    assert err == (f"error: {onnx} is an ONNX export; this tool needs the torch checkpoint (.pt) it was "
                   f"exported from, e.g. {tmp_path / 'catsdogs.pt'}\n")


def test_evaluate_names_an_onnx_file_saved_as_pt(tiny_onnx, tmp_path, capsys):
    """evaluate takes .onnx too; an ONNX file named .pt is still told apart from a checkpoint."""
    renamed = tmp_path / "model.pt"
    renamed.write_bytes(tiny_onnx.read_bytes())
    argv = _checkpoint_tool_argv("petlens-evaluate", renamed, tmp_path, onnx=tiny_onnx)
    code, _, err = run_tool(entry(SCRIPTS["petlens-evaluate"]), argv, capsys)
    assert code == 2 and err == (f"error: {renamed} is an ONNX export; this tool needs the torch checkpoint (.pt) "
                                 "it was exported from, (this file is ONNX despite its name)\n")


NOT_CHECKPOINTS = {
    "folder": "{p} is a folder, not a checkpoint file; did you mean {p}/model.pt?",
    "empty": "{p} is empty (0 bytes), not a checkpoint; give the model (.pt) written by `python -m training`",
    "text": "{p} is not a checkpoint (not a file torch wrote); give the model (.pt) written by `python -m training`",
    "photo": "{p} is not a checkpoint (a PNG image); give the model (.pt) written by `python -m training`",
    "state dict": "{p} is not a petlens checkpoint: it holds bare weights (a state dict) without the config",
}


# (The demo answers a folder itself, in demo/app.py's resolve_model_file, before it reads a checkpoint.)
@pytest.mark.parametrize("script, kind", [(s, k) for s in CHECKPOINT_TOOLS for k in NOT_CHECKPOINTS
                                          if (s, k) != ("petlens-demo", "folder")])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(script, kind, tiny_onnx, tmp_path, capsys):
    import torch

    from tests.conftest import synthetic_photo

    path = tmp_path / ("run" if kind == "folder" else "model.pt")
    if kind == "folder":
        path.mkdir()
        torch.save({}, path / "model.pt")
    elif kind == "empty":
        path.touch()
    elif kind == "text":
        path.write_text("my notes, not a model\n")
    elif kind == "photo":
        synthetic_photo("dog", 1).save(path, format="PNG")
    else:
        torch.save({"features.0.weight": torch.zeros(2, 2)}, path)
    code, _, err = run_tool(entry(SCRIPTS[script]), _checkpoint_tool_argv(script, path, tmp_path, onnx=tiny_onnx), capsys)
    assert code == 2 and err.startswith("error: " + NOT_CHECKPOINTS[kind].format(p=path)), err
    assert "Error)" not in err  # no exception class names: "(KeyError)", "(UnpicklingError)", ...


def _out_argv(script: str, out: Path, tmp: Path, model: Path) -> list:
    from tests.conftest import synthetic_photo

    photo = tmp / "rex.jpg"
    synthetic_photo("dog", 0).save(photo)
    return {
        "petlens-fool": ["--model", model, "--target", "cat", "--out", out, photo],
        "petlens-explain": ["--model", model, "--image", photo, "--out", out],
        "petlens-train": ["--data", tmp, "--out", out, "--weights", "none"],
        "petlens-ideal": ["--model", model, "--label", "cat", "--out", out],
        "petlens-calibrate": ["--model", model, "--data", tmp, "--out", out],
    }[script]


FOLDER_CONTENTS = {
    "petlens-fool": "<photo name>-cat.png",
    "petlens-explain": "<photo name>-gradcam.png and <photo name>-features-<layer>.png",
    "petlens-train": "model.pt, metrics.json, curves.png and confusion.png",
}


@pytest.mark.parametrize("script", sorted(FOLDER_CONTENTS))
@pytest.mark.parametrize("kind", ["image name", "existing file"])
def test_an_out_folder_that_is_a_file_name_is_refused(script, kind, tiny_checkpoint, tmp_path, capsys):
    """`--out cat.png` made a folder named cat.png; an existing file failed after all the work."""
    out = tmp_path / "cat.png"
    if kind == "existing file":
        out = tmp_path / "notes.txt"
        out.write_text("keep me")
    code, _, err = run_tool(entry(SCRIPTS[script]), _out_argv(script, out, tmp_path, tiny_checkpoint), capsys)
    why = "looks like a file name" if kind == "image name" else "is an existing file"
    assert code == 2 and err == (f"error: --out is a folder: the files inside it are named {FOLDER_CONTENTS[script]}; "
                                 f"{out} {why}. Give a folder, e.g. --out {out.with_suffix('')}/\n")
    assert not out.is_dir()


@pytest.mark.parametrize("script, example, suffix", [("petlens-ideal", "ideal_cat.png", ".png"),
                                                     ("petlens-calibrate", "tiny.pt", ".pt")])
def test_an_out_file_that_is_a_folder_or_has_the_wrong_suffix_is_refused(script, example, suffix, tiny_checkpoint,
                                                                        tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    code, _, err = run_tool(entry(SCRIPTS[script]), _out_argv(script, folder, tmp_path, tiny_checkpoint), capsys)
    assert code == 2 and err == (f"error: --out is the file to write, and {folder} is a folder; give a file name, "
                                 f"e.g. --out {folder / example}\n")
    jpg = tmp_path / "ideal.jpg"
    code, _, err = run_tool(entry(SCRIPTS[script]), _out_argv(script, jpg, tmp_path, tiny_checkpoint), capsys)
    assert code == 2 and err == f"error: --out must end in {suffix}, got {jpg}; e.g. --out {jpg.with_suffix(suffix)}\n"
    assert not jpg.exists()


def _wrong_input_cases(tmp: Path, ckpt: Path, data: Path) -> dict[str, tuple[str, list, str]]:
    """name -> (console script, argv, the whole error line after 'error: ')."""
    from tests.conftest import synthetic_photo

    folder, notes, photo = tmp / "folder", tmp / "notes.txt", tmp / "photo.png"
    folder.mkdir()
    notes.write_text("not a model, not photos\n")
    synthetic_photo("cat", 0).save(photo)
    junk_weights = tmp / "weights.pth"
    junk_weights.write_text("not weights")
    return {
        "evaluate --model folder": ("petlens-evaluate", ["--model", folder, "--data", folder],
                                    f"--model {folder} is a folder; give the model file (.pt or .onnx)"),
        "evaluate --data file": ("petlens-evaluate", ["--model", ckpt, "--data", notes],
                                 f"--data must be a folder of photos, got a file: {notes}"),
        "evaluate --ood file": ("petlens-evaluate", ["--model", ckpt, "--data", folder, "--ood", notes],
                                f"--ood must be a folder of photos, got a file: {notes}"),
        "train --weights folder": ("petlens-train", ["--data", folder, "--out", tmp / "run", "--weights", folder],
                                   f"--weights {folder} is a folder; give the weights file (imagenet, none, or PATH "
                                   "to a state dict in torchvision layout)"),
        "train --weights missing": ("petlens-train", ["--data", folder, "--out", tmp / "run", "--weights", tmp / "w.pth"],
                                    f"--weights {tmp / 'w.pth'}: not found (imagenet, none, or PATH to a state dict "
                                    "in torchvision layout)"),
        "calibrate --weights junk": ("petlens-calibrate", ["--model", ckpt, "--data", data, "--weights", junk_weights],
                                 f"{junk_weights} is not a PyTorch state dict: torch cannot read it as one (not a file "
                                 "torch.save wrote, damaged, or holding more than tensors)."),
        "ideal --imagenet-weights folder": ("petlens-ideal", ["--imagenet-arch", "resnet18", "--imagenet-weights", folder,
                                                              "--label", "zebra", "--out", tmp / "z.png"],
                                            f"--imagenet-weights {folder} is a folder; give the state dict file"),
        "demo --model checkpoint": ("petlens-demo", ["--model", ckpt, "--checkpoint", ckpt],
                                    f"{ckpt} is a torch checkpoint; this needs the ONNX model exported from it: "
                                    f"`python -m export --checkpoint {ckpt} --out {ckpt.with_suffix('.onnx')}`"),
        "demo --model text": ("petlens-demo", ["--model", notes, "--checkpoint", ckpt],
                              f"{notes} is not an ONNX model; give one written by `python -m export`, "
                              "e.g. models/catsdogs.onnx"),
        "demo --model photo": ("petlens-demo", ["--model", photo, "--checkpoint", ckpt],
                               f"{photo} is a PNG image, not an ONNX model; give the model, e.g. models/catsdogs.onnx"),
        "evaluate --model checkpoint named .onnx": (
            "petlens-evaluate", ["--model", tmp / "ckpt.onnx", "--data", folder],
            f"{tmp / 'ckpt.onnx'} is a torch checkpoint; this needs the ONNX model exported from it: "
            f"`python -m export --checkpoint {tmp / 'ckpt.onnx'} --out {tmp / 'ckpt-exported.onnx'}`"),
    }


WRONG_INPUTS = [
    "evaluate --model folder", "evaluate --data file", "evaluate --ood file", "train --weights missing",
    "train --weights folder",
    "calibrate --weights junk", "ideal --imagenet-weights folder", "demo --model checkpoint", "demo --model text",
    "demo --model photo", "evaluate --model checkpoint named .onnx"]


@pytest.mark.parametrize("case", WRONG_INPUTS)
def test_a_wrong_file_or_folder_is_one_line_in_our_words(case, tiny_checkpoint, synthetic_data, tmp_path, capsys):
    """What a first try at each tool hit (a folder, a file, the other model format, junk):
    one `error:` line naming what is wrong, before any long work, and no traceback."""
    (tmp_path / "ckpt.onnx").write_bytes(tiny_checkpoint.read_bytes())
    script, argv, message = _wrong_input_cases(tmp_path, tiny_checkpoint, synthetic_data)[case]
    code, out, err = run_tool(entry(SCRIPTS[script]), argv, capsys)
    assert code == 2 and err == f"error: {message}\n"
    assert "data:" not in out  # train: refused before the photos were even checked
