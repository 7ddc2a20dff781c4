"""OOD scores: separation on synthetic photos, calibration, checkpoint round trip, ONNX parity."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import tests.conftest as _root_module  # shared helpers; pytest puts the repo root on sys.path
from training import load_checkpoint, read_checkpoint, save_checkpoint
from training.ood import (
    METHODS,
    ClassifierWithOOD,
    OODScorer,
    ScoreFeatures,
    conformal_threshold,
    fit_ood,
    ood_metrics,
    ood_scorer_from_checkpoint,
    ood_summary,
    reference_state,
    score_images,
)
from training.presets import preprocess_batch
from training.verdict import NOT_PET, PET, UNSURE, VERDICTS, verdict

_root = _root_module
LABELS, synthetic_photo, finetuned_copy = _root.LABELS, _root.synthetic_photo, _root.finetuned_copy


def shifted_photo(kind: str, seed: int, size: tuple[int, int] = (160, 128)) -> Image.Image:
    """Images unlike the synthetic pets: other shapes and colours, stripes, gradients, noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    if kind == "triangle":  # a green triangle on the pets' own noisy background
        img = Image.fromarray(rng.integers(90, 166, (h, w, 3), dtype=np.uint8), "RGB")
        x, y, r = int(rng.integers(40, w - 40)), int(rng.integers(40, h - 40)), int(rng.integers(25, 40))
        ImageDraw.Draw(img).polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=(30, int(rng.integers(180, 255)), 40))
        return img
    if kind == "stripes":
        a = (np.arange(h)[:, None] // int(rng.integers(6, 20)) % 2) * 200 + 30
        return Image.fromarray(np.repeat(np.broadcast_to(a, (h, w))[..., None], 3, 2).astype(np.uint8), "RGB")
    if kind == "gradient":
        c0, c1, t = rng.integers(0, 255, 3), rng.integers(0, 255, 3), np.linspace(0, 1, w)[None, :, None]
        return Image.fromarray(np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3)).astype(np.uint8), "RGB")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def photo_features(tiny_checkpoint):
    """Features and logits of the tiny model on train / val / held-out pets / shifted images."""
    model, _ = load_checkpoint(tiny_checkpoint)
    sets = {
        "train": [synthetic_photo(label, s) for label in LABELS for s in range(24)],  # the fixture's training photos
        "val": [synthetic_photo(label, 1000 + s) for label in LABELS for s in range(20)],
        "test": [synthetic_photo(label, 5000 + s) for label in LABELS for s in range(20)],
        "shifted": [shifted_photo(kind, s) for kind in ("triangle", "stripes", "gradient", "noise") for s in range(8)],
    }
    out = {}
    with torch.inference_mode():
        for name, images in sets.items():
            f = model.embed(torch.from_numpy(preprocess_batch(images)))
            out[name] = (f.clone(), model.head(f).clone())
    out["train_labels"] = torch.tensor([0] * 24 + [1] * 24)
    out["model"], out["images"] = model, sets
    return out


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_score_separates_synthetic_pets_from_shifted_images(photo_features, method):
    d = photo_features
    (tr, _), (va, va_logits) = d["train"], d["val"]
    scorer = OODScorer(fit_ood(tr, d["train_labels"], va, method=method))
    with torch.no_grad():
        pets, others = scorer(*d["test"]), scorer(*d["shifted"])
    m = ood_metrics(pets, others, scorer.threshold)
    assert m["auroc"] >= 0.9, m
    assert m["false_accept_rate"] <= 0.5, m
    assert m["true_accept_rate"] >= 0.8, m  # calibrated on 40 val photos for 95%
    # The logit baseline sees a 'triangle' or a gradient as a confident cat or dog.
    base = OODScorer(fit_ood(tr, d["train_labels"], va, method="msp", val_logits=va_logits))
    with torch.no_grad():
        assert ood_metrics(base(*d["test"]), base(*d["shifted"]), base.threshold)["auroc"] < m["auroc"]


