"""Fine-tune an ImageNet CNN on a folder of pet photos.

    python -m training --data DIR --out RUN [--arch mobilenet_v2] [--weights imagenet|none|PATH]
                       [--mode head|finetune] [--epochs N] [--batch-size B] [--lr LR]
                       [--device auto|cpu|cuda] [--seed S] [--breeds DIR [--breed-species oxford|FILE.json]]

writes ``RUN/model.pt`` (kept epoch, self-describing checkpoint), ``RUN/metrics.json``,
``RUN/curves.png`` and ``RUN/confusion.png`` (+ ``RUN/breeds-confusion.png`` with ``--breeds``).
Runs unchanged under ``torchrun --nproc_per_node K python -m training ...`` (DDP).

With ``--breeds DIR`` the model gets a second head: the labels (species) train on both photo
sets, the breeds on ``DIR``'s (:mod:`training.breeds`, :mod:`training.heads`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import distributed
from .breeds import bank_groups, breed_species, two_head_samples
from .checkpoint import save_checkpoint
from .cli import USER_ERRORS, UsageError, add_device, fraction, make_parser, out_folder, positive, run
from .data import DatasetError, Sample, Splits, check_classes, check_images, find_dataset
from .distributed import DistInfo
from .engine import Precision
from .fit import DEFAULTS, KEEP, FitResult, TrainConfig, fit
from .model import ARCHS, PADDINGS, build_model, has_folded_batchnorm
from .presets import CROP_RATIO, CROP_SIZE


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = make_parser("petlens-train", "Fine-tune an ImageNet CNN on pet photos (also: python -m training).",
                    add_help=add_help)
    p.add_argument("--data", required=True, type=Path, metavar="DIR",
                   help="photo folder: DIR/train/<class>/ (+ DIR/val/<class>/), DIR/<class>/, "
                        "a PetImages folder (Cat/, Dog/) or an Oxford-IIIT Pet folder (images/)")
    p.add_argument("--out", required=True, type=Path, metavar="RUN", help="run folder for model.pt, metrics.json and plots")
    p.add_argument("--arch", default="mobilenet_v2", choices=ARCHS, help="torchvision backbone")
    p.add_argument("--weights", default="imagenet", metavar="imagenet|none|PATH",
                   help="imagenet (torchvision download), none (random init) or PATH to a "
                        "torchvision-layout state dict (the offline route)")
    p.add_argument("--mode", default="head", choices=("head", "finetune"),
                   help="head: frozen backbone, cached features, linear head (fast on CPU); "
                        "finetune: late blocks + head on augmented images")
    p.add_argument("--epochs", type=positive(int), default=None, metavar="N",
                   help=f"epochs (default: {DEFAULTS['head'][0]} head, {DEFAULTS['finetune'][0]} finetune)")
    p.add_argument("--batch-size", type=positive(int), default=32, metavar="B", help="images per batch and per process")
    p.add_argument("--lr", type=positive(float), default=None, metavar="LR",
                   help=f"head learning rate; the backbone gets a tenth (default {DEFAULTS['head'][1]:g})")
    add_device(p, what="torch device (under torchrun, auto and cuda take the GPU of LOCAL_RANK)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed for the split, initialisation and data order")
    # Knobs beyond the core contract, with defaults that suit most runs.
    p.add_argument("--unfreeze", default="late", choices=("late", "all"),
                   help="finetune: train the backbone's late blocks only, or all of it")
    p.add_argument("--label-smoothing", type=fraction, default=0.1, metavar="F",
                   help="cross-entropy label smoothing, in [0, 1)")
    p.add_argument("--val-fraction", type=fraction, default=0.2, metavar="F",
                   help="held-out fraction per class when the data has no val/ split")
    p.add_argument("--workers", type=int, default=None, metavar="W",
                   help="image-decoding worker processes per training process "
                        "(default: the CPU cores shared among this machine's processes, at most 16)")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                   help="mixed precision: auto = bf16 (or fp16) on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (worth it on GPUs for long runs)")
    # A second head: breeds.
    p.add_argument("--breeds", type=Path, default=None, metavar="DIR",
                   help="also train a breed head on this photo folder (same layouts as --data, one class per breed); "
                        "the labels (species) then train on both folders, each breed photo counting as its breed's species")
    p.add_argument("--breed-species", default="oxford", metavar="oxford|FILE.json",
                   help="each breed's label: oxford = the 37 Oxford-IIIT Pet breeds (12 cats, 25 dogs; labels cat and "
                        "dog), or a JSON file {\"breed\": \"label\", ...} (default oxford)")
    p.add_argument("--padding", default="torch", choices=PADDINGS,
                   help="torch, or tf: TensorFlow's 'SAME' padding for the strided convolutions, for weights converted "
                        "from TensorFlow (e.g. the TF-Lite ImageNet MobileNetV2); it exports at no cost (default torch)")
    p.add_argument("--bn", default="auto", choices=("auto", "train", "frozen"),
                   help="finetune: BatchNorm of the trained blocks in train mode, or frozen (eval mode; scale and shift "
                        "still train); auto = frozen when the weights' BatchNorm was folded (identity statistics)")
    p.add_argument("--crop-ratio", type=positive(float), nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="finetune: aspect-ratio range (width/height) of the random crops, which are resized to squares; "
                        f"a wide one such as 0.6 1.67 undoes photos squashed to squares (default {CROP_RATIO[0]:.2f} "
                        f"{CROP_RATIO[1]:.2f})")
    p.add_argument("--keep", default="best", choices=KEEP,
                   help="which epoch's weights to ship: best on the val photos (the breed accuracy with --breeds), "
                        "or last, so that the val photos select nothing (default best)")
    return p


def _check_images(splits: Splits, data: Path, workers: int, info: DistInfo) -> Splits:
    """Drop unreadable files (each rank checks its shard), counting them, then re-check
    that every class still has images."""
    everything: list[Sample] = splits.train + splits.val
    shard = distributed.ShardSampler(len(everything), info.rank, info.world_size).indices
    _, bad = check_images([everything[i] for i in shard], workers=workers, progress=info.is_main)
    bad = [b for part in distributed.all_gather_objects(bad) for b in part]
    if bad:
        unreadable = {path for path, _ in bad}
        splits.train = [s for s in splits.train if s[0] not in unreadable]
        splits.val = [s for s in splits.val if s[0] not in unreadable]
        splits.skipped = bad
    check_classes(splits.labels, splits.train, f"{data} (training set, after skipping unreadable files)")
    if not splits.val:
        raise DatasetError(f"no validation images in {data}; add a val/ folder or more photos per class")
    return splits


def _summary(splits: Splits, what: str = "data") -> str:
    tr, va = splits.counts("train"), splits.counts("val")
    classes = ", ".join(f"{k} {tr[k]}/{va[k]}" for k in splits.labels[:10])
    more = f", ... ({len(splits.labels)} classes)" if len(splits.labels) > 10 else ""
    lines = [f"{what}: {splits.layout}, {len(splits.train)} train / {len(splits.val)} val images "
             f"(val: {splits.val_source}); train/val per class: {classes}{more}"]
    if splits.skipped:
        lines.append(f"skipped {len(splits.skipped)} unreadable file(s), e.g. {splits.skipped[0][1]}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    """Train as described by ``args`` (see :func:`get_args_parser`); returns the metrics
    written to ``RUN/metrics.json``."""
    # Mistakes that would otherwise show only after the photos are checked or the model trained.
    out_folder(args.out, contents="model.pt, metrics.json, curves.png and confusion.png")
    weights = None if args.weights in ("imagenet", "none") else Path(args.weights)
    if weights is not None and not weights.is_file():
        what = f"{weights} is a folder; give the weights file" if weights.is_dir() else f"{weights}: not found"
        raise UsageError(f"--weights {what} (imagenet, none, or PATH to a state dict in torchvision layout)")
    if args.crop_ratio is not None and args.crop_ratio[0] > args.crop_ratio[1]:
        raise UsageError(f"--crop-ratio LOW HIGH needs LOW <= HIGH, got {args.crop_ratio[0]:g} {args.crop_ratio[1]:g}")
    info = distributed.setup(args.device)
    try:
        return _train(args, info)
    finally:
        distributed.cleanup()


@dataclass
class _Data:
    """What a run trains on: the labels' splits; with ``--breeds`` also the breeds' splits and
    each breed's label; and the samples both heads train and validate on."""

    splits: Splits
    breeds: Splits | None = None
    breed_species: list[str] = field(default_factory=list)
    train: list = field(init=False)
    val: list = field(init=False)

    def __post_init__(self) -> None:
        if self.breeds is None:
            self.train, self.val = self.splits.train, self.splits.val
        else:
            self.train, self.val = two_head_samples(self.splits, self.breeds, self.breed_species)

    @property
    def breed_labels(self) -> list[str]:
        return [] if self.breeds is None else self.breeds.labels

    def ood_samples(self) -> tuple[list[Sample], list[Sample]]:
        """The "is it a pet?" bank's photos, labelled by group so the bank covers every breed
        (breed index, or ``len(breeds) + label`` for a photo without a breed), and the photos
        its thresholds are placed on: ``--data``'s val alone (``--breeds``' val photos are only
        ever evaluated on)."""
        if self.breeds is None:
            return self.splits.train, self.splits.val
        return bank_groups(self.train, len(self.breeds.labels)), self.splits.val


