"""Fine-tune an ImageNet CNN on a folder of pet photos.

    python -m training --data DIR --out RUN [--arch mobilenet_v2] [--weights imagenet|none|PATH]
                       [--mode head|finetune] [--epochs N] [--batch-size B] [--lr LR]
                       [--device auto|cpu|cuda] [--seed S]

writes ``RUN/model.pt`` (best epoch, self-describing checkpoint), ``RUN/metrics.json``,
``RUN/curves.png`` and ``RUN/confusion.png``. Runs unchanged under
``torchrun --nproc_per_node K python -m training ...`` (DDP).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from . import distributed
from .checkpoint import save_checkpoint
from .cli import USER_ERRORS, UsageError, add_device, fraction, make_parser, out_folder, positive, run
from .data import DatasetError, Sample, Splits, check_classes, check_images, find_dataset
from .distributed import DistInfo
from .engine import Precision
from .fit import DEFAULTS, FitResult, TrainConfig, fit
from .model import ARCHS, build_model
from .presets import CROP_SIZE


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


def _summary(splits: Splits) -> str:
    tr, va = splits.counts("train"), splits.counts("val")
    classes = ", ".join(f"{k} {tr[k]}/{va[k]}" for k in splits.labels[:10])
    more = f", ... ({len(splits.labels)} classes)" if len(splits.labels) > 10 else ""
    lines = [f"data: {splits.layout}, {len(splits.train)} train / {len(splits.val)} val images "
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
    info = distributed.setup(args.device)
    try:
        return _train(args, info)
    finally:
        distributed.cleanup()


def _train(args: argparse.Namespace, info: DistInfo) -> dict:
    start = time.perf_counter()
    workers = args.workers
    if workers is None:  # torchrun starts LOCAL_WORLD_SIZE processes on this machine
        # Decoding + augmentation is what limits a GPU run: on an H100 with 16 cores, 8 workers
        # fed 635 img/s and 16 fed 1154, against ~1400 img/s the training step can take.
        workers = min(16, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cfg = TrainConfig.for_mode(args.mode, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               label_smoothing=args.label_smoothing, unfreeze=args.unfreeze, workers=workers,
                               seed=args.seed, compile=args.compile)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    splits = _check_images(find_dataset(args.data, val_fraction=args.val_fraction, seed=args.seed), args.data,
                           workers, info)
    if info.is_main:
        print(_summary(splits), flush=True)
    model = build_model(args.arch, len(splits.labels), weights=args.weights)
    # The backbone as it starts: where fine-tuning changes it, the "is it a pet?" score keeps
    # reading these pretrained features (training/ood.py says why).
    pretrained = None if args.weights in (None, "none") else {k: v.clone() for k, v in model.trunk.state_dict().items()}
    model.to(info.device, memory_format=torch.channels_last)
    precision = Precision.choose(info.device, args.amp)
    if info.is_main:
        print(f"model: {args.arch} ({args.weights}), mode {cfg.mode}, {cfg.epochs} epochs, lr {cfg.lr:g}, "
              f"{info.world_size} x {info.device}, {precision.name}", flush=True)

    result = fit(model, splits.train, splits.val, cfg, info, precision)
    seconds = time.perf_counter() - start
    metrics = _metrics(args, cfg, info, splits, result, seconds, precision)
    if info.is_main:
        _write_outputs(args.out, model, splits, result, metrics, cfg, pretrained)
        print(f"best epoch {result.best_epoch}: val accuracy {metrics['val_accuracy']:.2%} "
              f"({metrics['n_val']} images); {seconds:.0f}s in all -> {args.out / 'model.pt'}", flush=True)
    distributed.barrier()  # no rank exits before the checkpoint is on disk
    return metrics


def _metrics(args: argparse.Namespace, cfg: TrainConfig, info: DistInfo, splits: Splits, result: FitResult, seconds: float, precision: Precision) -> dict:
    val = result.best_val
    cm = val["confusion"]
    per_class = {lab: round(cm[i, i].item() / max(1, cm[i].sum().item()), 5) for i, lab in enumerate(splits.labels)}
    train_seconds = sum(h["seconds"] for h in result.history)
    return {
        "val_accuracy": round(val["accuracy"], 5),
        "val_loss": round(val["loss"], 5),
        "n_val": val["n"],
        "per_class": per_class,
        "confusion": cm.tolist(),
        "labels": splits.labels,
        "best_epoch": result.best_epoch,
        "arch": args.arch,
        "weights": str(args.weights) if args.weights in ("imagenet", "none") else Path(args.weights).name,
        "mode": cfg.mode,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "label_smoothing": cfg.label_smoothing,
        "unfreeze": cfg.unfreeze if cfg.mode == "finetune" else "none",
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


def _write_outputs(out: Path, model, splits: Splits, result: FitResult, metrics: dict, cfg: TrainConfig,
                   pretrained: dict[str, torch.Tensor] | None) -> None:
    from .calibrate import fit_model_ood
    from .ood import ood_summary
    from .plots import plot_confusion, plot_curves

    labels = splits.labels
    out.mkdir(parents=True, exist_ok=True)
    model.load_state_dict(result.best_state)
    model.to(memory_format=torch.contiguous_format)
    # "Is it a pet?" statistics of the best model (eval-preset features; rank 0 alone, no
    # collectives), so every checkpoint can tell a cat from a car (training/ood.py).
    ood = fit_model_ood(model, splits.train, splits.val, batch_size=cfg.batch_size, workers=min(cfg.workers, 2),
                        pretrained=pretrained)
    metrics["ood"] = ood_summary(ood)
    keep = ("val_accuracy", "val_loss", "n_val", "per_class", "confusion", "best_epoch", "mode", "epochs", "seed")
    save_checkpoint(out / "model.pt", model.cpu(), labels, image_size=CROP_SIZE,
                    metrics={k: metrics[k] for k in keep} | {"data": metrics["data"]["layout"]},
                    extra={"ood": ood})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    title = f"{metrics['arch']} {metrics['mode']}"
    plot_curves(result.history, out / "curves.png", title=title)
    plot_confusion(metrics["confusion"], labels, out / "confusion.png",
                   title=f"{title}\nval accuracy {metrics['val_accuracy']:.1%} (n={metrics['n_val']})")


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry (``petlens-train``): a user's mistake (a bad dataset or --weights
    file, a bad flag) is one line on stderr and exit 2; a GPU out of memory says what to lower."""
    return run(get_args_parser(), main, argv, user_errors=(*USER_ERRORS, FloatingPointError))


if __name__ == "__main__":
    sys.exit(cli())
