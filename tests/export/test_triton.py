"""Triton model repository: layout, config contents, and a model that batches. The client
against a real tritonserver is tested in test_triton_server.py."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest

from export.runtime import Classifier, ModelError
from export.triton import write_triton_repo
from tests.conftest import LABELS


@pytest.fixture(scope="module")
def repo(tiny_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    folder = write_triton_repo(tiny_onnx, root, name="pets", max_batch_size=16)
    return root, folder


def test_layout(repo, tiny_onnx):
    root, folder = repo
    assert folder == root / "pets"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["pets/1/model.onnx", "pets/config.pbtxt", "pets/labels.txt"]
    assert (folder / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert (folder / "labels.txt").read_text().splitlines() == LABELS


def test_config_contents(repo):
    text = (repo[1] / "config.pbtxt").read_text()
    assert re.search(r'^name: "pets"$', text, re.M)
    assert re.search(r'^platform: "onnxruntime_onnx"$', text, re.M)
    assert re.search(r"^max_batch_size: 16$", text, re.M)
    # Dims leave out the batch axis, which Triton adds from max_batch_size.
    assert re.search(r'name: "image"\s+data_type: TYPE_FP32\s+dims: \[ 3, 224, 224 \]', text)
    assert re.search(r'name: "probabilities"\s+data_type: TYPE_FP32\s+dims: \[ 2 \]\s+label_filename: "labels.txt"', text)
    assert re.search(r'name: "logits"\s+data_type: TYPE_FP32\s+dims: \[ 2 \]', text)
    assert re.search(r"dynamic_batching \{\s+max_queue_delay_microseconds: \d+\s+\}", text)
    assert text.count("{") == text.count("}") and text.count("[") == text.count("]")


def test_repository_model_runs_with_batch_above_one(repo, tiny_onnx, val_photos):
    model = repo[1] / "1" / "model.onnx"
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    clf = Classifier.load(tiny_onnx)
    batch = np.stack([clf.preprocess(p) for p, _ in val_photos[:5]])
    (probs,) = sess.run(["probabilities"], {"image": batch})
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs, clf.probabilities(batch), atol=1e-6)


def test_kind_and_bad_arguments(tiny_onnx, tmp_path):
    folder = write_triton_repo(tiny_onnx, tmp_path, kind="gpu")
    assert folder.name == "tiny" and "kind: KIND_GPU" in (folder / "config.pbtxt").read_text()
    for kwargs, phrase in [({"name": "../evil"}, "letters, digits"), ({"max_batch_size": 0}, "max_batch_size"), ({"kind": "tpu"}, "instance kind")]:
        with pytest.raises(ValueError, match=phrase):
            write_triton_repo(tiny_onnx, tmp_path, **kwargs)


def test_urls_that_name_no_triton_model_are_one_clear_error():
    with pytest.raises(ModelError, match="cannot reach Triton"):
        Classifier.load("http://127.0.0.1:9/pets")  # discard port: nothing listens
    with pytest.raises(ModelError, match="not a Triton model URL"):
        Classifier.load("http://127.0.0.1:8000/a/b/c")


def test_job_models_layout_config_and_limits(tiny_checkpoint, tmp_path):
    from export.jobs import JobLimits
    from export.triton import write_job_models

    limits = JobLimits(max_steps=40, eps_max=8 / 255)
    folders = write_job_models(tiny_checkpoint, tmp_path, kind="gpu", count=2, limits=limits, sys_path=["/opt/petlens"], threads=3)
    assert [f.name for f in folders] == ["petlens_fool", "petlens_ideal", "petlens_explain"]
    for folder in folders:
        assert (folder / "1" / "model.pt").read_bytes() == tiny_checkpoint.read_bytes()
        assert "class TritonPythonModel" in (folder / "1" / "model.py").read_text()
        text = (folder / "config.pbtxt").read_text()
        assert re.search(rf'^name: "{folder.name}"$', text, re.M) and re.search(r'^backend: "python"$', text, re.M)
        assert "kind: KIND_GPU" in text and "count: 2" in text and "max_batch_size: 8" in text
        assert "dynamic_batching {" in text and "allow_ragged_batch: true" in text and "TYPE_STRING" not in text
        params = dict(re.findall(r'key: "petlens\.(\w+)" value: \{ string_value: "((?:[^"\\]|\\.)*)" \}', text))
        assert params["job"] == folder.name.split("_")[1] and params["sys_path"] == "/opt/petlens" and params["threads"] == "3"
        assert JobLimits.from_params(params) == limits and params["labels"] == '[\\"cat\\", \\"dog\\"]'
    fool_config = (folders[0] / "config.pbtxt").read_text()
    assert re.search(r'input \[\n  \{\n    name: "photo"\n    data_type: TYPE_UINT8\n    dims: \[ -1 \]', fool_config)
    assert re.findall(r'name: "(\w+)"\n    data_type: TYPE_UINT8', fool_config) == ["photo", "image", "result"]
    cpu = write_job_models(tiny_checkpoint, tmp_path / "cpu", jobs=("fool",), kind="cpu")
    assert "kind: KIND_CPU" in (cpu[0] / "config.pbtxt").read_text()


def test_job_models_bad_arguments(tiny_checkpoint, tmp_path):
    from export.triton import write_job_models

    for kwargs, phrase in [({"jobs": ("train",)}, "unknown job 'train'"), ({"kind": "tpu"}, "instance kind"),
                           ({"max_batch_size": 0}, "max_batch_size")]:
        with pytest.raises(ValueError, match=phrase):
            write_job_models(tiny_checkpoint, tmp_path, **kwargs)
