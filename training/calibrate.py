"""Fit and store a model's "is it a pet?" statistics (see :mod:`training.ood`).

``python -m training`` does this at the end of every run; this command does it for a
checkpoint that already exists (trained before OOD statistics existed, or to recalibrate
on other photos)::

    python -m training.calibrate --checkpoint RUN/model.pt --data DIR [--breeds DIR] \\
        [--weights imagenet|PATH] [--target-tpr 0.95] [--refuse-tpr 0.98]

The features are pooled penultimate features under the *eval* preprocessing (never
augmented), of the training photos (the kNN bank) and of the validation photos (only to
place the thresholds: ``target_tpr`` of real pets get the plain answer, ``refuse_tpr`` are
not refused, and those in between get "probably a dog, but unlike my photos"; see
:mod:`training.verdict`). With ``--weights`` (the weights the model was fine-tuned from, as
given to ``python -m training``) they are those pretrained blocks' features wherever
fine-tuning changed the backbone (:func:`training.ood.reference_state`), which tell a horse
from a dog far better; without it, the model's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .breeds import bank_groups, two_head_samples
from .checkpoint import load_checkpoint, save_checkpoint
from .cli import UsageError, add_model, fraction, make_parser, out_file, positive, run
from .data import DatasetError, ImageDataset, Sample, find_dataset
from .engine import extract_features
from .model import build_model
from .ood import MAX_BANK, REFUSE_TPR, TARGET_TPR, ScoreFeatures, balanced_subset, fit_ood, ood_summary, reference_state
from .presets import EvalPreset


@torch.inference_mode()
def embed_samples(model, samples: Sequence[Sample], *, batch_size: int = 32, workers: int = 0,
                  reference: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``([N, D] float32 features, [N] labels)`` of ``samples`` under the eval preset, on
    this process only (no collectives, so rank 0 of a torchrun job may call it alone).
    The features are the ones the OOD score reads (:class:`training.ood.ScoreFeatures`)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    features = ScoreFeatures(model, reference).to(device).eval()
    loader = torch.utils.data.DataLoader(ImageDataset(samples, EvalPreset()), batch_size=batch_size,
                                         shuffle=False, num_workers=workers)
    try:
        return extract_features(lambda x: features(x)[1], loader, device, feature_dim=getattr(model, "feature_dim", 0),
                                gather=False)
    finally:
        model.train(was_training)


def fit_model_ood(model, train: Sequence[Sample], val: Sequence[Sample], *, target_tpr: float = TARGET_TPR,
                  refuse_tpr: float | None = REFUSE_TPR, batch_size: int = 32, workers: int = 0,
                  pretrained: dict[str, torch.Tensor] | None = None, max_bank: int = MAX_BANK,
                  seed: int = 0) -> dict[str, Any]:
    """Embed ``train`` and ``val`` and fit :func:`training.ood.fit_ood` (kNN).

    ``train``'s labels are the groups the bank of at most ``max_bank`` photos is balanced over
    (the classes, or finer groups such as breeds); only the photos the bank keeps are embedded.
    ``pretrained``: the backbone's state dict before fine-tuning (``model.trunk`` keys); the
    blocks fine-tuning changed are then scored with their pretrained weights."""
    if not train or not val:
        raise DatasetError("OOD calibration needs both training and validation photos")
    reference = reference_state(model.trunk, pretrained) if pretrained is not None else {}
    # The bank is a seeded, balanced draw by label alone: draw it first, embed only it.
    keep = balanced_subset(torch.tensor([y for _, y in train]), max_bank, seed)
    train = [train[i] for i in keep.tolist()]
    train_f, train_y = embed_samples(model, train, batch_size=batch_size, workers=workers, reference=reference)
    val_f, _ = embed_samples(model, val, batch_size=batch_size, workers=workers, reference=reference)
    return fit_ood(train_f, train_y, val_f, target_tpr=target_tpr, refuse_tpr=refuse_tpr, max_bank=max_bank,
                   seed=seed) | reference


def pretrained_trunk_state(arch: str, num_classes: int, weights: str | Path) -> dict[str, torch.Tensor]:
    """The backbone's state dict as ``python -m training --weights`` starts it (imagenet or PATH)."""
    if str(weights) == "none":
        raise ValueError("--weights none has no pretrained features to compare with; leave --weights out")
    return build_model(arch, num_classes, weights=weights).trunk.state_dict()


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = make_parser("petlens-calibrate", "Fit the 'is it a pet?' statistics of a checkpoint and store them in it.",
                    add_help=add_help)
    add_model(p, aliases=("--checkpoint",), help="checkpoint (.pt) from `python -m training`; updated in place unless --out")
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="the dataset it was trained on (same layouts as `python -m training`)")
    p.add_argument("--breeds", type=Path, default=None, metavar="DIR",
                   help="a model with breeds: the breed photos it was trained on (its --breeds); the bank then covers "
                        "every breed. The thresholds are placed on --data's val photos alone, as the trainer does")
    p.add_argument("--out", type=Path, default=None, help="write the calibrated checkpoint here instead")
    p.add_argument("--weights", default=None, metavar="imagenet|PATH",
                   help="the weights the model was fine-tuned from (as given to `python -m training`): the "
                        "score then reads those pretrained features where fine-tuning changed the backbone, "
                        "which separates other animals from pets far better (recommended)")
    p.add_argument("--target-tpr", type=fraction, default=TARGET_TPR,
                   help=f"share of real validation pets given the plain answer (default {TARGET_TPR})")
    p.add_argument("--refuse-tpr", type=fraction, default=REFUSE_TPR,
                   help=f"share of real validation pets not refused as 'not a pet'; those between the two get "
                        f"'probably a dog, but unlike my photos' (default {REFUSE_TPR}; at least --target-tpr)")
    p.add_argument("--val-fraction", type=fraction, default=0.2, help="held-out fraction when DIR has no val/ split")
    p.add_argument("--seed", type=int, default=0, help="seed of that split (use the training run's)")
    p.add_argument("--batch-size", type=positive(int), default=32, help="images per batch")
    p.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.out is not None:  # before minutes of feature extraction, not after
        out_file(args.out, suffixes=(".pt",), example=Path(args.model).name)
    loaded = load_checkpoint(args.model)
    model, labels = loaded
    splits = find_dataset(args.data, val_fraction=args.val_fraction, seed=args.seed)
    if splits.labels != labels:
        raise DatasetError(f"{args.data} has classes {splits.labels}, the checkpoint was trained on {labels}")
    bank = splits.train
    if args.breeds is not None:
        if not loaded.breeds:
            raise UsageError(f"--breeds: {args.model} has no breed head")
        breeds = find_dataset(args.breeds, val_fraction=args.val_fraction, seed=args.seed)
        if breeds.labels != loaded.breeds:
            raise DatasetError(f"{args.breeds} has breeds {', '.join(breeds.labels[:5])}..., not the checkpoint's")
        train, _ = two_head_samples(splits, breeds, loaded.breed_species)
        bank = bank_groups(train, len(loaded.breeds))
    pretrained = None
    if args.weights is not None:
        pretrained = pretrained_trunk_state(loaded.config["arch"], len(labels), args.weights)
    if args.refuse_tpr < args.target_tpr:
        raise UsageError(f"--refuse-tpr ({args.refuse_tpr}) must be at least --target-tpr ({args.target_tpr})")
    state = fit_model_ood(model, bank, splits.val, target_tpr=args.target_tpr, refuse_tpr=args.refuse_tpr,
                          batch_size=args.batch_size, workers=args.workers, pretrained=pretrained)
    extra = dict(loaded.extra, ood=state)
    save_checkpoint(args.out or args.model, model, labels, image_size=loaded.image_size, metrics=loaded.metrics,
                    extra=extra, breeds=loaded.breeds, breed_species=loaded.breed_species)
    summary = ood_summary(state)
    if summary.get("reference_from") == 0:  # not an error: --unfreeze all changes every block
        print("note: every backbone block differs from --weights; fine if the model was trained with "
              "--unfreeze all, otherwise these are not the weights it was fine-tuned from", file=sys.stderr)
    print(json.dumps(summary))
    return summary


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry (``petlens-calibrate``): a user's mistake is one line on stderr, exit 2."""
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
