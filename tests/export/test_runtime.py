"""The onnxruntime Classifier: loading, providers, predictions, errors."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from PIL import Image

from export.runtime import CPU, CUDA, Classifier, ModelError, cuda_device_count, default_providers
from tests.conftest import LABELS, synthetic_photo
from training.images import EmptyImageError, ImageError, NotAnImageError, UnsupportedImageError

HAS_CUDA = CUDA in __import__("onnxruntime").get_available_providers() and cuda_device_count() > 0


@pytest.fixture(scope="module")
def clf(tiny_onnx) -> Classifier:
    return Classifier.load(tiny_onnx)


def test_load_reads_labels_and_metadata(clf):
    assert clf.labels == LABELS
    assert clf.metadata["arch"] == "mobilenet_v3_small"
    assert clf.image_size == 224 and clf.resize_size == 256
    assert clf.providers[-1] == CPU
    assert "tiny.onnx" in repr(clf)


def test_predictions_are_right_sorted_and_sum_to_one(clf, val_photos):
    correct = 0
    for path, label in val_photos:
        top = clf.predict(path)
        assert [name for name, _ in top] == sorted(LABELS, key=lambda n: -dict(top)[n])
        assert all(0.0 <= p <= 1.0 for _, p in top) and sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)
        correct += top[0][0] == label
    assert correct / len(val_photos) >= 0.9


def test_path_bytes_file_and_pil_give_the_same_answer(clf, val_photos):
    path = val_photos[0][0]
    want = clf.predict(path)
    for src in (str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), Image.open(path)):
        got = clf.predict(src)
        assert [n for n, _ in got] == [n for n, _ in want]
        assert np.allclose([p for _, p in got], [p for _, p in want], atol=1e-6)


def test_top_k_is_clamped_and_validated(clf, val_photos):
    path = val_photos[0][0]
    assert len(clf.predict(path, top_k=1)) == 1
    assert len(clf.predict(path, top_k=10)) == len(LABELS)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="top_k"):
            clf.predict(path, top_k=bad)


def test_predict_batch_equals_one_by_one(clf, val_photos):
    paths = [p for p, _ in val_photos[:7]]
    batch = clf.predict_batch(paths, top_k=2)
    assert len(batch) == 7
    for path, got in zip(paths, batch):
        want = clf.predict(path, top_k=2)
        assert [n for n, _ in got] == [n for n, _ in want]
        assert np.allclose([p for _, p in got], [p for _, p in want], atol=1e-5)
    assert clf.predict_batch([]) == []


def test_probabilities_checks_the_batch_shape(clf):
    assert clf.probabilities(np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 2)
    out = clf.probabilities(np.random.default_rng(0).random((3, 3, 224, 224)))  # float64 is accepted
    assert out.dtype == np.float32 and out.shape == (3, 2)
    for shape in [(3, 224, 224), (1, 3, 128, 128), (1, 1, 224, 224)]:
        with pytest.raises(ValueError, match="expected a batch of shape"):
            clf.probabilities(np.zeros(shape, np.float32))


def test_bad_uploads_raise_image_errors_users_can_read(clf, val_photos):
    with pytest.raises(EmptyImageError):
        clf.predict(b"")
    with pytest.raises(NotAnImageError, match="not an image"):
        clf.predict(b"GIF89 but not really" * 3)
    with pytest.raises(UnsupportedImageError, match="SVG"):
        clf.predict(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>")
    good = val_photos[0][0]
    with pytest.raises(ImageError, match=r"image 2 of 3: .*empty"):
        clf.predict_batch([good, b"", good])


def test_load_refuses_missing_and_broken_models(tmp_path):
    with pytest.raises(ModelError, match="model not found"):
        Classifier.load(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(ModelError, match="not an ONNX model"):
        Classifier.load(junk)
    with pytest.raises(ModelError, match="not available"):
        Classifier.load(junk, providers=["NoSuchExecutionProvider"])


def test_logits_only_model_without_metadata_still_serves(tiny_onnx, tmp_path, clf, val_photos):
    """A model exported elsewhere: only logits, no labels in metadata."""
    proto = onnx.load(str(tiny_onnx))
    keep = [o for o in proto.graph.output if o.name == "logits"]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    del proto.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(proto, str(path))
    bare = Classifier.load(path)
    assert bare.labels == ["class_0", "class_1"]
    batch = np.stack([clf.preprocess(p) for p, _ in val_photos[:4]])
    np.testing.assert_allclose(bare.probabilities(batch), clf.probabilities(batch), atol=1e-6)


def test_cpu_only_machine_gets_cpu_and_no_cuda_noise(tiny_onnx):
    """onnxruntime-gpu on a machine without a GPU: no CUDA provider is requested, so
    nothing about missing CUDA libraries reaches the logs."""
    if HAS_CUDA:
        pytest.skip("this machine has a usable CUDA device")
    assert default_providers() == [CPU]
    with pytest.raises(ModelError, match="no NVIDIA GPU"):
        Classifier.load(tiny_onnx, providers=[CUDA, CPU])
    code = textwrap.dedent(
        f"""
        import numpy as np
        from export.runtime import Classifier
        clf = Classifier.load({str(tiny_onnx)!r})
        print(clf.providers, clf.probabilities(np.zeros((2, 3, 224, 224), np.float32)).shape)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "['CPUExecutionProvider']" in proc.stdout
    assert "CUDA" not in proc.stderr and "rror" not in proc.stderr, proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and onnxruntime-gpu")
def test_cuda_provider_with_io_binding_matches_cpu(tiny_onnx):
    gpu = Classifier.load(tiny_onnx)
    cpu = Classifier.load(tiny_onnx, providers=[CPU])
    assert gpu.providers[0] == CUDA
    batch = np.stack([cpu.preprocess(synthetic_photo(LABELS[i % 2], 7000 + i)) for i in range(32)])
    np.testing.assert_allclose(gpu.probabilities(batch), cpu.probabilities(batch), atol=1e-3)
    np.testing.assert_allclose(gpu.probabilities(batch[:1]), cpu.probabilities(batch[:1]), atol=1e-3)
