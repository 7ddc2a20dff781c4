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

from .model import ARCHS, PetClassifier, build_model
from .sniff import file_kind

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


# Every tool that reads a checkpoint reads it here, so a wrong file gets one plain answer:
# the .onnx export, a photo, a folder and a bare state dict are each what a person reaches for.
TRAIN_HINT = "give the model (.pt) written by `python -m training`, e.g. models/catsdogs.pt"
REQUIRED = {"config": ("arch", "num_classes", "labels"), "state_dict": ()}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (config, metrics, extra), validated: anything else (a missing
    file, a folder, the ONNX export, a photo, a bare state dict, a dict missing keys) is a
    :class:`CheckpointError` whose message says what the file is and what to give instead."""
    path = Path(path)
    if path.is_dir():
        inside = path / "model.pt"
        hint = f"did you mean {inside}?" if inside.is_file() else TRAIN_HINT
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    kind = file_kind(path)
    if kind == "empty":
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint; {TRAIN_HINT}")
    if kind == "onnx":
        example = path.with_suffix(".pt")
        hint = f"e.g. {example}" if example != path else "(this file is ONNX despite its name)"
        raise CheckpointError(f"{path} is an ONNX export; this tool needs the torch checkpoint (.pt) it was "
                              f"exported from, {hint}")
    if kind != "torch":
        what = f"a {kind} image" if kind != "other" else "not a file torch wrote"
        raise CheckpointError(f"{path} is not a checkpoint ({what}); {TRAIN_HINT}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the details (an unpickling error, a bad zip) stay in the chain
        raise CheckpointError(
            f"{path} is not a checkpoint this version can read: it is damaged, or it holds more than "
            f"tensors and plain values (e.g. a whole pickled model); {TRAIN_HINT}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(
                f"{path} is not a petlens checkpoint: it holds bare weights (a state dict) without the config "
                f"a checkpoint carries. To start training from them: `python -m training --weights {path}`"
            )
        raise CheckpointError(f"{path} is not a petlens checkpoint (expected format {FORMAT!r}); {TRAIN_HINT}")
    missing = [key for key in REQUIRED if not isinstance(ckpt.get(key), dict)]
    if "config" not in missing:
        missing += [f"config.{key}" for key in REQUIRED["config"] if key not in ckpt["config"]]
    if missing:
        raise CheckpointError(f"{path} is an incomplete petlens checkpoint: it lacks {', '.join(missing)}. "
                              "Save it again with training.save_checkpoint (as `python -m training` does).")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[PetClassifier, list[str]]:
    """Rebuild the model from ``path`` alone; returns ``(model in eval mode, labels)``."""
    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    if cfg["arch"] not in ARCHS:
        raise CheckpointError(f"{path} was made for architecture {cfg['arch']!r}, which this version does not "
                              f"know (it knows {', '.join(ARCHS)})")
    model = build_model(cfg["arch"], cfg["num_classes"], weights="none", dropout=cfg.get("dropout", 0.2))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:  # torch's list of every mismatched key is in the chain
        raise CheckpointError(f"{path}: its weights do not fit its config ({cfg['arch']}, {cfg['num_classes']} "
                              "classes); the file is damaged or was edited") from exc
    model.image_size = cfg.get("image_size", 224)
    # The "is it a pet?" statistics (training.ood), a plain dict: not a submodule, so the
    # model's state_dict stays the classifier's. fool() reads it to fool the whole verdict.
    model.ood_state = (ckpt.get("extra") or {}).get("ood")
    model.to(device).eval()
    return model, list(cfg["labels"])
