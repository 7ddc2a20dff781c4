"""`python -m training.calibrate`: OOD statistics fitted into an existing checkpoint."""

import shutil
import subprocess
import sys

import pytest
import torch

from training import read_checkpoint
from training.calibrate import get_args_parser, main
from training.ood import ood_scorer_from_checkpoint


def test_calibrate_stores_a_threshold_that_accepts_most_val_pets(tiny_checkpoint, synthetic_data, tmp_path):
    out = tmp_path / "calibrated.pt"
    summary = main(get_args_parser().parse_args(
        ["--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_data), "--out", str(out)]))
    ckpt = read_checkpoint(out)
    assert ckpt["config"] == read_checkpoint(tiny_checkpoint)["config"]  # the model itself is untouched
    scorer = ood_scorer_from_checkpoint(ckpt)
    assert scorer is not None and scorer.threshold == pytest.approx(summary["threshold"])
    assert summary["method"] == "knn"
    # The conformal threshold sits at or above the 95th percentile of the val scores.
    assert summary["target_tpr"] == 0.95 and 0.95 <= summary["val_tpr"] <= 1.0
    for key in ckpt["state_dict"]:  # same weights
        assert torch.equal(ckpt["state_dict"][key], read_checkpoint(tiny_checkpoint)["state_dict"][key])


def test_calibrate_cli_refuses_mismatched_classes_without_traceback(tiny_checkpoint, synthetic_data, tmp_path):
    data = tmp_path / "other"
    for split in ("train", "val"):
        for label, new in (("cat", "hamster"), ("dog", "rabbit")):
            shutil.copytree(synthetic_data / split / label, data / split / new)
    proc = subprocess.run([sys.executable, "-m", "training.calibrate", "--checkpoint", str(tiny_checkpoint),
                           "--data", str(data), "--out", str(tmp_path / "x.pt")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "hamster" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.pt").exists()
