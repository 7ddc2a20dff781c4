"""Fixtures for the training tests: the three dataset layouts, drawn on the fly, and a
helper that runs a command line the way a user would (a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LABELS, synthetic_photo, write_imagefolder

REPO = Path(__file__).resolve().parents[2]


def run_module(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m <args>`` from the repo root, one thread per process (the test machine
    has two cores)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def small_photo(label: str, seed: int):
    """A synthetic photo at the smallest size the presets handle without upscaling much."""
    return synthetic_photo(label, seed, size=(96, 80))


@pytest.fixture(scope="session")
def helpers():
    """The root conftest's drawing helpers and :func:`run_module`, for test modules."""
    from types import SimpleNamespace

    return SimpleNamespace(synthetic_photo=synthetic_photo, write_imagefolder=write_imagefolder,
                           small_photo=small_photo, run_module=run_module, labels=LABELS)


@pytest.fixture
def petimages_root(tmp_path) -> Path:
    """``PetImages/Cat``, ``PetImages/Dog`` with the download's blemishes: an empty file,
    a truncated JPEG, text saved as .jpg and a Thumbs.db."""
    root = tmp_path / "PetImages"
    for label, folder in (("cat", "Cat"), ("dog", "Dog")):
        (root / folder).mkdir(parents=True)
        for i in range(6):
            small_photo(label, i).save(root / folder / f"{i}.jpg", quality=90)
        (root / folder / "Thumbs.db").write_bytes(b"\x00" * 64)
    (root / "Cat" / "666.jpg").write_bytes(b"")
    whole = (root / "Dog" / "0.jpg").read_bytes()
    (root / "Dog" / "11702.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "Dog" / "99.jpg").write_text("<html>not found</html>")
    return tmp_path


@pytest.fixture
def oxford_root(tmp_path) -> Path:
    """``images/Breed_Name_N.jpg`` for two cat and one dog breed (no annotations)."""
    root = tmp_path / "oxford-iiit-pet"
    (root / "images").mkdir(parents=True)
    for breed, label in (("Abyssinian", "cat"), ("Bengal", "cat"), ("american_bulldog", "dog")):
        for i in range(1, 6):
            small_photo(label, hash(breed) % 1000 + i).save(root / "images" / f"{breed}_{i}.jpg")
    (root / "images" / "Abyssinian_100.mat").write_bytes(b"MATLAB")  # the real set has these
    return root


@pytest.fixture
def flat_root(tmp_path) -> Path:
    """``DIR/<class>/`` without a train/val split."""
    return write_imagefolder(tmp_path / "flat", 10, ext=".jpg")
