"""Checkpoint -> ONNX, with the model's facts in metadata and a parity check against torch.

The graph takes float32 ``image [N, 3, S, S]`` in [0, 1] (ImageNet normalization is part
of the model, so it is part of the graph) with a dynamic batch axis ``N``, and returns
``logits [N, C]`` and ``probabilities [N, C]`` (softmax inside the graph, so clients need
no post-processing), plus ``ood_score [N]`` when the checkpoint carries out-of-distribution
statistics (:mod:`training.ood`; accept a photo as a pet when the score is <= the
``threshold`` in metadata ``ood``). ``metadata_props`` carry ``labels`` (a JSON list) and
the facts a server or a person wants: architecture, image size, accuracy, preprocessing.

The file is written next to ``out`` under a temporary name and moved into place only after
onnxruntime has reproduced torch's probabilities within ``tolerance`` on the verification
images, so a broken export never replaces a working model.

Example::

    from export.convert import export_onnx
    report = export_onnx("models/catsdogs.pt", "models/catsdogs.onnx",
                         verify_images="../shared/data/catsdogs/val")
    print(report.max_abs_diff)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.images import ImageError, image_files
from training.presets import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD, resize_size_for

# Opset 20 is what torch's exporter emits natively today and what onnxruntime >= 1.17
# (and so Triton's onnxruntime backend of 2024 onwards) runs; newer opsets buy nothing
# for a CNN.
OPSET = 20
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "probabilities")
FORMAT = "petlens-onnx/1"
FP32_TOLERANCE = 1e-4  # max |p_torch - p_onnx| over all classes and images
# Half precision keeps ~3 significant digits, and a 2-class softmax amplifies logit rounding
# near 50%: on 180 real photos the shipped MobileNetV2's fp16 export differs from fp32 by up to
# 3.9e-2 in probability (torch's own model.half(): 3.5e-2), with no top-1 changes.
FP16_TOLERANCE = 5e-2


class ExportError(RuntimeError):
    """The export could not be produced or failed its check; the message says why."""


class PhotosError(ValueError):
    """A folder of photos given to check or calibrate with (``--verify``, ``--calibration``)
    that cannot serve: none in it, or none readable. The user's to fix (exit status 2), unlike
    an :class:`ExportError`."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely onnxruntime matched torch."""

    path: Path
    n_images: int
    real_images: bool
    max_abs_diff: float
    tolerance: float
    seconds: float
    metadata: dict[str, str]


