"""The shipped artifacts in models/ belong together: the ONNX files were exported from this
very checkpoint, and onnxruntime reproduces torch on images the test makes."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.runtime import Classifier
from tests.conftest import LABELS, synthetic_photo
from training import load_checkpoint, read_checkpoint
from training.ood import ClassifierWithOOD, ood_scorer_from_checkpoint
from training.presets import preprocess_batch

MODELS = Path(__file__).resolve().parents[2] / "models"
EXAMPLES = Path(__file__).resolve().parents[2] / "demo" / "examples"


@pytest.fixture(scope="module")
def batch():
    from PIL import Image

    images = [synthetic_photo(label, 500 + i, size=(300, 220)) for label in LABELS for i in range(3)]
    images += [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.jpg"))]
    return preprocess_batch(images)


def test_onnx_files_were_exported_from_the_shipped_checkpoint():
    digest = hashlib.sha256((MODELS / "catsdogs.pt").read_bytes()).hexdigest()
    for name in ("catsdogs.onnx", "catsdogs-int8.onnx"):
        clf = Classifier.load(MODELS / name)
        assert clf.metadata["source_sha256"] == digest, f"{name} was not exported from models/catsdogs.pt"
        assert clf.labels == ["cat", "dog"] == read_checkpoint(MODELS / "catsdogs.pt")["config"]["labels"]


def test_pt_and_onnx_agree(batch):
    model, _ = load_checkpoint(MODELS / "catsdogs.pt")
    scorer = ood_scorer_from_checkpoint(read_checkpoint(MODELS / "catsdogs.pt"))
    # The fine-tuned model is scored on its pretrained (ImageNet) reference blocks (training/ood.py).
    assert scorer.reference.get("reference_from", -1) > 0
    with torch.inference_mode():
        logits, scores = ClassifierWithOOD(model, scorer).eval()(torch.from_numpy(batch))
        probs, scores = torch.softmax(logits, 1).numpy(), scores.numpy()
    clf = Classifier.load(MODELS / "catsdogs.onnx")
    assert np.abs(clf.probabilities(batch) - probs).max() <= 1e-4
    assert np.abs(clf.ood_scores(batch) - scores).max() <= 1e-4
    assert clf.ood_threshold == pytest.approx(scorer.threshold)
    # The middle answer's cut-off travels too, above the plain answer's (training.verdict).
    assert clf.ood_refuse_threshold == pytest.approx(scorer.refuse_threshold)
    assert clf.ood_refuse_threshold > clf.ood_threshold


def test_int8_model_keeps_the_decisions(batch):
    fp32 = Classifier.load(MODELS / "catsdogs.onnx").probabilities(batch)
    int8 = Classifier.load(MODELS / "catsdogs-int8.onnx").probabilities(batch)
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.85
    assert np.abs(fp32 - int8).max() <= 0.25


def test_shipped_model_knows_the_example_cat():
    top = Classifier.load(MODELS / "catsdogs.onnx").predict(EXAMPLES / "chelsea-cat.jpg")
    assert top[0][0] == "cat" and top[0][1] > 0.9
    for name in ("catsdogs.onnx", "catsdogs-int8.onnx"):
        clf = Classifier.load(MODELS / name)
        assert clf.assess(EXAMPLES / "chelsea-cat.jpg").verdict == "pet", name
        assert clf.assess(EXAMPLES / "coffee-not-a-pet.jpg").verdict == "not_pet", name  # refused, not "probably"
    meta = json.loads(Classifier.load(MODELS / "catsdogs.onnx").metadata["metrics"])
    assert meta["val_accuracy"] >= 0.97
