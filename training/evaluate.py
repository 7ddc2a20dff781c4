"""Score a trained model on a folder of labelled photos.

    python -m training.evaluate --model models/catsdogs.pt --data DIR [--json]
    python -m training.evaluate --model models/catsdogs.onnx --data DIR [--json]
    python -m training.evaluate --model M --data DIR --ood NOT_PETS_DIR [--json]

``DIR`` holds one folder per class (``DIR/cat/``, ``DIR/dog/``; folder names are matched to
the model's labels ignoring case), or is a dataset root with a ``val/`` folder of those.
``.pt`` runs in torch, ``.onnx`` in onnxruntime through :class:`export.runtime.Classifier`;
both use the same decoding (:func:`training.images.load_image`) and the same preprocessing
(:class:`training.presets.EvalPreset`). With ``--json`` the last stdout line is
``{"accuracy": .., "n": .., "per_class": {label: accuracy}, ...}``; with ``--ood DIR`` (photos
that are not of any trained class, in any folder structure) it adds
``"ood": {"auroc", "false_accept_rate", "true_accept_rate", "threshold", "n_ood"}``, scored by
the model's own "is it a pet?" statistics (:mod:`training.ood`) at its calibrated threshold,
plus ``"refuse_threshold"``, ``"true_not_refused_rate"`` and ``"false_not_refused_rate"`` (the
shares not answered "not a pet" once the middle answer counts, :mod:`training.verdict`) for
models calibrated with one.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, read_checkpoint
from .cli import add_device, add_json, add_model, make_parser, positive, resolve_device, run
from .data import DatasetError, ImageDataset, check_images, scan_class_folders
from .images import image_files
from .ood import ClassifierWithOOD, ood_metrics, ood_scorer_from_checkpoint
from .presets import EvalPreset

Predict = Callable[[torch.Tensor], np.ndarray]  # [N,3,H,W] in [0,1] -> probabilities [N,C]


def load_predictor(path: str | Path, device: str = "auto") -> tuple[Predict, list[str]]:
    """A batch -> probabilities function and the labels, for a ``.pt`` or ``.onnx`` model."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--model {path} is a folder; give the model file (.pt or .onnx)")
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    if path.suffix == ".onnx":
        from export.runtime import Classifier

        clf = Classifier.load(path)
        return (lambda x: clf.probabilities(x.numpy())), list(clf.labels)
    if path.suffix != ".pt":
        raise ValueError(f"--model must be a .pt checkpoint or an .onnx model, got {path.name}")
    dev = resolve_device(device)
    model, labels = load_checkpoint(path, dev)

    @torch.inference_mode()
    def predict(x: torch.Tensor) -> np.ndarray:
        return torch.softmax(model(x.to(dev)).float(), 1).cpu().numpy()

    return predict, labels


OODScore = Callable[[torch.Tensor], np.ndarray]  # [N,3,H,W] in [0,1] -> scores [N]


def load_ood_scorer(path: str | Path, device: str = "auto") -> tuple[OODScore, float, float | None]:
    """A batch -> OOD scores function (higher = less like the training photos) and the two
    calibrated thresholds (the plain "pet" answer's, and "not a pet" above the second, which
    is None for models calibrated before the middle answer existed: :mod:`training.verdict`),
    from the ``.pt`` checkpoint's statistics or the ``.onnx`` model's ``ood_score`` output. A
    model without them is a ``ValueError`` saying how to add them."""
    path = Path(path)
    hint = (f"{path.name} has no 'is it a pet?' statistics; add them with "
            "`python -m training.calibrate --checkpoint C --data DIR` (and re-export for .onnx)")
    if path.suffix == ".onnx":
        from export.runtime import Classifier

        clf = Classifier.load(path)
        if clf.ood_threshold is None:
            raise ValueError(hint)
        return (lambda x: clf.ood_scores(x.numpy())), clf.ood_threshold, clf.ood_refuse_threshold

    scorer = ood_scorer_from_checkpoint(read_checkpoint(path))
    if scorer is None:
        raise ValueError(hint)
    dev = resolve_device(device)
    model, _ = load_checkpoint(path, dev)
    scored = ClassifierWithOOD(model, scorer).to(dev).eval()

    @torch.inference_mode()
    def score(x: torch.Tensor) -> np.ndarray:
        return scored(x.to(dev))[1].float().cpu().numpy()

    return score, scorer.threshold, scorer.refuse_threshold


def ood_scores(score: OODScore, paths, *, batch_size: int = 64, workers: int = 0) -> tuple[np.ndarray, int]:
    """Scores of the readable images among ``paths`` and how many were skipped."""
    samples, skipped = check_images([(str(p), 0) for p in paths], workers=workers)
    loader = torch.utils.data.DataLoader(ImageDataset(samples, EvalPreset()), batch_size=batch_size,
                                         num_workers=workers)
    out = [score(x) for x, _ in loader]
    return (np.concatenate(out) if out else np.zeros(0, dtype=np.float32)), len(skipped)


