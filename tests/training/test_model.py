"""Model building for every architecture, weights files, freezing, checkpoints."""

from __future__ import annotations

import pytest
import torch

from training import ARCHS, build_model, load_checkpoint, read_checkpoint, save_checkpoint
from training.checkpoint import CheckpointError
from training.engine import set_trainable, train_mode
from training.model import WeightsError


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_and_runs_at_tiny_size(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3, weights="none").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        logits, feats = model(x), model.embed(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert feats.shape == (2, model.feature_dim)
    assert set(model.stages()) == {"early", "middle", "late"}
    # "late" fine-tuning trains some of the trunk, but not its first block.
    trainable = set_trainable(model, "late")
    blocks = list(model.trunk.children())
    assert trainable and blocks[0] not in trainable and blocks[-1] in trainable
    assert all(p.requires_grad for p in model.head.parameters())


def test_frozen_batchnorm_stays_in_eval_mode():
    model = build_model("mobilenet_v3_small", 2)
    trainable = set_trainable(model, "late")
    train_mode(model, trainable)
    frozen_bn = [m for b in model.trunk.children() if b not in trainable for m in b.modules()
                 if isinstance(m, torch.nn.BatchNorm2d)]
    trained_bn = [m for b in trainable for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert frozen_bn and not any(m.training for m in frozen_bn)
    assert trained_bn and all(m.training for m in trained_bn)
    assert not any(p.requires_grad for b in model.trunk.children() if b not in trainable for p in b.parameters())


def test_weights_path_loads_a_torchvision_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(1)
    tv = torchvision.models.mobilenet_v3_small()
    path = tmp_path / "w.pth"
    torch.save(tv.state_dict(), path)  # classifier.* keys included: they must be ignored
    model = build_model("mobilenet_v3_small", 2, weights=path)
    for k, v in tv.features.state_dict().items():
        assert torch.equal(model.trunk.state_dict()[k], v), k


def test_weights_file_for_another_arch_is_refused_clearly(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit mobilenet_v3_small"):
        build_model("mobilenet_v3_small", 2, weights=path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a PyTorch state dict"):
        build_model("mobilenet_v3_small", 2, weights=junk)
    with pytest.raises(WeightsError, match="not found"):
        build_model("mobilenet_v3_small", 2, weights=tmp_path / "missing.pth")


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", 3, weights="none").eval()
    path = save_checkpoint(tmp_path / "m.pt", model, ["a", "b", "c"], metrics={"val_accuracy": 0.5})
    # The file needs nothing but tensors and primitives: the safe loader reads it.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["config"]["arch"] == "mobilenet_v3_small" and raw["metrics"]["val_accuracy"] == 0.5
    loaded, labels = load_checkpoint(path)
    assert labels == ["a", "b", "c"] and not loaded.training
    x = torch.rand(4, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_not_a_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="not a petlens checkpoint"):
        read_checkpoint(bad)


def _edited_checkpoint(tmp_path, edit) -> str:
    """A real checkpoint of a tiny model, loaded, changed by ``edit`` and saved again."""
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "m.pt", build_model("mobilenet_v3_small", 2, weights="none"), ["cat", "dog"])
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)
    return path


def test_a_checkpoint_missing_keys_names_them(tmp_path):
    def drop(raw):
        del raw["state_dict"], raw["config"]["labels"], raw["config"]["arch"]

    with pytest.raises(CheckpointError, match=r"lacks state_dict, config\.arch, config\.labels\. Save it again"):
        read_checkpoint(_edited_checkpoint(tmp_path, drop))


def test_a_checkpoint_whose_weights_or_arch_do_not_fit_is_a_checkpoint_error(tmp_path):
    path = _edited_checkpoint(tmp_path, lambda raw: raw["config"].update(num_classes=3))
    with pytest.raises(CheckpointError, match=r"its weights do not fit its config \(mobilenet_v3_small, 3 classes\)") as info:
        load_checkpoint(path)
    assert isinstance(info.value.__cause__, RuntimeError)  # torch's key-by-key detail, for logs
    path = _edited_checkpoint(tmp_path, lambda raw: raw["config"].update(arch="vgg11"))
    with pytest.raises(CheckpointError, match="made for architecture 'vgg11', which this version does not know"):
        load_checkpoint(path)


def test_incomplete_ood_statistics_are_a_checkpoint_error(tmp_path):
    from training.ood import ood_scorer_from_checkpoint

    path = _edited_checkpoint(tmp_path, lambda raw: raw["extra"].update(ood={"format": "petlens-ood/2", "method": "knn"}))
    with pytest.raises(CheckpointError, match="'is it a pet\\?' statistics lack 'feature_dim'; refit them"):
        ood_scorer_from_checkpoint(read_checkpoint(path))
