"""The one definition of image preprocessing, used everywhere.

Evaluation / inference: EXIF-transpose -> RGB (done by :func:`training.images.load_image`)
-> resize the shorter side to 256 (bilinear, antialiased) -> center-crop 224 -> float32
in [0, 1], CHW. ImageNet normalization is *not* here: it lives inside the model (torch and
ONNX alike) so every caller feeds plain [0, 1] RGB.

This module imports no torch at import time, so the onnxruntime side can use it without
paying for torch; the torch presets import torchvision lazily.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

RESIZE_SIZE = 256
CROP_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range (width / height)


def resize_size_for(crop_size: int) -> int:
    """The shorter side to resize to before a ``crop_size`` center crop (256 for 224)."""
    return round(crop_size * RESIZE_SIZE / CROP_SIZE)


def crop_box(width: int, height: int, resize_size: int = RESIZE_SIZE, crop_size: int = CROP_SIZE):
    """Geometry of the eval pipeline for an image of ``width``x``height``.

    Returns ``(resized_w, resized_h, left, top)``: the size after the shorter side is
    scaled to ``resize_size`` and the top-left corner of the ``crop_size`` center crop,
    with torchvision's rounding (``Resize`` truncates, ``CenterCrop`` rounds).
    """
    if width <= height:
        new_w, new_h = resize_size, int(resize_size * height / width)
    else:
        new_w, new_h = int(resize_size * width / height), resize_size
    left = int(round((new_w - crop_size) / 2.0))
    top = int(round((new_h - crop_size) / 2.0))
    return new_w, new_h, left, top


def resize_and_crop(img: Image.Image, resize_size: int = RESIZE_SIZE, crop_size: int = CROP_SIZE) -> Image.Image:
    """Resize the shorter side to ``resize_size`` (bilinear, antialiased), center-crop."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    new_w, new_h, left, top = crop_box(img.width, img.height, resize_size, crop_size)
    if (new_w, new_h) != img.size:
        # PIL's bilinear filter widens its support when downscaling, i.e. it antialiases,
        # which matches torchvision's Resize(antialias=True) on PIL input.
        img = img.resize((new_w, new_h), Image.BILINEAR)
    return img.crop((left, top, left + crop_size, top + crop_size))


def preprocess(img: Image.Image, resize_size: int = RESIZE_SIZE, crop_size: int = CROP_SIZE) -> np.ndarray:
    """A decoded RGB PIL image -> float32 array ``[3, crop, crop]`` in [0, 1]."""
    arr = np.asarray(resize_and_crop(img, resize_size, crop_size), dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)) / np.float32(255.0)


def preprocess_batch(images: Iterable[Image.Image], crop_size: int = CROP_SIZE) -> np.ndarray:
    """Several images -> float32 ``[N, 3, crop, crop]``."""
    resize_size = resize_size_for(crop_size)
    arrays = [preprocess(im, resize_size, crop_size) for im in images]
    if not arrays:
        return np.zeros((0, 3, crop_size, crop_size), dtype=np.float32)
    return np.stack(arrays)


class EvalPreset:
    """torch-side eval transform: PIL image -> float tensor ``[3, H, W]`` in [0, 1]."""

    def __init__(self, crop_size: int = CROP_SIZE):
        self.crop_size = crop_size
        self.resize_size = resize_size_for(crop_size)

    def __call__(self, img: Image.Image):
        import torch

        return torch.from_numpy(preprocess(img, self.resize_size, self.crop_size))


class TrainPreset:
    """Train-time augmentation for fine-tuning: random resized crop, flip, mild colour jitter.

    ``ratio``: the crop's aspect-ratio range (width / height), drawn log-uniformly; the crop is
    then resized to a square, so a ratio away from 1 stretches the photo. A wide range, e.g.
    ``(0.6, 1.67)``, teaches a model trained on photos squashed to squares (as the Oxford-IIIT
    Pet copies at hand are) the shapes of real photos: a 4:3 photo squashed to a square is
    unsquashed by a crop of ratio 0.75."""

    def __init__(self, crop_size: int = CROP_SIZE, hflip_prob: float = 0.5, ratio: tuple[float, float] = CROP_RATIO):
        import torch
        from torchvision.transforms import v2 as T

        self.transforms = T.Compose(
            [
                T.RandomResizedCrop(crop_size, scale=(0.35, 1.0), ratio=tuple(ratio), antialias=True),
                T.RandomHorizontalFlip(hflip_prob),
                T.ColorJitter(0.2, 0.2, 0.2, 0.02),
                T.PILToTensor(),
                T.ToDtype(torch.float32, scale=True),
            ]
        )

    def __call__(self, img: Image.Image):
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.transforms(img)


def as_rgb_uint8(chw: Sequence | np.ndarray) -> Image.Image:
    """float ``[3, H, W]`` in [0, 1] -> 8-bit RGB PIL image (round to nearest)."""
    arr = np.asarray(chw, dtype=np.float32)
    arr = np.clip(np.rint(arr.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")