def evaluate_ood(model: str | Path, data: str | Path, ood: str | Path, labels: list[str], *, device: str = "auto",
                 batch_size: int = 64, workers: int = 0) -> dict:
    """AUROC and accept rates of the model's OOD verdict: ``data``'s labelled photos (should be
    accepted) against every image under ``ood`` (should be refused)."""
    ood = _folder(ood, "--ood")
    out_paths = image_files(ood)
    if not out_paths:
        raise DatasetError(f"no images under {ood}")
    score, threshold, refuse_threshold = load_ood_scorer(model, device)
    _, samples = scan_class_folders(class_folder(data), labels)
    in_scores, _ = ood_scores(score, [p for p, _ in samples], batch_size=batch_size, workers=workers)
    out_scores, skipped = ood_scores(score, out_paths, batch_size=batch_size, workers=workers)
    if len(out_scores) == 0:
        raise DatasetError(f"none of the images under {ood} could be read")
    metrics = ood_metrics(torch.from_numpy(in_scores), torch.from_numpy(out_scores), threshold, refuse_threshold)
    return {k: round(v, 5) for k, v in metrics.items()} | {"threshold": threshold, "refuse_threshold": refuse_threshold,
                                                           "n_ood": len(out_scores), "skipped_ood": skipped}


def class_folder(data: str | Path) -> Path:
    """``DIR`` itself, or ``DIR/val`` when ``DIR`` is a train/val dataset root."""
    data = _folder(data, "--data")
    return data / "val" if (data / "val").is_dir() else data


def _folder(path: str | Path, flag: str) -> Path:
    path = Path(path)
    if path.is_file():
        raise DatasetError(f"{flag} must be a folder of photos, got a file: {path}")
    if not path.is_dir():
        raise DatasetError(f"{flag} folder not found: {path}")
    return path


def evaluate_model(
    predict: Predict,
    labels: list[str],
    data: str | Path,
    *,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix of ``predict`` on ``data``.
    Unreadable images are skipped and counted (``"skipped"``)."""
    from tqdm.auto import tqdm

    folder = class_folder(data)
    _, samples = scan_class_folders(folder, labels)
    samples, skipped = check_images(samples, workers=workers)
    if not samples:
        raise DatasetError(f"none of the images in {folder} could be read")
    loader = torch.utils.data.DataLoader(ImageDataset(samples, EvalPreset()), batch_size=batch_size,
                                         num_workers=workers)
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    for x, y in tqdm(loader, desc="evaluating", unit="batch", disable=not progress, leave=False):
        pred = predict(x).argmax(1)
        np.add.at(confusion, (y.numpy(), pred), 1)
    n = int(confusion.sum())
    present = [i for i in range(k) if confusion[i].sum() > 0]
    return {
        "accuracy": round(float(np.trace(confusion)) / n, 5),
        "n": n,
        "per_class": {labels[i]: round(float(confusion[i, i] / confusion[i].sum()), 5) for i in present},
        "labels": labels,
        "confusion": confusion.tolist(),
        "skipped": len(skipped),
    }


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = make_parser("petlens-evaluate", "Score a .pt or .onnx model on labelled photos.", add_help=add_help)
    add_model(p, help="a checkpoint (.pt) or an exported model (.onnx)")
    p.add_argument("--data", required=True, type=Path, metavar="DIR",
                   help="a folder of class folders (DIR/cat/, DIR/dog/), or a dataset root with val/")
    p.add_argument("--ood", type=Path, default=None, metavar="DIR",
                   help="photos of none of the classes (any folder structure): adds AUROC and accept rates "
                   "of the model's 'is it a pet?' verdict")
    add_json(p, help="print one JSON line (accuracy, n, per_class) last")
    p.add_argument("--batch-size", type=positive(int), default=64, metavar="B", help="images per batch")
    add_device(p, what="torch device for .pt models")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="W", help="image-decoding processes")
    return p


def _print_report(results: dict) -> None:
    labels, cm = results["labels"], results["confusion"]
    print(f"accuracy {results['accuracy']:.2%} on {results['n']} images"
          + (f" ({results['skipped']} unreadable skipped)" if results["skipped"] else ""))
    width = max(len(lab) for lab in labels)
    for lab, acc in results["per_class"].items():
        print(f"  {lab:<{width}}  {acc:.2%}")
    if len(labels) <= 10:
        print("confusion (rows true, columns predicted):")
        print("  " + " " * width + "  " + " ".join(f"{lab[:6]:>6}" for lab in labels))
        for lab, row in zip(labels, cm):
            print(f"  {lab:<{width}}  " + " ".join(f"{v:>6}" for v in row))


def _print_ood(ood: dict) -> None:
    print(f"not-a-pet check on {ood['n_ood']} other photos: AUROC {ood['auroc']:.3f}, "
          f"{ood['true_accept_rate']:.1%} of the labelled photos accepted, "
          f"{ood['false_accept_rate']:.1%} of the others wrongly accepted (threshold {ood['threshold']:.4g})")
    if "true_not_refused_rate" in ood:
        print(f"  with the middle answer ('probably a ..., but unlike my photos', up to {ood['refuse_threshold']:.4g}): "
              f"{1 - ood['true_not_refused_rate']:.1%} of the labelled photos refused, "
              f"{ood['false_not_refused_rate']:.1%} of the others not refused")


def main(args: argparse.Namespace) -> dict:
    if args.ood is not None:  # before the whole evaluation, not after it
        _folder(args.ood, "--ood")
    predict, labels = load_predictor(args.model, args.device)
    results = evaluate_model(predict, labels, args.data, batch_size=args.batch_size,
                             workers=args.workers, progress=not args.json)
    if args.ood is not None:
        results["ood"] = evaluate_ood(args.model, args.data, args.ood, labels, device=args.device,
                                      batch_size=args.batch_size, workers=args.workers)
    if args.json:
        print(json.dumps(results))
    else:
        _print_report(results)
        if "ood" in results:
            _print_ood(results["ood"])
    return results


def cli(argv: list[str] | None = None) -> None:
    """Console-script entry (``petlens-evaluate``): a user's mistake is one line on stderr, exit 2."""
    run(get_args_parser(), main, argv)


if __name__ == "__main__":
    cli()
