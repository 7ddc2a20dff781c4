"""Shared fixtures: synthetic photos and a tiny model trained on them in the session.

Nothing here needs ``../shared`` or the network: the images are drawn by the tests and the
model starts from random weights (a frozen random trunk still gives features a linear head
can separate on the synthetic task).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

LABELS = ["cat", "dog"]


def synthetic_photo(label: str, seed: int, size: tuple[int, int] = (160, 128)) -> Image.Image:
    """A learnable stand-in for a pet photo: 'cat' is a warm disc, 'dog' a cool square,
    on a noisy background, at a random place and scale."""
    rng = random.Random(f"{label}-{seed}")
    w, h = size
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(90, 166, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(img)
    r = rng.randint(min(w, h) // 5, min(w, h) // 3)
    cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
    if label == "cat":
        color = (rng.randint(200, 255), rng.randint(90, 140), rng.randint(0, 60))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        color = (rng.randint(0, 60), rng.randint(90, 150), rng.randint(200, 255))
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    return img


def write_imagefolder(root: Path, per_class: int, seed0: int = 0, labels=LABELS, ext: str = ".png") -> Path:
    """``root/<label>/<label>_<i>.png`` for each label."""
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            synthetic_photo(label, seed0 + i).save(root / label / f"{label}_{i:03d}{ext}")
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """An ImageFolder root with ``train/`` (24 per class) and ``val/`` (12 per class)."""
    root = tmp_path_factory.mktemp("synthetic")
    write_imagefolder(root / "train", 24, seed0=0)
    write_imagefolder(root / "val", 12, seed0=1000)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synthetic_data) -> Path:
    """A mobilenet_v3_small (random trunk) whose head is trained on ``synthetic_data``."""
    import torch

    from training import build_model, save_checkpoint
    from training.presets import preprocess

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", len(LABELS), weights="none").eval()
    xs, ys = [], []
    for y, label in enumerate(LABELS):
        for f in sorted((synthetic_data / "train" / label).iterdir()):
            xs.append(preprocess(Image.open(f).convert("RGB")))
            ys.append(y)
    x, y = torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    with torch.no_grad():
        feats = model.embed(x)
    # Standardize through the head's weights so a short optimization is enough.
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    linear = model.head[1]
    opt = torch.optim.Adam(linear.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear((feats - mu) / sd), y)
        loss.backward()
        opt.step()
    with torch.no_grad():  # fold the standardization into the linear layer
        linear.bias -= (linear.weight / sd * mu).sum(1)
        linear.weight /= sd
        acc = (linear(feats).argmax(1) == y).float().mean().item()
    assert acc > 0.9, f"tiny fixture model failed to fit the synthetic task ({acc:.2f})"
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, model, LABELS, metrics={"train_accuracy": acc})
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoint, synthetic_data) -> Path:
    """``tiny_checkpoint`` exported by ``export.convert.export_onnx`` (fp32, dynamic batch,
    labels in metadata), already checked against torch on the synthetic val photos."""
    from export.convert import export_onnx

    path = tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx"
    export_onnx(tiny_checkpoint, path, verify_images=synthetic_data / "val", n_verify=8)
    return path
