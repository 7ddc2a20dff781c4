"""``python -m training`` end to end on generated photos (mobilenet_v3_small, random init)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from training import load_checkpoint, read_checkpoint
from training.__main__ import cli, get_args_parser, main
from training.evaluate import evaluate_model, load_predictor

FAST = ["--arch", "mobilenet_v3_small", "--weights", "none", "--workers", "0", "--batch-size", "16"]


def train(*argv) -> dict:
    return main(get_args_parser().parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def head_run(synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("head_run")
    metrics = train("--data", synthetic_data, "--out", out, "--mode", "head", "--epochs", "15", *FAST)
    return out, metrics


def test_head_training_learns_the_synthetic_task(head_run):
    out, metrics = head_run
    # A random frozen trunk still separates warm discs from cool squares; chance is 50%.
    assert metrics["val_accuracy"] >= 0.9
    assert metrics["n_val"] == 24 and sum(map(sum, metrics["confusion"])) == 24
    assert metrics["labels"] == ["cat", "dog"] and set(metrics["per_class"]) == {"cat", "dog"}
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["val_accuracy"] == metrics["val_accuracy"]
    assert len(on_disk["history"]) == 15 and on_disk["mode"] == "head"
    best = on_disk["history"][on_disk["best_epoch"] - 1]
    assert best["val_accuracy"] == max(h["val_accuracy"] for h in on_disk["history"])


def test_best_checkpoint_reproduces_its_val_accuracy(head_run, synthetic_data):
    out, metrics = head_run
    raw = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert raw["config"]["labels"] == ["cat", "dog"] and raw["config"]["arch"] == "mobilenet_v3_small"
    assert raw["metrics"]["val_accuracy"] == metrics["val_accuracy"]
    # Every run carries calibrated "is it a pet?" statistics (kNN bank + threshold).
    ood = raw["extra"]["ood"]
    assert ood["method"] == "knn" and ood["n_train"] == 48 and ood["val_tpr"] >= 0.95
    assert json.loads((out / "metrics.json").read_text())["ood"]["threshold"] == ood["threshold"]
    # The head was trained on standardized features; the folded weights must give the
    # same predictions on raw images as the training run measured.
    predict, labels = load_predictor(out / "model.pt", "cpu")
    again = evaluate_model(predict, labels, synthetic_data / "val")
    assert again["accuracy"] == metrics["val_accuracy"]
    assert again["confusion"] == metrics["confusion"]


def test_plots_are_written(head_run):
    out, _ = head_run
    for name in ("curves.png", "confusion.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width >= 300 and im.height >= 300


def test_finetune_trains_late_blocks_only(tmp_path, helpers):
    from training import build_model

    data = tmp_path / "data"  # a smaller set than synthetic_data: backward passes are slow on CPU
    helpers.write_imagefolder(data / "train", 8)
    helpers.write_imagefolder(data / "val", 4, seed0=1000)

    torch.manual_seed(3)
    start = build_model("mobilenet_v3_small", 2).trunk
    weights = tmp_path / "start.pth"
    torch.save({f"features.{k}": v for k, v in start.state_dict().items()}, weights)
    out = tmp_path / "ft"
    metrics = train("--data", data, "--out", out, "--mode", "finetune", "--epochs", "1",
                    *FAST[:2], "--weights", weights, *FAST[4:])
    assert metrics["mode"] == "finetune" and metrics["unfreeze"] == "late" and len(metrics["history"]) == 1
    model, _ = load_checkpoint(out / "model.pt")
    blocks, before = list(model.trunk.children()), list(start.children())
    for b, s in zip(blocks[:3], before[:3]):  # early blocks: frozen, BatchNorm statistics too
        for (k, v), (_, w) in zip(b.state_dict().items(), s.state_dict().items()):
            assert torch.equal(v, w), k
    assert not torch.equal(blocks[-1][0].weight, before[-1][0].weight)  # the last block trained

    # The "is it a pet?" statistics keep the starting weights of the blocks that trained,
    # so the score reads pretrained features (training/ood.py).
    ood = read_checkpoint(out / "model.pt")["extra"]["ood"]
    first_trained = next(i for i, (b, s) in enumerate(zip(blocks, before))
                         if any(not torch.equal(v, w) for v, w in zip(b.state_dict().values(), s.state_dict().values())))
    assert ood["reference_from"] == first_trained == metrics["ood"]["reference_from"]
    start_state = start.state_dict()
    assert all(torch.equal(v, start_state[k]) for k, v in ood["reference_weights"].items())


def test_petimages_run_counts_skipped_files(petimages_root, tmp_path):
    metrics = train("--data", petimages_root, "--out", tmp_path / "pets", "--epochs", "2", *FAST)
    assert metrics["data"]["layout"] == "petimages"
    assert metrics["data"]["skipped"] == 3
    assert metrics["data"]["n_train"] + metrics["data"]["n_val"] == 12


def _fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = re.split(r"[\r\n]+", err.strip())[-1]  # progress bars may come before it
    assert last.startswith("error: ") and "Traceback" not in err
    return last


def test_bad_inputs_are_one_clear_line(capsys, tmp_path, helpers, synthetic_data):
    out = ["--out", tmp_path / "run", *FAST]
    assert "not found" in _fails(capsys, "--data", tmp_path / "nope", *out)
    (tmp_path / "empty").mkdir()
    assert "no images found" in _fails(capsys, "--data", tmp_path / "empty", *out)
    helpers.write_imagefolder(tmp_path / "one" / "train", 3, labels=["cat"])
    assert "at least 2 classes" in _fails(capsys, "--data", tmp_path / "one", *out)
    bad = helpers.write_imagefolder(tmp_path / "bad" / "train", 3)
    for f in (bad / "dog").iterdir():
        f.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert "no usable images for class(es) dog" in _fails(capsys, "--data", tmp_path / "bad", *out)
    junk = tmp_path / "weights.pth"
    junk.write_text("definitely not weights")
    err = _fails(capsys, "--data", synthetic_data, "--out", tmp_path / "run", "--weights", junk,
                 "--arch", "mobilenet_v3_small", "--workers", "0")
    assert "not a PyTorch state dict" in err


def test_cuda_asked_without_gpu_is_a_clear_error(capsys, synthetic_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "no CUDA GPU" in _fails(capsys, "--data", synthetic_data, "--out", tmp_path, "--device", "cuda", *FAST)


def test_command_line_error_has_no_traceback(helpers, tmp_path):
    proc = helpers.run_module("training", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "error: data folder not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_finetune_with_amp_and_channels_last(synthetic_data, tmp_path):
    from training import build_model
    from training.ood import ClassifierWithOOD, ood_scorer_from_checkpoint
    from training.presets import preprocess_batch

    torch.manual_seed(3)
    weights = tmp_path / "start.pth"  # a pretrained start, so the OOD reference blocks are fitted on the GPU too
    torch.save({f"features.{k}": v for k, v in build_model("mobilenet_v3_small", 2).trunk.state_dict().items()}, weights)
    metrics = train("--data", synthetic_data, "--out", tmp_path / "gpu", "--mode", "finetune", "--epochs", "2",
                    "--device", "cuda", *FAST[:2], "--weights", weights, *FAST[4:])
    assert metrics["device"] == "cuda" and metrics["precision"] in ("bf16", "fp16")
    assert metrics["ood"]["reference_from"] > 0
    model, _ = load_checkpoint(tmp_path / "gpu" / "model.pt", "cpu")  # trained on GPU, loads on CPU
    assert next(model.parameters()).device.type == "cpu"
    # The scores the GPU fitted are the scores a CPU computes: the val photos pass at the stated rate.
    scorer = ood_scorer_from_checkpoint(read_checkpoint(tmp_path / "gpu" / "model.pt"))
    val = [f for d in sorted((synthetic_data / "val").iterdir()) for f in sorted(d.iterdir())]
    x = torch.from_numpy(preprocess_batch([Image.open(f).convert("RGB") for f in val]))
    with torch.no_grad():
        _, scores = ClassifierWithOOD(model, scorer).eval()(x)
    assert (scores <= scorer.threshold).double().mean() == pytest.approx(metrics["ood"]["val_tpr"], abs=0.05)
