"""``python -m training`` under torchrun: 2 CPU processes (gloo) behave like one."""

from __future__ import annotations

import json

import pytest

from training.__main__ import get_args_parser, main

FAST = ["--arch", "mobilenet_v3_small", "--weights", "none", "--workers", "0", "--batch-size", "8",
        "--device", "cpu"]


def torchrun(helpers, *argv):
    proc = helpers.run_module("torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "training", *map(str, argv), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_process_head_training_matches_one_process(helpers, synthetic_data, tmp_path):
    args = ["--data", synthetic_data, "--mode", "head", "--epochs", "12", *FAST]
    proc = torchrun(helpers, "--out", tmp_path / "ddp", *args)
    one = main(get_args_parser().parse_args([*map(str, args), "--out", str(tmp_path / "one")]))

    # Rank 0 alone writes: one checkpoint, one set of files, one summary line.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "confusion.png", "curves.png", "metrics.json", "model.pt"]
    assert proc.stdout.count("best epoch") == 1
    two = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    # Every rank's share is counted: all 48 training and 24 val images, not half.
    assert all(h["train_images"] == 48 for h in two["history"])
    assert two["n_val"] == 24 and sum(map(sum, two["confusion"])) == 24
    # Same task, same data: the same accuracy within noise (2 of 24 images).
    assert two["val_accuracy"] >= 0.9 and one["val_accuracy"] >= 0.9
    assert abs(two["val_accuracy"] - one["val_accuracy"]) <= 2 / 24


@pytest.mark.slow
def test_two_process_finetune_writes_one_checkpoint(helpers, tmp_path):
    helpers.write_imagefolder(tmp_path / "data" / "train", 4)
    # 9 val images in batches of 4: the ranks evaluate 2 and 1 batches, which must not hang.
    helpers.write_imagefolder(tmp_path / "data" / "val", 5, seed0=1000, labels=["cat"])
    helpers.write_imagefolder(tmp_path / "data" / "val", 4, seed0=1000, labels=["dog"])
    torchrun(helpers, "--data", tmp_path / "data", "--out", tmp_path / "ddp", "--mode", "finetune",
             "--epochs", "1", *FAST, "--batch-size", "2")
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["mode"] == "finetune"
    assert metrics["history"][0]["train_images"] == 8 and metrics["n_val"] == 9
    from training import load_checkpoint

    model, labels = load_checkpoint(tmp_path / "ddp" / "model.pt")  # a plain model, no DDP "module." keys
    assert labels == ["cat", "dog"]