def gaussian_pets(n: int, seed: int, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class Gaussian 'features' with non-negative means (like post-ReLU features)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    centres = torch.stack([torch.linspace(1, 2, dim), torch.linspace(2, 1, dim)])
    return centres[labels] + 0.4 * torch.randn(n, dim, generator=g), labels


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
@pytest.mark.parametrize("target", [0.90, 0.95])
def test_calibration_hits_the_stated_rate_on_held_out_data(method, target):
    train, labels = gaussian_pets(600, seed=0)
    val, _ = gaussian_pets(1000, seed=1)
    held_out, _ = gaussian_pets(20000, seed=2)
    state = fit_ood(train, labels, val, method=method, target_tpr=target, refuse_tpr=0.98)
    assert state["val_tpr"] >= target and state["n_val"] == 1000
    assert state["val_not_refused"] >= 0.98 and state["refuse_threshold"] >= state["threshold"]
    scorer = OODScorer(state)
    with torch.no_grad():
        scores = scorer(held_out, torch.zeros(len(held_out), 2))
    # 1000 calibration scores: the acceptance rate's standard deviation is ~0.7% at 95%.
    assert (scores <= scorer.threshold).double().mean().item() == pytest.approx(target, abs=0.02)
    # The second threshold keeps its own promise: 98% of new pets are not refused.
    assert (scores <= scorer.refuse_threshold).double().mean().item() == pytest.approx(0.98, abs=0.01)
    answers = [verdict(float(v), scorer.threshold, scorer.refuse_threshold) for v in scores[:2000]]
    assert {a: answers.count(a) for a in VERDICTS}[UNSURE] == int(((scores[:2000] > scorer.threshold)
                                                                   & (scores[:2000] <= scorer.refuse_threshold)).sum())


def test_three_answers_and_states_without_the_middle_one():
    assert [verdict(s, 0.3, 0.4) for s in (0.1, 0.3, 0.35, 0.4, 0.41)] == [PET, PET, UNSURE, UNSURE, NOT_PET]
    assert [verdict(s, 0.3) for s in (0.3, 0.35)] == [PET, NOT_PET]  # no refuse threshold: two answers
    x, y = gaussian_pets(200, seed=0)
    state = fit_ood(x, y, x[:100], refuse_tpr=None)  # as fitted before the middle answer existed
    assert "refuse_threshold" not in state and OODScorer(state).refuse_threshold is None
    with_it = fit_ood(x, y, x[:100])  # the default: 95% plain answers, 98% not refused
    assert (with_it["target_tpr"], with_it["refuse_tpr"]) == (0.95, 0.98)
    assert OODScorer(with_it).refuse_threshold == with_it["refuse_threshold"] > with_it["threshold"]
    assert with_it["refuse_threshold"] == conformal_threshold(OODScorer(with_it)(x[:100], None), 0.98)
    with pytest.raises(ValueError, match=r"refuse_tpr must be in \[target_tpr, 1\)"):
        fit_ood(x, y, x, target_tpr=0.95, refuse_tpr=0.9)
    m = ood_metrics(torch.tensor([0.1, 0.35, 0.5]), torch.tensor([0.2, 0.38, 0.45, 0.9]), 0.3, 0.4)
    assert (m["true_accept_rate"], m["true_not_refused_rate"]) == pytest.approx((1 / 3, 2 / 3))
    assert (m["false_accept_rate"], m["false_not_refused_rate"]) == pytest.approx((1 / 4, 2 / 4))
    assert "true_not_refused_rate" not in ood_metrics(torch.tensor([0.1]), torch.tensor([0.5]), 0.3)


def test_conformal_threshold_rank():
    scores = torch.arange(1, 20, dtype=torch.float64)  # 1 .. 19
    assert conformal_threshold(scores, 0.95) == 19.0  # ceil(20 * 0.95) = 19th smallest
    assert conformal_threshold(torch.arange(1, 101.0), 0.9) == 91.0  # ceil(101 * 0.9) = 91
    assert conformal_threshold(torch.tensor([3.0]), 0.95) == 3.0


def test_state_round_trips_through_a_checkpoint(photo_features, tiny_checkpoint, tmp_path):
    d = photo_features
    model = d["model"]
    state = fit_ood(d["train"][0], d["train_labels"], d["val"][0])
    path = save_checkpoint(tmp_path / "with_ood.pt", model, LABELS, extra={"ood": state})
    ckpt = read_checkpoint(path)  # torch.load(weights_only=True) inside
    scorer = ood_scorer_from_checkpoint(ckpt)
    assert scorer is not None and scorer.threshold == state["threshold"] and scorer.method == "knn"
    with torch.no_grad():
        assert torch.equal(scorer(*d["test"]), OODScorer(state)(*d["test"]))
    assert ood_scorer_from_checkpoint(read_checkpoint(tiny_checkpoint)) is None  # an older checkpoint
    summary = ood_summary(state)
    assert "bank" not in summary and summary["method"] == "knn" and summary["threshold"] == state["threshold"]

    logits, scores = score_images(model, scorer, d["images"]["test"][:4] + d["images"]["shifted"][:4])
    assert logits.shape == (8, 2) and scores.shape == (8,)
    torch.testing.assert_close(scores[:4], scorer(*[t[:4] for t in d["test"]]), rtol=1e-4, atol=1e-5)


def test_bad_arguments_are_readable():
    x, y = gaussian_pets(50, seed=0)
    with pytest.raises(ValueError, match="knn, mahalanobis, energy, msp"):
        fit_ood(x, y, x, method="isolation-forest")
    with pytest.raises(ValueError, match="features per row"):
        fit_ood(x, y, x[:, :5])
    with pytest.raises(ValueError, match="labels"):
        fit_ood(x, y[:10], x)
    with pytest.raises(ValueError, match="NaN"):
        fit_ood(x, y, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="val_logits"):
        fit_ood(x, y, x, method="energy")
    with pytest.raises(ValueError, match="format"):
        OODScorer({"method": "knn"})
    assert set(METHODS) == {"knn", "mahalanobis", "energy", "msp"}


@pytest.mark.parametrize("method", ["knn", "mahalanobis", "energy"])
def test_onnx_scorer_agrees_with_torch(method, tmp_path):
    import onnxruntime as ort

    train, labels = gaussian_pets(300, seed=0)
    val, _ = gaussian_pets(100, seed=1)
    scorer = OODScorer(fit_ood(train, labels, val, method=method, val_logits=torch.randn(100, 2))).eval()
    f, logits = gaussian_pets(5, seed=3)[0], torch.randn(5, 2)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(scorer, (f, logits), str(tmp_path / "ood.onnx"), input_names=["features", "logits"],
                          output_names=["ood_score"], dynamic_shapes={"features": {0: batch}, "logits": {0: batch}},
                          dynamo=True)
    session = ort.InferenceSession(str(tmp_path / "ood.onnx"), providers=["CPUExecutionProvider"])
    f2, l2 = gaussian_pets(17, seed=4)[0], torch.randn(17, 2)  # another batch size than the example
    feeds = {"features": f2.numpy(), "logits": l2.numpy()}
    got = session.run(["ood_score"], {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    with torch.no_grad():
        want = scorer(f2, l2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_classifier_with_ood_agrees_with_torch(photo_features, tmp_path):
    """The graph the export will ship: image -> (logits, ood_score)."""
    import onnxruntime as ort

    d = photo_features
    scorer = OODScorer(fit_ood(d["train"][0], d["train_labels"], d["val"][0]))
    wrapper = ClassifierWithOOD(d["model"], scorer).eval()
    x = torch.from_numpy(preprocess_batch(d["images"]["test"][:3] + d["images"]["shifted"][:3]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (x[:2],), str(tmp_path / "clf.onnx"), input_names=["image"],
                          output_names=["logits", "ood_score"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}}, dynamo=True)
    session = ort.InferenceSession(str(tmp_path / "clf.onnx"), providers=["CPUExecutionProvider"])
    logits, scores = session.run(["logits", "ood_score"], {"image": x.numpy()})
    with torch.no_grad():
        want_logits, want_scores = wrapper(x)
    np.testing.assert_allclose(logits, want_logits.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(scores, want_scores.numpy(), rtol=1e-3, atol=1e-4)
    # Same verdicts on both sides of the threshold.
    assert ((scores <= scorer.threshold) == (want_scores.numpy() <= scorer.threshold)).all()
    assert math.isfinite(scorer.threshold)


def test_reference_state_holds_the_pretrained_blocks_from_the_first_changed_one(photo_features):
    model = photo_features["model"]
    pretrained = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    assert reference_state(model.trunk, pretrained) == {}  # head mode: nothing changed, nothing to keep

    n = len(model.trunk)
    tuned = finetuned_copy(model, n - 3)
    ref = reference_state(tuned.trunk, pretrained)
    assert ref["reference_from"] == n - 3
    later = {name for name, _ in list(tuned.trunk.named_children())[n - 3:]}
    assert {k.split(".", 1)[0] for k in ref["reference_weights"]} == later
    tuned_state = tuned.trunk.state_dict()
    for k, v in ref["reference_weights"].items():
        assert torch.equal(v, pretrained[k]), k
        assert v.dtype == torch.int64 or not torch.equal(v, tuned_state[k]), k  # (BatchNorm counters aside)

    with pytest.raises(ValueError, match="do not fit"):
        reference_state(tuned.trunk, {k: v for k, v in pretrained.items() if not k.startswith("0.")})


def test_score_reads_pretrained_features_while_the_head_reads_the_finetuned_ones(photo_features, tmp_path):
    """The invariant that makes the reference worth it: with it, the score of a fine-tuned
    model is the score of the pretrained features, exactly, and the classifier is untouched."""
    d = photo_features
    pretrained_model = d["model"]
    pretrained = {k: v.clone() for k, v in pretrained_model.trunk.state_dict().items()}
    tuned = finetuned_copy(pretrained_model, len(pretrained_model.trunk) - 4).eval()
    ref = reference_state(tuned.trunk, pretrained)
    x = torch.from_numpy(preprocess_batch(d["images"]["test"][:6] + d["images"]["shifted"][:6]))

    both = ScoreFeatures(tuned, ref).train()  # train() must leave the reference's BatchNorm alone
    assert not both.reference.training
    tuned.eval()
    with torch.no_grad():
        features, scored = both(x)
        torch.testing.assert_close(features, tuned.embed(x), rtol=0, atol=0)
        torch.testing.assert_close(scored, pretrained_model.embed(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(features, scored, atol=1e-3)  # the fine-tuning did change the features

    # Through a checkpoint: fitted on pretrained features, stored with the fine-tuned model.
    state = fit_ood(d["train"][0], d["train_labels"], d["val"][0]) | ref
    path = save_checkpoint(tmp_path / "tuned.pt", tuned, LABELS, extra={"ood": state})
    model, _ = load_checkpoint(path)
    scorer = ood_scorer_from_checkpoint(read_checkpoint(path))
    logits, scores = score_images(model, scorer, d["images"]["test"][:6] + d["images"]["shifted"][:6])
    with torch.no_grad():
        torch.testing.assert_close(logits, tuned(x), rtol=1e-5, atol=1e-5)
        want = OODScorer(state)(pretrained_model.embed(x), logits)
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-5)
    assert ood_summary(state)["reference_from"] == ref["reference_from"] and "reference_weights" not in ood_summary(state)

    with pytest.raises(ValueError, match="do not fit"):
        ScoreFeatures(tuned, {"reference_from": 1, "reference_weights": ref["reference_weights"]})


def test_rank_auroc_equals_the_pairwise_definition_with_ties():
    from training.ood import auroc

    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n, m = (int(v) for v in torch.randint(1, 40, (2,), generator=g))
        a = torch.randint(0, 12, (n,), generator=g).double()  # few values: many ties
        b = torch.randint(0, 12, (m,), generator=g).double()
        diff = b[:, None] - a[None, :]
        pairwise = float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())
        assert auroc(a, b) == pytest.approx(pairwise, abs=1e-12)
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([5.0]), torch.tensor([5.0])) == 0.5
