"""Datasets: find the photos under a folder, split them, decode them safely.

Three layouts are recognised (see :func:`find_dataset`):

- ImageFolder: ``DIR/train/<class>/*`` and ``DIR/val/<class>/*``; without ``val/`` a seeded,
  per-class fraction of ``train/`` is held out. Plain ``DIR/<class>/*`` works the same way.
- Microsoft PetImages (the "Kaggle Cats and Dogs" download): ``DIR/Cat/*``, ``DIR/Dog/*``
  (or ``DIR/PetImages/...``), labels ``cat`` and ``dog``. The real download holds a few
  empty and undecodable files; like unreadable files in every layout they are skipped and
  counted by :func:`check_images`.
- Oxford-IIIT Pet: ``DIR/images/<Breed_Name>_<N>.jpg``, the label taken from the file name
  (torchvision's spelling, e.g. ``American Bulldog``); the official trainval/test split is
  used when ``DIR/annotations/{trainval,test}.txt`` are there. ``DIR`` may also be the root
  given to ``torchvision.datasets.OxfordIIITPet(root, download=True)``.

Every image is decoded through :func:`training.images.load_image`, the product's one intake.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .images import IMAGE_SUFFIXES, ImageError, image_files, load_image
from .presets import RESIZE_SIZE

LAYOUTS_HELP = (
    "expected one of: DIR/train/<class>/ (+ optional DIR/val/<class>/), DIR/<class>/, "
    "a PetImages folder (DIR/Cat/, DIR/Dog/), or an Oxford-IIIT Pet folder (DIR/images/Breed_Name_N.jpg)"
)
_OXFORD_NAME = re.compile(r"^(?P<breed>.+)_(?P<n>\d+)$")

Sample = tuple[str, int]  # (path, class index)


class DatasetError(ValueError):
    """A data folder that cannot be trained or evaluated on; the message says why."""


@dataclass
class Splits:
    """What :func:`find_dataset` found: labelled train/val samples and where they came from."""

    layout: str
    labels: list[str]
    train: list[Sample]
    val: list[Sample]
    val_source: str  # "val/ folder", "official split", "seeded 20% split"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def counts(self, which: str) -> dict[str, int]:
        """Images per class in ``"train"`` or ``"val"``."""
        c = Counter(label for _, label in getattr(self, which))
        return {name: c.get(i, 0) for i, name in enumerate(self.labels)}


def decode(path: str | Path) -> Image.Image:
    """An image file -> RGB PIL image, big JPEGs decoded at reduced scale (never below
    the 256 px the presets need)."""
    return load_image(path, min_side=RESIZE_SIZE)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_class_folders(folder: Path, labels: Sequence[str] | None = None) -> tuple[list[str], list[Sample]]:
    """``folder/<class>/*`` -> (labels, samples). With ``labels`` given, folder names are
    matched to them case-insensitively and unknown folders are an error."""
    if not folder.is_dir():
        raise DatasetError(f"data folder not found: {folder}")
    dirs = _class_dirs(folder)
    if labels is None:
        labels = [d.name for d in dirs]
        index = {d.name: i for i, d in enumerate(dirs)}
    else:
        lower = {name.lower(): i for i, name in enumerate(labels)}
        unknown = [d.name for d in dirs if d.name.lower() not in lower]
        if unknown:
            raise DatasetError(
                f"{folder} has class folders the model does not know: {', '.join(unknown)}; "
                f"its classes are: {', '.join(labels)}"
            )
        index = {d.name: lower[d.name.lower()] for d in dirs}
    samples: list[Sample] = []
    for d in dirs:
        files = image_files(d)
        if not files:
            raise DatasetError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        samples += [(str(f), index[d.name]) for f in files]
    if not samples:
        raise DatasetError(f"no class folders with images in {folder}; {LAYOUTS_HELP}")
    return list(labels), samples


def split_samples(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Per-class seeded hold-out: the same files land in val for the same seed, whatever
    the file system's listing order."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"the validation fraction must be between 0 and 1, got {fraction}")
    train, val = [], []
    by_class: dict[int, list[Sample]] = {}
    for s in sorted(samples):
        by_class.setdefault(s[1], []).append(s)
    for label, items in sorted(by_class.items()):
        random.Random(f"{seed}-{label}").shuffle(items)
        k = max(1, round(fraction * len(items))) if len(items) >= 2 else 0
        val += items[:k]
        train += items[k:]
    return train, val


def _oxford_label(stem: str) -> str | None:
    m = _OXFORD_NAME.match(stem)
    # torchvision's OxfordIIITPet spells classes "American Bulldog", "Abyssinian", ...
    return " ".join(part.title() for part in m["breed"].split("_")) if m else None


def _find_oxford(root: Path, val_fraction: float, seed: int) -> Splits:
    files = image_files(root / "images", recursive=False)
    named = [(f, _oxford_label(f.stem)) for f in files]
    named = [(f, lab) for f, lab in named if lab]
    if not named:
        raise DatasetError(f"{root / 'images'} holds no files named like Breed_Name_123.jpg")
    labels = sorted({lab for _, lab in named})
    index = {lab: i for i, lab in enumerate(labels)}
    samples = [(str(f), index[lab]) for f, lab in named]
    ann = root / "annotations"
    if (ann / "trainval.txt").is_file() and (ann / "test.txt").is_file():
        def stems(txt: Path) -> set[str]:
            return {line.split()[0] for line in txt.read_text().splitlines() if line.strip()}

        trainval, test = stems(ann / "trainval.txt"), stems(ann / "test.txt")
        train = [s for s in samples if Path(s[0]).stem in trainval]
        val = [s for s in samples if Path(s[0]).stem in test]
        return Splits("oxford-iiit-pet", labels, train, val, "official trainval/test split")
    train, val = split_samples(samples, val_fraction, seed)
    return Splits("oxford-iiit-pet", labels, train, val, f"seeded {val_fraction:.0%} split")


def find_dataset(root: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Recognise the layout under ``root`` and return labelled train/val samples.

    Raises :class:`DatasetError` with the reason (missing folder, no images, one class...).
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"--data must be a folder, got a file: {root}")
    # torchvision's download root and the PetImages zip add one level of nesting.
    for nested in ("oxford-iiit-pet", "PetImages"):
        if (root / nested).is_dir() and not (root / "train").is_dir():
            root = root / nested
    if (root / "train").is_dir():
        labels, train = scan_class_folders(root / "train")
        if (root / "val").is_dir():
            _, val = scan_class_folders(root / "val", labels)
            splits = Splits("imagefolder", labels, train, val, "val/ folder")
        else:
            train, val = split_samples(train, val_fraction, seed)
            splits = Splits("imagefolder", labels, train, val, f"seeded {val_fraction:.0%} split of train/")
    elif (root / "images").is_dir() and not _class_dirs(root / "images"):
        splits = _find_oxford(root, val_fraction, seed)
    elif (root / "Cat").is_dir() and (root / "Dog").is_dir():
        _, samples = scan_class_folders(root)
        # Only Cat/ and Dog/ count; the download's labels are lower-cased for the product.
        names = [d.name for d in _class_dirs(root)]
        keep = {names.index("Cat"): 0, names.index("Dog"): 1}
        samples = [(p, keep[y]) for p, y in samples if y in keep]
        train, val = split_samples(samples, val_fraction, seed)
        splits = Splits("petimages", ["cat", "dog"], train, val, f"seeded {val_fraction:.0%} split")
    elif _class_dirs(root):
        labels, samples = scan_class_folders(root)
        train, val = split_samples(samples, val_fraction, seed)
        splits = Splits("class-folders", labels, train, val, f"seeded {val_fraction:.0%} split")
    else:
        raise DatasetError(f"no images found in {root}; {LAYOUTS_HELP}")
    check_classes(splits.labels, splits.train, f"{root} (training set)")
    return splits


def check_classes(labels: Sequence[str], samples: Sequence[Sample], where: str) -> None:
    """At least two classes, each with at least one image."""
    if len(labels) < 2:
        found = f"only {labels[0]!r}" if labels else "none"
        raise DatasetError(f"need at least 2 classes to train a classifier, found {found} in {where}")
    present = Counter(y for _, y in samples)
    empty = [labels[i] for i in range(len(labels)) if present.get(i, 0) == 0]
    if empty:
        raise DatasetError(f"no usable images for class(es) {', '.join(empty)} in {where}")


class _Probe(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> str | None:
        try:
            decode(self.samples[i][0])
        except ImageError as exc:
            return str(exc)
        return None


def check_images(samples: Sequence[Sample], *, workers: int = 0, progress: bool = False) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Decode every image once; returns ``(usable samples, [(path, reason), ...])``.

    Done up front so that a truncated JPEG is reported (and counted) before training
    rather than crashing a loader worker in epoch 3.
    """
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        _Probe(samples), batch_size=64, num_workers=workers, collate_fn=list
    )
    errors: list[str | None] = []
    for batch in tqdm(loader, desc="checking images", unit="batch", disable=not progress, leave=False):
        errors += batch
    good = [s for s, e in zip(samples, errors) if e is None]
    bad = [(s[0], e) for s, e in zip(samples, errors) if e is not None]
    return good, bad


class ImageDataset(torch.utils.data.Dataset):
    """``(path, label)`` samples -> ``(transform(image), label)``; a label that is a tuple of
    ints (``(label, breed)``, :mod:`training.breeds`) comes back as a LongTensor, so batches
    stack to ``[N, 2]``."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], torch.Tensor]):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(decode(path)), (torch.tensor(label) if isinstance(label, tuple) else label)

