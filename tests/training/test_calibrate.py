"""`python -m training.calibrate`: OOD statistics fitted into an existing checkpoint."""

import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

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
    # ... and the middle answer's cut-off ("probably a dog, but ...") at the 98% one, above it.
    assert summary["refuse_tpr"] == 0.98 and summary["val_not_refused"] >= 0.98
    assert scorer.refuse_threshold == pytest.approx(summary["refuse_threshold"])
    assert scorer.refuse_threshold >= scorer.threshold
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


def test_calibrate_with_the_starting_weights_scores_the_pretrained_features(tiny_checkpoint, synthetic_data, tmp_path):
    """A fine-tuned model calibrated with ``--weights`` (what it was fine-tuned from) stores
    the pretrained blocks; its scores are the pretrained features' scores."""
    from tests.conftest import LABELS, finetuned_copy, synthetic_photo
    from training import load_checkpoint, save_checkpoint
    from training.ood import ScoreFeatures, fit_ood
    from training.presets import preprocess_batch

    pretrained, labels = load_checkpoint(tiny_checkpoint)
    weights = tmp_path / "start.pth"  # torchvision layout, as `python -m training --weights PATH` takes
    torch.save({f"features.{k}": v for k, v in pretrained.trunk.state_dict().items()}, weights)
    tuned = finetuned_copy(pretrained, len(pretrained.trunk) - 2)
    ckpt = save_checkpoint(tmp_path / "tuned.pt", tuned, labels)

    summary = main(get_args_parser().parse_args(["--checkpoint", str(ckpt), "--data", str(synthetic_data),
                                                 "--weights", str(weights)]))
    assert summary["reference_from"] == len(pretrained.trunk) - 2
    state = read_checkpoint(ckpt)["extra"]["ood"]
    model, _ = load_checkpoint(ckpt)
    photos = [synthetic_photo(label, 7000 + s) for label in LABELS for s in range(4)]
    x = torch.from_numpy(preprocess_batch(photos))
    with torch.no_grad():
        _, scored = ScoreFeatures(model, state).eval()(x)
        torch.testing.assert_close(scored, pretrained.embed(x), rtol=1e-5, atol=1e-6)
    # Same threshold as fitting the pretrained model's own features directly.
    def embed(split):
        files = [(f, y) for y, label in enumerate(labels) for f in sorted((synthetic_data / split / label).iterdir())]
        with torch.no_grad():
            x = torch.from_numpy(preprocess_batch([Image.open(f).convert("RGB") for f, _ in files]))
            return pretrained.embed(x), torch.tensor([y for _, y in files])

    (tr, ytr), (va, _) = embed("train"), embed("val")
    assert summary["threshold"] == pytest.approx(fit_ood(tr, ytr, va)["threshold"], rel=1e-4)


def test_calibrate_refuses_weights_none_and_foreign_weights_clearly(tiny_checkpoint, synthetic_data, tmp_path):
    for weights, message in (("none", "no pretrained features"), (str(tmp_path / "missing.pth"), "not found")):
        proc = subprocess.run([sys.executable, "-m", "training.calibrate", "--checkpoint", str(tiny_checkpoint),
                               "--data", str(synthetic_data), "--weights", weights, "--out", str(tmp_path / "x.pt")],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.pt").exists()


def test_calibrate_notes_weights_the_model_did_not_start_from(tiny_checkpoint, synthetic_data, tmp_path, capsys):
    from training import build_model

    torch.manual_seed(123)  # another random start than the tiny model's: every block differs
    weights = tmp_path / "other.pth"
    torch.save({f"features.{k}": v for k, v in build_model("mobilenet_v3_small", 2).trunk.state_dict().items()}, weights)
    summary = main(get_args_parser().parse_args(["--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_data),
                                                 "--weights", str(weights), "--out", str(tmp_path / "x.pt")]))
    assert summary["reference_from"] == 0
    assert "not the weights it was fine-tuned from" in capsys.readouterr().err


def test_calibrate_refuses_a_refuse_rate_below_the_accept_rate(tiny_checkpoint, synthetic_data, tmp_path, capsys):
    from tests.conftest import run_tool
    from training.calibrate import cli

    code, _, err = run_tool(cli, ["--model", tiny_checkpoint, "--data", synthetic_data, "--out", tmp_path / "x.pt",
                                  "--target-tpr", "0.95", "--refuse-tpr", "0.9"], capsys)
    assert code == 2 and "--refuse-tpr (0.9) must be at least --target-tpr (0.95)" in err
    assert not (tmp_path / "x.pt").exists()
