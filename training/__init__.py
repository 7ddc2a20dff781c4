"""The torch side: datasets, models, training, evaluation, attacks, ideal images.

``training.load_checkpoint`` and friends are imported lazily so that importing a light
submodule (``training.presets``) does not pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["ARCHS", "build_model", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from .model import ARCHS, build_model


def __getattr__(name: str):
    if name in ("load_checkpoint", "read_checkpoint", "save_checkpoint"):
        from . import checkpoint

        return getattr(checkpoint, name)
    if name in ("ARCHS", "build_model"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
