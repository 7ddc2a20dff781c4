"""Fixtures for the export tests: an int8 model quantized from ``tiny_onnx``, and a real
Triton server serving the shipped model (marker ``triton``)."""

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


# --- a real Triton server (tests/export/tritonserver.py), started once per session --------

SHIPPED_ONNX = Path(__file__).resolve().parents[2] / "models" / "catsdogs.onnx"


@pytest.fixture(scope="session")
def triton_files():
    """The server files from the nvidia-pytriton wheel; skips (with the reason) without them."""
    from tests.export.tritonserver import find_server

    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install -e '.[triton]')")
    files, why = find_server()
    if files is None:
        pytest.skip(why)
    return files


@pytest.fixture(scope="session")
def triton_repos(tmp_path_factory) -> tuple[Path, Path]:
    """``(exported, twin)``: the repository ``export.triton`` writes for the shipped model, and
    the python-backend twin the server runs. The twin repository also holds ``mismatch``
    (a config promising 3 classes of a 2-class model) and ``broken`` (fails to load)."""
    from export.triton import write_triton_repo
    from tests.export.tritonserver import python_twin

    root = tmp_path_factory.mktemp("triton")
    exported = write_triton_repo(SHIPPED_ONNX, root / "exported", name="catsdogs")
    twin = root / "twin"
    python_twin(exported, twin)
    mismatch = python_twin(write_triton_repo(SHIPPED_ONNX, root / "other", name="mismatch"), twin)
    config = mismatch / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 2 ]", "dims: [ 3 ]"))
    broken = python_twin(write_triton_repo(SHIPPED_ONNX, root / "other", name="broken"), twin)
    (broken / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('weights are missing')\n")
    return exported, twin


@pytest.fixture(scope="session")
def triton_server(triton_files, triton_repos, tmp_path_factory):
    """tritonserver on a free loopback port serving the twin repository; always stopped."""
    from tests.export.tritonserver import TritonServer

    server = TritonServer(triton_repos[1], triton_files, tmp_path_factory.mktemp("tritonserver"))
    server.start(models=["catsdogs", "mismatch"])
    try:
        yield server
    finally:
        server.stop()
