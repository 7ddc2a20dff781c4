"""``Classifier.assess``: top-k plus the "that's not a pet" verdict from the model's
``ood_score`` output, on the tiny model with kNN statistics (``tiny_ood_onnx``).

In-distribution photos are fresh synthetic cats and dogs (seeds the model never saw, not even
for calibration); shifted ones are colour noise, black-and-white stripes and green triangles.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export.runtime import Assessment, Classifier
from tests.conftest import LABELS, SHIFTED_KINDS, shifted_photo, synthetic_photo, with_ood_thresholds
from training.labels import describe_labels

IN_DIST = [synthetic_photo(label, 5000 + i) for label in LABELS for i in range(15)]
SHIFTED = [shifted_photo(kind, i) for kind in SHIFTED_KINDS for i in range(10)]


@pytest.fixture(scope="module")
def ood_clf(tiny_ood_onnx) -> Classifier:
    return Classifier.load(tiny_ood_onnx)


def test_metadata_carries_the_calibrated_threshold(ood_clf):
    meta = json.loads(ood_clf.metadata["ood"])
    assert meta["method"] == "knn" and meta["target_tpr"] == pytest.approx(0.95)
    assert ood_clf.ood_threshold == pytest.approx(meta["threshold"]) and ood_clf.ood_threshold > 0
    assert meta["refuse_tpr"] == pytest.approx(0.98)
    assert ood_clf.ood_refuse_threshold == pytest.approx(meta["refuse_threshold"])
    assert ood_clf.ood_refuse_threshold >= ood_clf.ood_threshold


def test_pets_are_accepted_and_shifted_images_are_not(ood_clf):
    pets = [ood_clf.assess(img) for img in IN_DIST]
    others = [ood_clf.assess(img) for img in SHIFTED]
    # Calibrated to accept 95% of pets like the val photos: a little slack for 30 new ones.
    assert np.mean([a.is_pet for a in pets]) >= 0.85
    assert np.mean([a.is_pet is False for a in others]) >= 0.8
    # Not only the threshold: the score itself ranks almost every shifted image above pets.
    auroc = np.mean([[o.score > p.score for p in pets] for o in others])
    assert auroc >= 0.9, auroc
    for a in pets + others:
        assert a.threshold == ood_clf.ood_threshold and a.is_pet == (a.score <= a.threshold)


def test_top_k_is_the_same_as_predict(ood_clf):
    for img in IN_DIST[:3] + SHIFTED[:3]:
        got, want = ood_clf.assess(img, top_k=2).top, ood_clf.predict(img, top_k=2)
        assert [label for label, _ in got] == [label for label, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-6)


def test_onnx_score_equals_the_torch_score(ood_clf, tiny_ood_checkpoint):
    from training import load_checkpoint, read_checkpoint
    from training.ood import ood_scorer_from_checkpoint, score_images

    model, _ = load_checkpoint(tiny_ood_checkpoint)
    scorer = ood_scorer_from_checkpoint(read_checkpoint(tiny_ood_checkpoint))
    images = IN_DIST[:4] + SHIFTED[::5]
    logits, scores = score_images(model, scorer, images)
    onnx_scores = [ood_clf.assess(img).score for img in images]
    np.testing.assert_allclose(onnx_scores, scores.numpy(), atol=1e-4)
    assert scorer.threshold == pytest.approx(ood_clf.ood_threshold, abs=1e-6)
    probs = torch.softmax(logits, 1).numpy()
    np.testing.assert_allclose([ood_clf.assess(img, top_k=1).top[0][1] for img in images], probs.max(1), atol=1e-4)


def said(found) -> str | None:
    """What a user is told of an assessment (the wording lives in the service layer)."""
    from service import Classified

    return Classified.of(found).message()


def test_the_message_names_what_the_model_knows(ood_clf):
    shifted = next(a for a in map(ood_clf.assess, SHIFTED) if a.is_pet is False)
    label, prob = shifted.top[0]
    assert said(shifted) == f"This doesn't look like a cat or a dog — closest guess: {label} {prob:.0%}"
    pet = next(a for a in map(ood_clf.assess, IN_DIST) if a.is_pet)
    assert said(pet) is None


def test_describe_labels():
    assert describe_labels(["cat", "dog"]) == "a cat or a dog"
    assert describe_labels(["cat"]) == "a cat"
    assert describe_labels(["Abyssinian", "beagle", "pug"]) == "an Abyssinian, a beagle or a pug"
    assert describe_labels([f"breed_{i}" for i in range(37)]) == "any of the 37 pets this model knows"
    top = [("american_bulldog", 0.4)]
    assert said(Assessment(top, 0.9, 0.5, False, ("x",) * 37)).startswith("This doesn't look like any of the 37 pets")


def test_model_without_ood_output_behaves_as_before(tiny_onnx):
    clf = Classifier.load(tiny_onnx)
    assert clf.ood_threshold is None
    for img in IN_DIST[:2] + SHIFTED[:2]:
        a = clf.assess(img)
        assert (a.score, a.threshold, a.is_pet, a.verdict, said(a)) == (None, None, None, None, None)
        assert a.top == clf.predict(img)


def test_three_answers_from_the_models_own_score(ood_clf, tiny_ood_onnx, tmp_path):
    """The same photo and the same graph, calibrated three ways: the verdict, ``is_pet`` and
    the wording follow the score's place between the two thresholds."""
    photo = IN_DIST[0]
    score = ood_clf.assess(photo).score
    assert score > 0
    bands = {"pet": (2 * score, 4 * score), "unsure": (score / 2, 2 * score), "not_pet": (score / 4, score / 2)}
    found = {}
    for name, (threshold, refuse) in bands.items():
        clf = Classifier.load(with_ood_thresholds(tiny_ood_onnx, tmp_path / f"{name}.onnx", threshold, refuse))
        found[name] = clf.assess(photo)
        assert found[name].verdict == name and found[name].score == pytest.approx(score, abs=1e-6)
        assert found[name].is_pet is (name == "pet")
    label, prob = found["unsure"].top[0]
    assert said(found["pet"]) is None
    assert said(found["unsure"]) == f"Probably a {label} ({prob:.0%}), but this photo is unlike the ones I learned from"
    assert said(found["not_pet"]) == f"This doesn't look like a cat or a dog — closest guess: {label} {prob:.0%}"
    # A model calibrated before the middle answer existed answers in two ways, as it always did.
    old = Classifier.load(with_ood_thresholds(tiny_ood_onnx, tmp_path / "old.onnx", score / 2, None))
    assert old.ood_refuse_threshold is None and old.assess(photo).verdict == "not_pet"
