"""A breed in every answer: the second head, its data, its loss, TF padding and folded BatchNorm.

The two-head model is trained in the session on generated photos (``tiny_breeds_run``: cat
discs and dog squares, the second breed of each species with a black bar), so nothing here
needs ``../shared``.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import BREED_SPECIES, BREEDS, LABELS, breed_photo
from training import build_model, load_checkpoint, read_checkpoint, save_checkpoint
from training.breeds import OXFORD_CATS, OXFORD_DOGS, bank_groups, breed_species
from training.checkpoint import BreedsError, LoadedCheckpoint
from training.data import DatasetError
from training.engine import set_trainable, train_mode
from training.heads import NO_BREED, HeadsLoss
from training.model import TFSamePadConv2d, apply_tf_padding, has_folded_batchnorm
from training.presets import preprocess_batch


def test_both_heads_learn_the_synthetic_task(tiny_breeds_run):
    out, metrics = tiny_breeds_run
    # Chance is 50% for the label and 25% for the breed; a random frozen trunk does far better.
    assert metrics["val_accuracy"] >= 0.9 and metrics["breed_accuracy"] >= 0.75
    assert metrics["breeds"] == BREEDS and metrics["breed_species"] == BREED_SPECIES
    assert metrics["n_val"] == 24 + 24 and metrics["n_val_breeds"] == 24
    assert sum(map(sum, metrics["breed_confusion"])) == 24 and set(metrics["breed_per_class"]) == set(BREEDS)
    assert set(metrics["val_accuracy_by_set"]) == {"data", "breeds"}
    assert json.loads((out / "metrics.json").read_text())["breed_top3"] == metrics["breed_top3"] >= metrics["breed_accuracy"]
    with Image.open(out / "breeds-confusion.png") as im:
        assert im.format == "PNG" and im.width >= 300


def test_checkpoint_records_the_breeds_and_their_species(tiny_breeds_run):
    out, metrics = tiny_breeds_run
    loaded = load_checkpoint(out / "model.pt")
    assert isinstance(loaded, LoadedCheckpoint)
    model, labels = loaded  # what every caller before breeds wrote
    assert model is loaded.model and labels == loaded.labels == LABELS
    assert loaded.breeds == BREEDS and loaded.breed_species == BREED_SPECIES
    assert loaded.image_size == model.image_size == 224 and loaded.config["padding"] == "torch"
    assert loaded.metrics["breed_accuracy"] == metrics["breed_accuracy"]
    assert loaded.ood_state is model.ood_state and loaded.ood_scorer() is not None
    # The bank covers every breed and the photos without one (6 groups), thresholds on --data's val only.
    assert loaded.ood_state["n_val"] == 24 and loaded.ood_state["n_train"] == 48 + 48

    # The breed head tells fresh photos' breeds, from one pass with the label head.
    photos = [breed_photo(b, 3000 + i) for b in BREEDS for i in range(5)]
    x = torch.from_numpy(preprocess_batch(photos))
    with torch.inference_mode():
        logits, breed_logits = model.heads(x)
        assert torch.equal(logits, model(x))  # forward stays the label head's logits
    truth = torch.tensor([BREEDS.index(b) for b in BREEDS for _ in range(5)])
    assert (breed_logits.argmax(1) == truth).float().mean() >= 0.6


def test_a_checkpoint_from_before_breeds_still_loads(tiny_checkpoint, tmp_path):
    raw = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    for key in ("breeds", "breed_species", "padding"):
        raw["config"].pop(key, None)
    old = tmp_path / "old.pt"
    torch.save(raw, old)
    loaded = load_checkpoint(old)
    model, labels = loaded
    assert loaded.breeds == [] and loaded.breed_species == [] and model.breed_head is None and model.num_breeds == 0
    assert model.padding == "torch" and labels == LABELS and loaded.ood_state is None and loaded.ood_scorer() is None
    with pytest.raises(ValueError, match="no breed head"):
        model.heads(torch.rand(1, 3, 64, 64))


def test_saving_checks_the_breeds_fit_the_model(tmp_path):
    model = build_model("mobilenet_v3_small", 2, num_breeds=4)
    with pytest.raises(BreedsError, match="4 classes, but 3 breeds"):
        save_checkpoint(tmp_path / "m.pt", model, LABELS, breeds=BREEDS[:3], breed_species=BREED_SPECIES[:3])
    with pytest.raises(BreedsError, match="not a label"):
        save_checkpoint(tmp_path / "m.pt", model, LABELS, breeds=BREEDS, breed_species=["cat", "cat", "dog", "fox"])
    save_checkpoint(tmp_path / "m.pt", model, LABELS, breeds=BREEDS, breed_species=BREED_SPECIES)
    assert read_checkpoint(tmp_path / "m.pt")["config"]["breeds"] == BREEDS


def test_oxford_rule_and_json_mapping(tmp_path):
    assert len(OXFORD_CATS) == 12 and len(OXFORD_DOGS) == 25
    # The folder spelling and torchvision's both map.
    assert breed_species(["Maine_Coon", "american_bulldog", "American Bulldog", "maine coon"], ["cat", "dog"]) == \
        ["cat", "dog", "dog", "cat"]
    with pytest.raises(DatasetError, match="no species for breed.*corgi"):
        breed_species(["beagle", "corgi"], ["cat", "dog"])
    with pytest.raises(DatasetError, match="maps breeds to cat and dog"):
        breed_species(["beagle"], ["hamster", "rabbit"])
    mapping = tmp_path / "species.json"
    mapping.write_text(json.dumps({"corgi": "dog", "Tabby": "cat"}))
    assert breed_species(["tabby", "corgi"], ["cat", "dog"], mapping) == ["cat", "dog"]
    mapping.write_text(json.dumps({"corgi": "wolf"}))
    with pytest.raises(DatasetError, match="maps breeds to wolf"):
        breed_species(["corgi"], ["cat", "dog"], mapping)
    assert bank_groups([("a", (0, NO_BREED)), ("b", (1, 2))], 4) == [("a", 4), ("b", 2)]


def test_heads_loss_ignores_photos_without_a_breed():
    torch.manual_seed(0)
    logits, breeds = torch.randn(6, 2), torch.randn(6, 4)
    y = torch.tensor([[0, NO_BREED], [1, NO_BREED], [0, 1], [1, 3], [0, 0], [1, NO_BREED]])
    loss = HeadsLoss()((logits, breeds), y)
    has = y[:, 1] != NO_BREED
    want = F.cross_entropy(logits, y[:, 0]) + F.cross_entropy(breeds[has], y[has, 1])
    assert torch.allclose(loss, want)
    none = torch.tensor([[0, NO_BREED], [1, NO_BREED]])  # a batch of cat/dog photos only: no NaN
    assert torch.allclose(HeadsLoss()((logits[:2], breeds[:2]), none), F.cross_entropy(logits[:2], none[:, 0]))


@pytest.mark.parametrize("size", [224, 225, 7, 8])
def test_tf_same_padding_pads_the_odd_pixel_at_the_end(size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(2, 3, size, size)
    same = TFSamePadConv2d(3, 4, 3, stride=2, padding=0)
    same.load_state_dict(conv.state_dict())
    out = same(x)
    assert out.shape[-1] == -(-size // 2)  # ceil(size / stride), as TensorFlow's "SAME"
    total = max((out.shape[-1] - 1) * 2 + 3 - size, 0)
    ref = F.conv2d(F.pad(x, (total // 2, total - total // 2) * 2), conv.weight, conv.bias, stride=2)
    assert torch.allclose(out, ref, atol=1e-6)


def test_tf_padding_changes_the_strided_convolutions_only():
    model = build_model("mobilenet_v2", 2, padding="tf")
    changed = [name for name, m in model.trunk.named_modules() if isinstance(m, TFSamePadConv2d)]
    # MobileNetV2: the stem and the depthwise convolutions of blocks 2, 4, 7 and 14.
    assert changed == ["0.0", "2.conv.1.0", "4.conv.1.0", "7.conv.1.0", "14.conv.1.0"]
    assert set(model.state_dict()) == set(build_model("mobilenet_v2", 2).state_dict())
    assert apply_tf_padding(model.trunk) == []  # already done: nothing left to change
    with pytest.raises(ValueError, match="unknown padding"):
        build_model("mobilenet_v2", 2, padding="same")


def _fold(model) -> None:
    """BatchNorm as TensorFlow folds it: identity statistics, the shift kept in the bias."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1 - m.eps)
                m.weight.fill_(1.0)
                m.bias.normal_()


