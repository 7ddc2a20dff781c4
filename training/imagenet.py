"""torchvision's ImageNet classifiers, for "ideal zebra" and as an independent judge.

The project's checkpoints only know their own labels; with torchvision's ImageNet weights
(``weights="DEFAULT"``, downloaded once into ``~/.cache/torch``; or a state dict saved from
the same architecture, offline) the ideal-image renderer can draw any of the 1,000
ImageNet classes, and the benchmark can ask an ImageNet model that is *not* the
fine-tuned backbone whether an ideal cat looks like a cat to it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from .model import Normalize

# ImageNet-1k indices: 151-268 are dog breeds; 281-285 are the domestic cats (tabby,
# tiger cat, Persian, Siamese, Egyptian); the big cats (286-293) are not house cats.
DOG_CLASSES = frozenset(range(151, 269))
CAT_CLASSES = frozenset(range(281, 286))


class ImageNetError(ValueError):
    """ImageNet weights that cannot be had or do not fit."""


def imagenet_categories(arch: str) -> list[str]:
    """The 1,000 class names (torchvision ships them with the code, no download)."""
    import torchvision

    try:
        return list(torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"])
    except (ValueError, KeyError) as exc:
        raise ImageNetError(f"unknown torchvision architecture {arch!r} ({exc})") from exc


def load_imagenet_classifier(arch: str, weights: str | Path | None = None, device="cpu") -> tuple[nn.Module, list[str]]:
    """``(model, categories)``: ``torchvision.models.<arch>`` with ImageNet weights and
    normalization in front, taking [0, 1] images like every model in this project.

    ``weights``: ``None`` for torchvision's ``DEFAULT`` weights (needs internet the first
    time) or a path to a full state dict (classifier included) of that architecture.
    """
    import torchvision

    categories = imagenet_categories(arch)
    if weights is None:
        try:
            net = torchvision.models.get_model(arch, weights="DEFAULT")
        except Exception as exc:  # offline, proxy, corrupt cache ...
            raise ImageNetError(
                f"could not get torchvision's ImageNet weights for {arch} ({exc.__class__.__name__}: {exc}). "
                "Offline, pass a state dict saved from torchvision.models."
                f"{arch}(weights='DEFAULT') with --imagenet-weights PATH."
            ) from exc
    else:
        net = torchvision.models.get_model(arch, weights=None)
        try:
            state = torch.load(Path(weights), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except FileNotFoundError as exc:
            raise ImageNetError(f"ImageNet weights file not found: {weights}") from exc
        except IsADirectoryError as exc:
            raise ImageNetError(f"--imagenet-weights {weights} is a folder; give the state dict file") from exc
        except Exception as exc:  # torch's detail (unpickling, missing keys) stays in the chain
            raise ImageNetError(
                f"{weights} is not a full {arch} ImageNet state dict (torch cannot read it, or its keys do not fit "
                f"{arch}); feature-only weights (no classifier) cannot name ImageNet classes."
            ) from exc
    return nn.Sequential(Normalize(), net).to(device).eval(), categories


def find_category(categories: list[str], name: str) -> int:
    """Index of ``name`` (case-insensitive, ``_`` = space) or a ``ValueError`` with suggestions."""
    wanted = name.replace("_", " ").strip().lower()
    lowered = [c.lower() for c in categories]
    if wanted in lowered:
        return lowered.index(wanted)
    close = difflib.get_close_matches(wanted, lowered, n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(categories[lowered.index(c)] for c in close)}?" if close else ""
    raise ValueError(f"unknown ImageNet class {name!r}{hint}")
