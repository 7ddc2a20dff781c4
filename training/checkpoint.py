"""Checkpoints that carry their own config, so one file rebuilds the model.

Layout (a plain dict of tensors and primitives, loadable with ``weights_only=True``)::

    {"format": "petlens-checkpoint/1",
     "config": {"arch", "num_classes", "labels", "image_size", "dropout",
                "padding",                 # "torch" or "tf" (absent in older files: "torch")
                "breeds", "breed_species"}, # the breed head's classes and each one's label
                                            # (absent or [] for a model without breeds)
     "state_dict": {...},
     "metrics": {...},          # whatever the trainer measured (val accuracy, ...)
     "extra": {...}}            # optional add-ons, e.g. "ood" statistics

:func:`load_checkpoint` returns a :class:`LoadedCheckpoint`, which unpacks as
``model, labels = load_checkpoint(path)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .model import ARCHS, PADDINGS, PetClassifier, build_model
from .sniff import file_kind

FORMAT = "petlens-checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of this project."""


class BreedsError(ValueError):
    """Breeds that do not fit the model or its labels."""


def check_breeds(breeds: Sequence[str], breed_species: Sequence[str], labels: Sequence[str]) -> None:
    """Every breed named once and mapped to one of ``labels`` (the species)."""
    if len(breed_species) != len(breeds):
        raise BreedsError(f"{len(breeds)} breeds but {len(breed_species)} species for them")
    if len(set(breeds)) != len(breeds):
        raise BreedsError("a breed is named twice")
    unknown = sorted({s for s in breed_species if s not in labels})
    if unknown:
        raise BreedsError(f"breeds mapped to {', '.join(unknown)}, which is not a label of the model ({', '.join(labels)})")


def save_checkpoint(
    path: str | Path,
    model: PetClassifier,
    labels: list[str],
    *,
    image_size: int | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    breeds: Sequence[str] = (),
    breed_species: Sequence[str] = (),
) -> Path:
    """Write ``model`` + its config atomically (a crash never leaves half a file).

    ``breeds``: the classes of the model's breed head, in its order, and ``breed_species``
    the label (species) each belongs to; both empty for a model without a breed head.
    ``image_size``: default the model's own."""
    model = getattr(model, "module", model)  # unwrap DDP
    path = Path(path)
    if len(breeds) != model.num_breeds:
        raise BreedsError(f"the model's breed head has {model.num_breeds} classes, but {len(breeds)} breeds were given")
    check_breeds(breeds, breed_species, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    dropout = next((m.p for m in model.head if isinstance(m, torch.nn.Dropout)), 0.0)
    payload = {
        "format": FORMAT,
        "config": {
            "arch": model.arch,
            "num_classes": len(labels),
            "labels": list(labels),
            "image_size": int(image_size or model.image_size),
            "dropout": float(dropout),
            "padding": model.padding,
            "breeds": list(breeds),
            "breed_species": list(breed_species),
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


@dataclass(frozen=True, eq=False)
class LoadedCheckpoint:
    """What :func:`load_checkpoint` rebuilt from one file. Unpacks as ``model, labels``.

    ``breeds``: the breed head's classes (empty: the model has none), ``breed_species``: the
    label each breed belongs to; ``ood_state``: the "is it a pet?" statistics (None: not
    calibrated); ``config``/``metrics``/``extra``: the file's dicts as written."""

    model: PetClassifier
    labels: list[str]
    breeds: list[str] = field(default_factory=list)
    breed_species: list[str] = field(default_factory=list)
    image_size: int = 224
    ood_state: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:  # model, labels = load_checkpoint(path)
        return iter((self.model, self.labels))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Any:
        return (self.model, self.labels)[index]

    def ood_scorer(self) -> torch.nn.Module | None:
        """The "is it a pet?" scorer of these statistics (a :class:`training.ood.OODScorer`), or
        None without them."""
        from .ood import ood_scorer_from_checkpoint

        return ood_scorer_from_checkpoint({"extra": self.extra})


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model from ``path`` alone (in eval mode, on ``device``); see
    :class:`LoadedCheckpoint` (``model, labels = load_checkpoint(path)`` works)."""
    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    if cfg["arch"] not in ARCHS:
        raise CheckpointError(f"{path} was made for architecture {cfg['arch']!r}, which this version does not "
                              f"know (it knows {', '.join(ARCHS)})")
    padding = cfg.get("padding", "torch")
    if padding not in PADDINGS:
        raise CheckpointError(f"{path} asks for padding {padding!r}, which this version does not know")
    breeds, breed_species = list(cfg.get("breeds") or []), list(cfg.get("breed_species") or [])
    try:
        check_breeds(breeds, breed_species, cfg["labels"])
    except BreedsError as exc:
        raise CheckpointError(f"{path}: its breeds do not fit its labels ({exc}); the file is damaged or was edited") from exc
    image_size = int(cfg.get("image_size", 224))
    model = build_model(cfg["arch"], cfg["num_classes"], weights="none", dropout=cfg.get("dropout", 0.2),
                        num_breeds=len(breeds), image_size=image_size, padding=padding)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:  # torch's list of every mismatched key is in the chain
        with_breeds = f", {len(breeds)} breeds" if breeds else ""
        raise CheckpointError(f"{path}: its weights do not fit its config ({cfg['arch']}, {cfg['num_classes']} "
                              f"classes{with_breeds}); the file is damaged or was edited") from exc
    extra = dict(ckpt.get("extra") or {})
    # fool() reads the statistics from the model (the service hands it a bare model).
    model.ood_state = extra.get("ood")
    model.to(device).eval()
    return LoadedCheckpoint(model, list(cfg["labels"]), breeds, breed_species, image_size, model.ood_state,
                            dict(cfg), dict(ckpt.get("metrics") or {}), extra)
