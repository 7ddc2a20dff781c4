"""Fixtures for the export tests: an int8 model quantized from ``tiny_onnx``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_int8(tmp_path_factory, tiny_onnx, synthetic_data) -> Path:
    """``tiny_onnx`` statically quantized to int8, calibrated on the synthetic train photos."""
    from export.quantize import quantize_int8

    path = tmp_path_factory.mktemp("tiny_int8") / "tiny-int8.onnx"
    quantize_int8(tiny_onnx, path, synthetic_data / "train", n_calibration=32, n_check=16, min_agreement=0.0)
    return path


@pytest.fixture(scope="session")
def val_photos(synthetic_data) -> list[tuple[Path, str]]:
    """``(path, label)`` for every synthetic val photo."""
    return [(f, d.name) for d in sorted((synthetic_data / "val").iterdir()) for f in sorted(d.iterdir())]


# The real Triton server's fixtures (triton_files, triton_repos, triton_server) live in
# tests/conftest.py: one server per session for the export and the benchmark tests alike.

SHIPPED_ONNX = Path(__file__).resolve().parents[2] / "models" / "catsdogs.onnx"