def _load_data(args: argparse.Namespace, workers: int, info: DistInfo) -> _Data:
    splits = _check_images(find_dataset(args.data, val_fraction=args.val_fraction, seed=args.seed), args.data,
                           workers, info)
    if info.is_main:
        print(_summary(splits), flush=True)
    if args.breeds is None:
        return _Data(splits)
    breeds = find_dataset(args.breeds, val_fraction=args.val_fraction, seed=args.seed)
    mapping = breed_species(breeds.labels, splits.labels, args.breed_species)  # before minutes of checking photos
    breeds = _check_images(breeds, args.breeds, workers, info)
    if info.is_main:
        print(_summary(breeds, "breeds"), flush=True)
    return _Data(splits, breeds, mapping)


def _train(args: argparse.Namespace, info: DistInfo) -> dict:
    start = time.perf_counter()
    workers = args.workers
    if workers is None:  # torchrun starts LOCAL_WORLD_SIZE processes on this machine
        # Decoding + augmentation is what limits a GPU run: on an H100 with 16 cores, 8 workers
        # fed 635 img/s and 16 fed 1154, against ~1400 img/s the training step can take.
        workers = min(16, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    data = _load_data(args, workers, info)
    model = build_model(args.arch, len(data.splits.labels), weights=args.weights, num_breeds=len(data.breed_labels),
                        padding=args.padding)
    freeze_bn = args.bn == "frozen" or (args.bn == "auto" and has_folded_batchnorm(model.trunk))
    cfg = TrainConfig.for_mode(args.mode, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               label_smoothing=args.label_smoothing, unfreeze=args.unfreeze, workers=workers,
                               seed=args.seed, compile=args.compile, keep=args.keep, freeze_bn=freeze_bn,
                               crop_ratio=tuple(args.crop_ratio or CROP_RATIO))
    # The backbone as it starts: where fine-tuning changes it, the "is it a pet?" score keeps
    # reading these pretrained features (training/ood.py says why).
    pretrained = None if args.weights in (None, "none") else {k: v.clone() for k, v in model.trunk.state_dict().items()}
    model.to(info.device, memory_format=torch.channels_last)
    precision = Precision.choose(info.device, args.amp)
    if info.is_main:
        breeds = f" + {model.num_breeds} breeds" if model.num_breeds else ""
        bn = ", BatchNorm frozen (folded weights)" if freeze_bn and cfg.mode == "finetune" else ""
        print(f"model: {args.arch} ({args.weights}, {args.padding} padding){breeds}, mode {cfg.mode}, {cfg.epochs} epochs, "
              f"lr {cfg.lr:g}, keep {cfg.keep}{bn}, {info.world_size} x {info.device}, {precision.name}", flush=True)

    result = fit(model, data.train, data.val, cfg, info, precision)
    seconds = time.perf_counter() - start
    metrics = _metrics(args, cfg, info, data, result, seconds, precision)
    if info.is_main:
        _write_outputs(args.out, model, data, result, metrics, cfg, pretrained)
        breeds = f", breeds {metrics['breed_accuracy']:.2%}" if model.num_breeds else ""
        print(f"{cfg.keep} epoch {result.best_epoch}: val accuracy {metrics['val_accuracy']:.2%} ({metrics['n_val']} images)"
              f"{breeds}; {seconds:.0f}s in all -> {args.out / 'model.pt'}", flush=True)
    distributed.barrier()  # no rank exits before the checkpoint is on disk
    return metrics


def _per_class(cm: torch.Tensor, labels: list[str]) -> dict[str, float]:
    return {lab: round(cm[i, i].item() / max(1, cm[i].sum().item()), 5) for i, lab in enumerate(labels)}


def _metrics(args: argparse.Namespace, cfg: TrainConfig, info: DistInfo, data: _Data, result: FitResult, seconds: float,
             precision: Precision) -> dict:
    splits, val = data.splits, result.best_val
    cm = val["confusion"]
    train_seconds = sum(h["seconds"] for h in result.history)
    metrics = {
        "val_accuracy": round(val["accuracy"], 5),
        "val_loss": round(val["loss"], 5),
        "n_val": val["n"],
        "per_class": _per_class(cm, splits.labels),
        "confusion": cm.tolist(),
        "labels": splits.labels,
        "best_epoch": result.best_epoch,
        "keep": cfg.keep,
        "arch": args.arch,
        "weights": str(args.weights) if args.weights in ("imagenet", "none") else Path(args.weights).name,
        "padding": args.padding,
        "mode": cfg.mode,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "label_smoothing": cfg.label_smoothing,
        "unfreeze": cfg.unfreeze if cfg.mode == "finetune" else "none",
        "batchnorm": ("frozen" if cfg.freeze_bn else "train") if cfg.mode == "finetune" else "none",
        "crop_ratio": list(cfg.crop_ratio),
        "seed": cfg.seed,
        "data": {"layout": splits.layout, "val_source": splits.val_source, "n_train": len(splits.train),
                 "n_val": len(splits.val), "skipped": len(splits.skipped),
                 "skipped_examples": [f"{Path(p).name}: {why}" for p, why in splits.skipped[:5]]},
        "device": info.device.type,
        "world_size": info.world_size,
        "precision": precision.name,
        "seconds": round(seconds, 1),
        "epoch_seconds": round(train_seconds, 1),
        "history": result.history,
    }
    if data.breeds is not None:
        b = data.breeds
        metrics.update(
            breeds=b.labels,
            breed_species=data.breed_species,
            breed_accuracy=round(val["breed_accuracy"], 5),
            breed_top3=round(val["breed_top3"], 5),
            n_val_breeds=val["n_breed"],
            breed_per_class=_per_class(val["breed_confusion"], b.labels),
            breed_confusion=val["breed_confusion"].tolist(),
            # The labels' accuracy on each val set: --data's photos and --breeds' photos.
            val_accuracy_by_set={"data": round(val["accuracy_without_breed"], 5),
                                 "breeds": round(val["accuracy_with_breed"], 5)},
            breeds_data={"layout": b.layout, "val_source": b.val_source, "n_train": len(b.train), "n_val": len(b.val),
                         "skipped": len(b.skipped)},
        )
    return metrics


def _write_outputs(out: Path, model, data: _Data, result: FitResult, metrics: dict, cfg: TrainConfig,
                   pretrained: dict[str, torch.Tensor] | None) -> None:
    from .calibrate import fit_model_ood
    from .ood import ood_summary
    from .plots import plot_confusion, plot_curves

    labels = data.splits.labels
    out.mkdir(parents=True, exist_ok=True)
    model.load_state_dict(result.best_state)
    model.to(memory_format=torch.contiguous_format)
    # "Is it a pet?" statistics of the kept model (eval-preset features; rank 0 alone, no
    # collectives), so every checkpoint can tell a cat from a car (training/ood.py).
    bank, calibration = data.ood_samples()
    ood = fit_model_ood(model, bank, calibration, batch_size=cfg.batch_size, workers=min(cfg.workers, 2),
                        pretrained=pretrained)
    metrics["ood"] = ood_summary(ood)
    keep = ("val_accuracy", "val_loss", "n_val", "per_class", "confusion", "best_epoch", "keep", "mode", "epochs", "seed",
            "breed_accuracy", "breed_top3", "n_val_breeds", "val_accuracy_by_set")
    save_checkpoint(out / "model.pt", model.cpu(), labels, image_size=CROP_SIZE,
                    metrics={k: metrics[k] for k in keep if k in metrics} | {"data": metrics["data"]["layout"]},
                    extra={"ood": ood}, breeds=data.breed_labels, breed_species=data.breed_species)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    title = f"{metrics['arch']} {metrics['mode']}"
    plot_curves(result.history, out / "curves.png", title=title)
    plot_confusion(metrics["confusion"], labels, out / "confusion.png",
                   title=f"{title}\nval accuracy {metrics['val_accuracy']:.1%} (n={metrics['n_val']})")
    if data.breeds is not None:
        plot_confusion(metrics["breed_confusion"], data.breed_labels, out / "breeds-confusion.png",
                       title=f"{title}: breeds\nval top-1 {metrics['breed_accuracy']:.1%}, "
                             f"top-3 {metrics['breed_top3']:.1%} (n={metrics['n_val_breeds']})")


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry (``petlens-train``): a user's mistake (a bad dataset or --weights
    file, a bad flag) is one line on stderr and exit 2; a GPU out of memory says what to lower."""
    return run(get_args_parser(), main, argv, user_errors=(*USER_ERRORS, FloatingPointError))


if __name__ == "__main__":
    sys.exit(cli())
