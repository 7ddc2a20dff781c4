"""``python -m training.evaluate`` on .pt and .onnx models."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from training import load_checkpoint
from training.evaluate import cli
from training.presets import preprocess


def evaluate_json(capsys, *argv) -> dict:
    cli([*map(str, argv), "--json", "--workers", "0"])
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def reference(checkpoint, folder) -> tuple[float, dict]:
    """Accuracy computed by hand: load_checkpoint + preprocess on every file."""
    model, labels = load_checkpoint(checkpoint)
    correct, per_class = 0, {}
    for y, label in enumerate(labels):
        files = sorted((folder / label).iterdir())
        x = torch.from_numpy(np.stack([preprocess(Image.open(f).convert("RGB")) for f in files]))
        with torch.inference_mode():
            hits = int((model(x).argmax(1) == y).sum())
        correct += hits
        per_class[label] = hits / len(files)
    return correct, per_class


def test_cli_json_matches_a_hand_computed_accuracy(helpers, tiny_checkpoint, synthetic_data):
    proc = helpers.run_module("training.evaluate", "--model", str(tiny_checkpoint),
                              "--data", str(synthetic_data / "val"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    correct, per_class = reference(tiny_checkpoint, synthetic_data / "val")
    assert result["n"] == 24
    assert result["accuracy"] == pytest.approx(correct / 24, abs=1e-5)
    assert result["per_class"] == pytest.approx(per_class, abs=1e-5)
    assert result["accuracy"] >= 0.9  # the fixture model classifies the synthetic set
    assert sum(map(sum, result["confusion"])) == 24


def test_dataset_root_means_its_val_folder(capsys, tiny_checkpoint, synthetic_data):
    a = evaluate_json(capsys, "--model", tiny_checkpoint, "--data", synthetic_data)
    b = evaluate_json(capsys, "--model", tiny_checkpoint, "--data", synthetic_data / "val")
    assert a == b


def test_folder_names_match_labels_ignoring_case_and_bad_files_are_counted(capsys, tmp_path, tiny_checkpoint, synthetic_data):
    shutil.copytree(synthetic_data / "val" / "cat", tmp_path / "Cat")
    shutil.copytree(synthetic_data / "val" / "dog", tmp_path / "DOG")
    (tmp_path / "DOG" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = evaluate_json(capsys, "--model", tiny_checkpoint, "--data", tmp_path)
    assert result["n"] == 24 and result["skipped"] == 1
    assert set(result["per_class"]) == {"cat", "dog"}


def test_onnx_model_scores_like_its_checkpoint(capsys, tiny_checkpoint, tiny_onnx, synthetic_data):
    pt = evaluate_json(capsys, "--model", tiny_checkpoint, "--data", synthetic_data / "val")
    onnx = evaluate_json(capsys, "--model", tiny_onnx, "--data", synthetic_data / "val")
    assert onnx["n"] == pt["n"] and onnx["confusion"] == pt["confusion"]
    assert onnx["accuracy"] == pt["accuracy"]


def _fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli([*map(str, argv), "--workers", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = re.split(r"[\r\n]+", err.strip())[-1]
    assert last.startswith("error: ") and "Traceback" not in err
    return last


def test_unusable_inputs_are_one_clear_line(capsys, tmp_path, tiny_checkpoint, synthetic_data, helpers):
    assert "model not found" in _fails(capsys, "--model", tmp_path / "nope.pt", "--data", synthetic_data)
    (tmp_path / "model.h5").write_bytes(b"x")
    assert ".pt checkpoint or an .onnx" in _fails(capsys, "--model", tmp_path / "model.h5", "--data", synthetic_data)
    (tmp_path / "fake.pt").write_bytes(b"not torch")
    assert "not a checkpoint" in _fails(capsys, "--model", tmp_path / "fake.pt", "--data", synthetic_data)
    assert "not found" in _fails(capsys, "--model", tiny_checkpoint, "--data", tmp_path / "missing")
    helpers.write_imagefolder(tmp_path / "zoo", 1, labels=["cat", "hamster"])
    assert "hamster" in _fails(capsys, "--model", tiny_checkpoint, "--data", tmp_path / "zoo")
