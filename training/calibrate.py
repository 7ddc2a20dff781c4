"""Fit and store a model's "is it a pet?" statistics (see :mod:`training.ood`).

``python -m training`` does this at the end of every run; this command does it for a
checkpoint that already exists (trained before OOD statistics existed, or to recalibrate
on other photos)::

    python -m training.calibrate --checkpoint RUN/model.pt --data DIR [--target-tpr 0.95]

The features are the model's own pooled penultimate features under the *eval*
preprocessing (never augmented), of the training photos (the kNN bank) and of the
validation photos (only to place the threshold so ``target_tpr`` of real pets pass).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .data import DatasetError, ImageDataset, Sample, find_dataset
from .ood import fit_ood, ood_summary
from .presets import EvalPreset


@torch.inference_mode()
def embed_samples(model, samples: Sequence[Sample], *, batch_size: int = 32, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``([N, D] float32 features, [N] labels)`` of ``samples`` under the eval preset, on
    this process only (no collectives, so rank 0 of a torchrun job may call it alone)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(ImageDataset(samples, EvalPreset()), batch_size=batch_size,
                                         shuffle=False, num_workers=workers)
    feats, labels = [], []
    try:
        for x, y in loader:
            feats.append(model.embed(x.to(device)).float().cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    dim = getattr(model, "feature_dim", 0)
    if not feats:
        return torch.zeros((0, dim)), torch.zeros((0,), dtype=torch.int64)
    return torch.cat(feats), torch.cat(labels)


def fit_model_ood(model, train: Sequence[Sample], val: Sequence[Sample], *, target_tpr: float = 0.95,
                  batch_size: int = 32, workers: int = 0) -> dict[str, Any]:
    """Embed ``train`` and ``val`` with ``model`` and fit :func:`training.ood.fit_ood`."""
    if not train or not val:
        raise DatasetError("OOD calibration needs both training and validation photos")
    train_f, train_y = embed_samples(model, train, batch_size=batch_size, workers=workers)
    val_f, _ = embed_samples(model, val, batch_size=batch_size, workers=workers)
    return fit_ood(train_f, train_y, val_f, target_tpr=target_tpr)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.calibrate", add_help=add_help,
                                description="Fit the 'is it a pet?' statistics of a checkpoint and store them in it.")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint (.pt) from `python -m training`; updated in place unless --out")
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="the dataset it was trained on (same layouts as `python -m training`)")
    p.add_argument("--out", type=Path, default=None, help="write the calibrated checkpoint here instead")
    p.add_argument("--target-tpr", type=float, default=0.95, help="share of real validation pets to accept (default 0.95)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out fraction when DIR has no val/ split")
    p.add_argument("--seed", type=int, default=0, help="seed of that split (use the training run's)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    ckpt = read_checkpoint(args.checkpoint)
    model, labels = load_checkpoint(args.checkpoint)
    splits = find_dataset(args.data, val_fraction=args.val_fraction, seed=args.seed)
    if splits.labels != labels:
        raise DatasetError(f"{args.data} has classes {splits.labels}, the checkpoint was trained on {labels}")
    state = fit_model_ood(model, splits.train, splits.val, target_tpr=args.target_tpr,
                          batch_size=args.batch_size, workers=args.workers)
    extra = dict(ckpt.get("extra") or {}, ood=state)
    save_checkpoint(args.out or args.checkpoint, model, labels, image_size=ckpt["config"].get("image_size", 224),
                    metrics=ckpt.get("metrics"), extra=extra)
    summary = ood_summary(state)
    print(json.dumps(summary))
    return summary


def cli(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except (CheckpointError, DatasetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