def generated_images(n: int = 8, seed: int = 0) -> list[Image.Image]:
    """Deterministic photo-like stand-ins (smooth colour fields + noise + shapes) for when
    no real images are given; sizes and aspect ratios vary to exercise resize/crop."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 640))
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        base = np.stack([np.sin(xx * rng.uniform(2, 9) + c) for c in rng.uniform(0, 6, 3)], -1)
        arr = (base * 60 + 128 + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            draw.ellipse((x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))),
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        out.append(img)
    return out


def _export_module(model, half: bool, scorer=None):
    """The model plus a softmax, optionally computing in float16 between float32 I/O, and
    with the checkpoint's out-of-distribution scorer (``training.ood``) as a third output
    (reading the features it was fitted on: the model's own, or its pretrained reference blocks)."""
    import torch

    from training.ood import ScoreFeatures

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = ScoreFeatures(model, scorer.reference if scorer is not None else None)
            if half:
                self.features.half()
            self.scorer = scorer

        def forward(self, image: torch.Tensor):
            features, scored = self.features(image.half() if half else image)
            logits = self.features.model.head(features).float()  # softmax in float32 even for an fp16 trunk
            outputs = (logits, torch.softmax(logits, dim=1))
            if self.scorer is not None:
                outputs += (self.scorer(scored.float(), logits),)
            return outputs

    return Exported().eval()


def _ood_scorer(ckpt: dict[str, Any]):
    """The checkpoint's OOD scorer, or None (no OOD statistics in it)."""
    if not (ckpt.get("extra") or {}).get("ood"):
        return None
    from training.ood import ood_scorer_from_checkpoint

    return ood_scorer_from_checkpoint(ckpt)


def _scalars(obj: Any) -> Any:
    """``obj`` with tensors/arrays dropped: what of a checkpoint's ``extra`` fits metadata
    (an OOD feature bank is megabytes and lives in the graph instead)."""
    if isinstance(obj, dict):
        kept = {str(k): _scalars(v) for k, v in obj.items()}
        kept = {k: v for k, v in kept.items() if v is not None and v != {}}
        return kept if kept or not obj else None  # a dict of tensors only goes too
    if isinstance(obj, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in obj):
        return list(obj)
    return obj if isinstance(obj, (str, int, float, bool)) else None


def _metadata(ckpt: dict[str, Any], checkpoint: Path, fp16: bool, ood: bool) -> dict[str, str]:
    cfg, metrics = ckpt["config"], ckpt.get("metrics") or {}
    meta = {
        "format": FORMAT,
        "labels": json.dumps(list(cfg["labels"])),
        "arch": str(cfg["arch"]),
        "num_classes": str(cfg["num_classes"]),
        "image_size": str(cfg.get("image_size", CROP_SIZE)),
        "resize_size": str(resize_size_for(cfg.get("image_size", CROP_SIZE))),
        "input": "RGB float32 [N,3,S,S] in [0,1]; resize shorter side to resize_size (bilinear, "
        "antialiased), center-crop image_size; ImageNet mean/std are applied inside the graph",
        "mean": json.dumps(IMAGENET_MEAN),
        "std": json.dumps(IMAGENET_STD),
        "outputs": "logits [N,C], probabilities [N,C] (softmax)"
        + (", ood_score [N] (higher = less like the training photos; see metadata 'ood')" if ood else ""),
        "precision": "fp16" if fp16 else "fp32",
        "source_checkpoint": checkpoint.name,
        "source_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
    }
    if metrics:
        meta["metrics"] = json.dumps(_scalars(metrics))
        for key in ("accuracy", "val_accuracy", "train_accuracy"):
            if isinstance(metrics.get(key), (int, float)):
                meta[key] = str(metrics[key])
    extra = _scalars(ckpt.get("extra") or {})
    for key, value in extra.items():  # e.g. "ood": {"method", "threshold", "target_tpr", ...}
        meta[key] = json.dumps(value)
    return meta


def _torch_export(module, path: Path, image_size: int, opset: int, ood: bool = False) -> None:
    import torch

    example = torch.rand(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about internal decompositions
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES) + (["ood_score"] if ood else []),
                dynamic_shapes={"image": {0: batch}},
                opset_version=opset,
                external_data=False,  # one self-contained file (a ResNet-50 is ~100 MB)
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many internal types
            raise ExportError(f"torch.onnx.export failed: {exc.__class__.__name__}: {str(exc)[:500]}") from exc


def verify(
    checkpoint: str | os.PathLike,
    onnx_path: str | os.PathLike,
    images: Sequence[Image.Image | str | os.PathLike],
    *,
    providers: Sequence[str] | None = ("CPUExecutionProvider",),
    half: bool = False,
) -> float:
    """Max |torch - onnxruntime| over ``images`` of the probabilities (and of the OOD score
    when the model has one): decoded and preprocessed exactly like the Classifier does, run
    through the checkpoint in torch (float32 or float16 to match the export) and through the
    ONNX file in onnxruntime, both as one batch and one by one."""
    import torch

    from training import load_checkpoint, read_checkpoint

    from .runtime import Classifier

    clf = Classifier.load(onnx_path, providers=providers)
    arrays = []
    for im in images:
        try:
            arrays.append(clf.preprocess(im))
        except ImageError:  # a damaged photo in the folder is not the export's fault
            continue
    if not arrays:
        raise PhotosError(f"none of the {len(images)} verification photos could be read as images; "
                          "give a folder of real photos (JPEG, PNG, ...)")
    batch = np.stack(arrays)
    model, _ = load_checkpoint(checkpoint)
    module = _export_module(model, half, _ood_scorer(read_checkpoint(checkpoint)))
    with torch.inference_mode():
        ref = np.concatenate([t.numpy().reshape(len(batch), -1) for t in module(torch.from_numpy(batch))[1:]], axis=1)
    if not np.isfinite(ref).all():
        raise ExportError(
            "torch's own output is not finite on the check images"
            + (": the model over- or underflows in float16; export it without --fp16." if half else ".")
        )
    names = list(clf.backend.outputs[1:])  # probabilities [, ood_score]

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([o.reshape(len(x), -1) for o in clf.backend.run(names, x)], axis=1)

    got_batch = run(batch)
    got_single = np.concatenate([run(batch[i : i + 1]) for i in range(len(batch))])
    return float(max(np.abs(ref - got_batch).max(), np.abs(ref - got_single).max()))


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    verify_images: str | os.PathLike | Iterable[Image.Image | str | os.PathLike] | None = None,
    n_verify: int = 32,
    tolerance: float | None = None,
    opset: int = OPSET,
    fp16: bool = False,
) -> ExportReport:
    """Export ``checkpoint`` to ``out`` and prove onnxruntime agrees with torch.

    ``verify_images``: a folder (up to ``n_verify`` images are drawn from it), a list of
    paths/PIL images, or ``None`` for generated stand-ins (a real folder is better: pass
    the validation photos). ``fp16`` computes in half precision between float32 input and
    output (for GPUs; the tolerance loosens to 5e-2). Raises :class:`ExportError` when the
    check fails, leaving any existing ``out`` untouched.
    """
    import time

    import onnx
    import torch

    from training import load_checkpoint, read_checkpoint

    start = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    ckpt = read_checkpoint(checkpoint)  # CheckpointError (a ValueError) with a readable message
    model, _ = load_checkpoint(checkpoint)
    image_size = int(ckpt["config"].get("image_size", CROP_SIZE))
    tolerance = tolerance if tolerance is not None else (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)

    if verify_images is None:
        images, real = generated_images(), False
    elif isinstance(verify_images, (str, os.PathLike)):
        images, real = image_files(verify_images, limit=n_verify), True
        if not images:
            raise PhotosError(f"no photos in {verify_images} to verify the export on; give a folder of real photos "
                              "(JPEG, PNG, ...), e.g. your validation images")
    else:
        images, real = list(verify_images), True

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.onnx")
    try:
        scorer = _ood_scorer(ckpt)
        with torch.no_grad():
            _torch_export(_export_module(model, fp16, scorer), tmp, image_size, opset, ood=scorer is not None)
        proto = onnx.load(str(tmp))
        meta = _metadata(ckpt, checkpoint, fp16, ood=scorer is not None)
        del proto.metadata_props[:]
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        proto.producer_name, proto.doc_string = "petlens", f"{meta['arch']} pet classifier, labels {meta['labels']}"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        diff = verify(checkpoint, tmp, images, half=fp16)
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(
                f"onnxruntime disagrees with torch on {len(images)} images: max probability difference "
                f"{diff:.2e} > tolerance {tolerance:.0e}. The ONNX file was not written; report this "
                "with your torch/onnx/onnxruntime versions."
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(out, len(images), real, diff, tolerance, time.perf_counter() - start, meta)
