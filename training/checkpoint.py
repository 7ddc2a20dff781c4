"""Checkpoints that carry their own config, so one file rebuilds the model.

Layout (a plain dict of tensors and primitives, loadable with ``weights_only=True``)::

    {"format": "petlens-checkpoint/1",
     "config": {"arch", "num_classes", "labels", "image_size", "dropout"},
     "state_dict": {...},
     "metrics": {...},          # whatever the trainer measured (val accuracy, ...)
     "extra": {...}}            # optional add-ons, e.g. "ood" statistics
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .model import PetClassifier, build_model

FORMAT = "petlens-checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of this project."""


def save_checkpoint(
    path: str | Path,
    model: PetClassifier,
    labels: list[str],
    *,
    image_size: int = 224,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` + its config atomically (a crash never leaves half a file)."""
    model = getattr(model, "module", model)  # unwrap DDP
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dropout = next((m.p for m in model.head if isinstance(m, torch.nn.Dropout)), 0.0)
    payload = {
        "format": FORMAT,
        "config": {
            "arch": model.arch,
            "num_classes": len(labels),
            "labels": list(labels),
            "image_size": int(image_size),
            "dropout": float(dropout),
        },
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": metrics or {},
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (config, metrics, extra), validated."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a checkpoint this version can read ({exc.__class__.__name__}). "
            "Train one with `python -m training`."
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a petlens checkpoint (expected format {FORMAT!r}).")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[PetClassifier, list[str]]:
    """Rebuild the model from ``path`` alone; returns ``(model in eval mode, labels)``."""
    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    model = build_model(cfg["arch"], cfg["num_classes"], weights="none", dropout=cfg.get("dropout", 0.2))
    model.load_state_dict(ckpt["state_dict"])
    model.image_size = cfg.get("image_size", 224)
    # The "is it a pet?" statistics (training.ood), a plain dict: not a submodule, so the
    # model's state_dict stays the classifier's. fool() reads it to fool the whole verdict.
    model.ood_state = (ckpt.get("extra") or {}).get("ood")
    model.to(device).eval()
    return model, list(cfg["labels"])