def test_folded_batchnorm_is_detected_and_stays_frozen():
    model = build_model("mobilenet_v3_small", 2, num_breeds=4)
    assert not has_folded_batchnorm(model.trunk)  # a fresh model: identity statistics but no shift
    _fold(model)
    assert has_folded_batchnorm(model.trunk)
    trainable = set_trainable(model, "late")
    train_mode(model, trainable, freeze_bn=True)
    norms = [m for b in trainable for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert model.breed_head.training and all(p.requires_grad for p in model.breed_head.parameters())
    train_mode(model, trainable)
    assert all(m.training for m in norms)


def test_finetune_with_breeds_tf_padding_and_folded_batchnorm(tmp_path, synthetic_data, breeds_data):
    from training.__main__ import get_args_parser, main

    torch.manual_seed(3)
    start = build_model("mobilenet_v3_small", 2)
    _fold(start)
    weights = tmp_path / "folded.pth"
    torch.save({f"features.{k}": v for k, v in start.trunk.state_dict().items()}, weights)
    small = tmp_path / "small"  # backward passes are slow on a CPU: a few photos per breed
    for split, n in (("train", 3), ("val", 2)):
        for breed in BREEDS:
            (small / split / breed).mkdir(parents=True)
            for i in range(n):
                breed_photo(breed, 50 + i).save(small / split / breed / f"{breed}_{i}.png")
    out = tmp_path / "ft"
    argv = ["--data", synthetic_data, "--breeds", small, "--out", out, "--mode", "finetune", "--epochs", "2",
            "--arch", "mobilenet_v3_small", "--weights", weights, "--workers", "0", "--batch-size", "16",
            "--padding", "tf", "--crop-ratio", "0.6", "1.67", "--keep", "last"]
    metrics = main(get_args_parser().parse_args([str(a) for a in argv]))
    assert metrics["batchnorm"] == "frozen" and metrics["padding"] == "tf" and metrics["crop_ratio"] == [0.6, 1.67]
    assert metrics["keep"] == "last" and metrics["best_epoch"] == 2 and len(metrics["history"]) == 2
    assert "val_breed_accuracy" in metrics["history"][-1]
    loaded = load_checkpoint(out / "model.pt")
    assert loaded.breeds == BREEDS and loaded.config["padding"] == "tf"
    assert any(isinstance(m, TFSamePadConv2d) for m in loaded.model.modules())
    # Frozen BatchNorm: the trained blocks' statistics are the folded ones still.
    for m in loaded.model.trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert float(m.running_mean.abs().max()) == 0.0


def test_bad_breed_flags_are_one_clear_line(capsys, tmp_path, synthetic_data, helpers):
    from tests.conftest import run_tool
    from training.__main__ import cli

    unknown = tmp_path / "unknown"
    helpers.write_imagefolder(unknown / "train", 2, labels=["corgi", "beagle"])
    base = ["--data", synthetic_data, "--out", tmp_path / "run", "--arch", "mobilenet_v3_small", "--weights", "none",
            "--workers", "0"]
    code, _, err = run_tool(cli, [*base, "--breeds", unknown], capsys)
    assert code == 2 and "no species for breed(s) corgi" in err and "--breed-species" in err
    code, _, err = run_tool(cli, [*base, "--breeds", unknown, "--crop-ratio", "2", "1"], capsys)
    assert code == 2 and "LOW <= HIGH" in err
