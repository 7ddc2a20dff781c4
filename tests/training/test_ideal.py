"""Ideal images: the lucent-style pieces behave, the tiny model recognises its ideal image,
the TV penalty smooths, nothing leaks out of render(), the command line answers clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_tool
from training import load_checkpoint
from training.ideal import cli, get_args_parser, ideal_image, label_probability, main
from training.imagenet import CAT_CLASSES, find_category, imagenet_categories, load_imagenet_classifier
from training.optvis import (
    Objective,
    class_logit,
    class_margin,
    feature_direction,
    fourier_image,
    jitter,
    pad,
    random_blur,
    random_rotate,
    random_scale,
    render,
    total_variation,
)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_checkpoint(tiny_checkpoint)


def test_fourier_image_is_a_valid_image_and_seeded():
    params, image_f = fourier_image((48, 64), generator=torch.Generator().manual_seed(1))
    img = image_f()
    assert img.shape == (1, 3, 48, 64) and 0 < img.min() and img.max() < 1
    (g,) = torch.autograd.grad(img.mean(), params)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    _, again = fourier_image((48, 64), generator=torch.Generator().manual_seed(1))
    assert torch.equal(again(), img.detach())


def test_objectives_compose_like_numbers():
    outputs = {"logits": torch.tensor([[2.0, -1.0]]), "features": torch.tensor([[3.0, 4.0]]),
               "image": torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])}
    combo = class_logit(0) + 2 * class_margin(1) - 0.5 * total_variation()
    expected = 2.0 + 2 * torch.log_softmax(outputs["logits"], 1)[0, 1] - 0.5 * (0.5 + 0.5)
    assert isinstance(combo, Objective) and torch.isclose(combo(outputs), expected)
    assert torch.isclose((-class_logit(1))(outputs), torch.tensor(1.0))
    # Parallel: cos = 1 and the objective is the dot product; perpendicular: ~0.
    assert torch.isclose(feature_direction(torch.tensor([0.6, 0.8]), 2.0)(outputs), torch.tensor(5.0))
    assert feature_direction(torch.tensor([4.0, -3.0]), 2.0)(outputs).abs() < 1e-6


def test_transforms_shapes_and_blur_smooths():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 40, 40, generator=g)
    assert pad(5)(x).shape[-2:] == (50, 50)
    assert jitter(4, g)(x).shape[-2:] == (36, 36)
    assert random_scale([0.5], g)(x).shape[-2:] == (20, 20)
    assert random_rotate([15], g)(x).shape == x.shape
    blurred = random_blur([2], g)(x)
    assert blurred.shape == x.shape and total_variation(blurred) < 0.5 * total_variation(x)


def test_render_leaves_the_model_alone(tiny):
    model, _ = tiny
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    img = render(model, class_logit(0), lambda: fourier_image(32), [], steps=2, input_size=64)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    assert img.shape == (1, 3, 32, 32) and not img.requires_grad


@pytest.mark.parametrize("label", ["cat", "dog"])
def test_tiny_model_recognises_its_ideal_image(tiny, label, tmp_path):
    model, labels = tiny
    seen = []
    image = ideal_image(model, labels, label, steps=24, size=96,
                        progress=lambda step, total, preview: seen.append((step, total, preview().size)))
    assert image.mode == "RGB" and image.size == (96, 96)
    assert seen[-1] == (24, 24, (96, 96)) and len(seen) == 24
    path = tmp_path / f"{label}.png"
    image.save(path)  # judged as a user gets it: the 8-bit PNG through the real preprocessing
    assert label_probability(model, labels, Image.open(path).convert("RGB"), label) >= 0.9


def test_tv_penalty_smooths_and_seed_decides(tiny):
    model, labels = tiny

    def tv(image: Image.Image) -> float:
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        return float(total_variation(x))

    rough = ideal_image(model, labels, "cat", steps=10, size=64, tv_weight=0.0)
    smooth = ideal_image(model, labels, "cat", steps=10, size=64, tv_weight=200.0)
    assert tv(smooth) < 0.7 * tv(rough)
    assert np.array_equal(np.asarray(rough), np.asarray(ideal_image(model, labels, "cat", steps=10, size=64, tv_weight=0.0)))
    other = ideal_image(model, labels, "cat", steps=10, size=64, tv_weight=0.0, seed=1)
    assert not np.array_equal(np.asarray(rough), np.asarray(other))


def test_bad_arguments(tiny):
    model, labels = tiny
    with pytest.raises(ValueError, match=r"unknown label 'zebra'; this model knows: cat, dog"):
        ideal_image(model, labels, "zebra")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        ideal_image(model, labels, "cat", steps=0)
    with pytest.raises(ValueError, match="size must be between"):
        ideal_image(model, labels, "cat", size=5000)
    with pytest.raises(ValueError, match="tv_weight"):
        ideal_image(model, labels, "cat", tv_weight=-1)


def test_command_line(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "sub" / "cat.png"
    args = ["--checkpoint", str(tiny_checkpoint), "--label", "cat", "--out", str(out), "--steps", "24", "--size", "64", "--json"]
    assert main(get_args_parser().parse_args(args)) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["label"] == "cat" and record["output"] == str(out) and record["prob"] >= 0.9
    assert Image.open(out).size == (64, 64) and record["seconds"] > 0
    bad = ["--checkpoint", str(tiny_checkpoint), "--label", "zebra", "--out", str(out)]
    code, _, err = run_tool(cli, bad, capsys)
    assert code == 2 and "unknown label 'zebra'" in err
    code, _, err = run_tool(cli, ["--label", "cat", "--out", str(out)], capsys)
    assert code == 2 and "exactly one of --model or --imagenet-arch" in err
    missing = ["--imagenet-arch", "mobilenet_v3_small", "--imagenet-weights", str(tmp_path / "no.pth"), "--label", "zebra", "--out", str(out)]
    code, _, err = run_tool(cli, missing, capsys)
    assert code == 2 and "ImageNet weights file not found" in err


def test_imagenet_route_offline(tmp_path, capsys):
    """The documented ImageNet route, with a (random) full state dict standing in for real weights."""
    categories = imagenet_categories("mobilenet_v3_small")
    assert len(categories) == 1000 and find_category(categories, "Tabby") in CAT_CLASSES
    with pytest.raises(ValueError, match="did you mean: zebra"):
        find_category(categories, "zebr")
    import torchvision

    weights = tmp_path / "mnv3s.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), weights)
    model, cats = load_imagenet_classifier("mobilenet_v3_small", weights)
    assert cats == categories
    out = tmp_path / "zebra.png"
    args = ["--imagenet-arch", "mobilenet_v3_small", "--imagenet-weights", str(weights), "--label", "zebra",
            "--out", str(out), "--steps", "2", "--size", "48", "--json"]
    assert main(get_args_parser().parse_args(args)) == 0
    assert json.loads(capsys.readouterr().out.strip())["label"] == "zebra"
    assert Image.open(out).size == (48, 48)
    features_only = tmp_path / "features.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).features.state_dict(), features_only)
    with pytest.raises(ValueError, match="not a full mobilenet_v3_small ImageNet state dict"):
        load_imagenet_classifier("mobilenet_v3_small", features_only)
