"""Attacks: the eps-ball after 8-bit rounding, sizes, the target reached on a real (tiny)
model, inputs left alone, model mode restored, the differentiable pieces matching Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import tests.conftest as _root_module  # shared helpers; pytest puts the repo root on sys.path
from training import load_checkpoint
from training.adversarial import (
    EPS_MAX,
    classifier_view,
    fgsm,
    fool,
    pgd,
    reshare,
    robust_view,
    target_margin,
)
from training.images import ImageError
from training.jpeg import jpeg, quant_tables
from training.presets import preprocess

synthetic_photo = _root_module.synthetic_photo


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_checkpoint(tiny_checkpoint)


def _predict(model, image: Image.Image) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(preprocess(image))[None]).softmax(-1)[0]


def _batch(*images: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess(im) for im in images]))


def test_pgd_stays_in_the_ball_and_leaves_input_model_alone(tiny):
    model, labels = tiny
    x = _batch(synthetic_photo("dog", 1), synthetic_photo("dog", 2))
    before = x.clone()
    model.train()  # a caller's training mode must come back as it was
    eps = 4 / 255
    adv = pgd(model, x, labels.index("cat"), eps=eps, alpha=1 / 255, steps=5, margin=None, random_start=True)
    assert model.training
    model.eval()
    assert torch.equal(x, before)
    assert adv.shape == x.shape
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # and it moved towards the target
        assert (model(adv).log_softmax(1)[:, 0] > model(x).log_softmax(1)[:, 0]).all()


def test_pgd_early_stop_reaches_margin(tiny):
    model, labels = tiny
    x = _batch(synthetic_photo("dog", 3))
    adv = pgd(model, x, 0, eps=16 / 255, alpha=2 / 255, steps=15, margin=2.0)
    with torch.no_grad():
        assert target_margin(model(adv), torch.tensor([0]))[0] >= 2.0
    # Early stop: a second run with a hopeless margin moves further from x.
    further = pgd(model, x, 0, eps=16 / 255, alpha=2 / 255, steps=15, margin=1e9)
    assert (further - x).abs().sum() > (adv - x).abs().sum()


def test_fgsm_is_one_step_of_eps(tiny):
    model, _ = tiny
    x = _batch(synthetic_photo("dog", 4))
    eps = 3 / 255
    adv = fgsm(model, x, 0, eps=eps)
    moved = (adv - x).abs()
    assert moved.max() <= eps + 1e-6
    # Every pixel not pinned at 0/1 and with a gradient moves by exactly eps.
    assert torch.isclose(moved[moved > 1e-6], torch.tensor(eps), atol=1e-6).all()
    with torch.no_grad():
        assert model(adv).log_softmax(1)[0, 0] > model(x).log_softmax(1)[0, 0]


def test_classifier_view_matches_pillow():
    rng = np.random.default_rng(0)
    for size in [(517, 389), (200, 150), (300, 256)]:  # downscale, upscale, crop only
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        img = img.resize((size[0] // 4, size[1] // 4)).resize(size, Image.BICUBIC)  # photo-like smoothness
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255)[None]
        ours = classifier_view(img.height, img.width)(x)[0]
        ref = torch.from_numpy(preprocess(img))
        assert ours.shape == ref.shape == (3, 224, 224)
        # Pillow rounds its resize to 8 bits; otherwise the two agree.
        assert (ours - ref).abs().max() <= 1.01 / 255
        assert (ours - ref).abs().mean() <= 0.35 / 255


def test_jpeg_approximation_tracks_pillow():
    img = synthetic_photo("cat", 5, size=(101, 75))  # not a multiple of 8 or 16
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255)[None].requires_grad_(True)
    for q in (75, 85):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        real = np.asarray(Image.open(buf), dtype=np.float32)
        ours = jpeg(x, q)
        assert ours.shape == x.shape
        approx = ours[0].detach().numpy().transpose(1, 2, 0) * 255
        original = np.asarray(img, dtype=np.float32)
        # Closer to what Pillow makes than the untouched image is.
        assert np.abs(approx - real).mean() < 0.6 * np.abs(original - real).mean()
    (g,) = torch.autograd.grad(jpeg(x, 85).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    luma, chroma = quant_tables(50)
    assert luma[0, 0] == 16 and chroma[0, 0] == 17  # quality 50 = the standard tables
    with pytest.raises(ValueError, match="between 1 and 100"):
        quant_tables(0)


def test_robust_view_shapes():
    view = robust_view(90, 120, views=4)
    out = view(torch.rand(2, 3, 90, 120))
    assert out.shape == (8, 3, 224, 224)


@pytest.mark.parametrize("size", [(200, 150), (150, 210)])
def test_fool_reaches_target_within_eps_same_size(tiny, size):
    model, labels = tiny
    photo = synthetic_photo("dog", 11, size=size)
    original = np.asarray(photo).copy()
    eps = 8 / 255
    r = fool(model, labels, photo, "cat", eps=eps)
    assert np.array_equal(np.asarray(photo), original)  # the input is not modified
    assert r.image.mode == "RGB" and r.image.size == photo.size
    assert r.resized_from is None
    assert r.source[0] == "dog" and r.success and r.result[0] == "cat"
    # What a user receives: the 8-bit PNG, decoded again.
    buf = io.BytesIO()
    r.image.save(buf, "PNG")
    received = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    diff = np.abs(np.asarray(received, dtype=np.int16) - original.astype(np.int16)).max()
    assert diff <= round(eps * 255) and abs(r.linf - diff / 255) < 1e-9
    probs = _predict(model, received)
    assert labels[int(probs.argmax())] == "cat"
    assert float(probs.max()) == pytest.approx(r.result[1], abs=1e-5)
    assert 0 < r.steps <= 50 and r.seconds > 0


def test_fool_restores_model_mode(tiny):
    model, labels = tiny
    model.train()
    try:
        r = fool(model, labels, synthetic_photo("dog", 15, size=(96, 80)), "cat", eps=8 / 255, steps=2)
        assert model.training
    finally:
        model.eval()
    # The verdicts are the eval-mode model's, as deployed.
    probs = _predict(model, r.image)
    assert labels[int(probs.argmax())] == r.result[0] and float(probs.max()) == pytest.approx(r.result[1], abs=1e-5)


def test_fool_caps_large_uploads(tiny):
    model, labels = tiny
    photo = synthetic_photo("dog", 12, size=(480, 320))
    r = fool(model, labels, photo, "cat", eps=8 / 255, max_side=300, steps=3)
    assert r.resized_from == (480, 320)
    assert r.image.size == (300, 200)


def test_fool_progress_and_robust_checks(tiny):
    model, labels = tiny
    seen = []
    r = fool(model, labels, synthetic_photo("dog", 13, size=(96, 80)), "cat", eps=8 / 255, robust=True, steps=4,
             progress=lambda step, total: seen.append((step, total)))
    assert set(r.reshared) == {"png", "jpeg", "half"}
    assert seen and seen == [(i, 4) for i in range(1, len(seen) + 1)]
    assert r.image.size == (96, 80) and r.linf <= 8 / 255 + 1e-9
    # The reported re-shared verdicts are what re-sharing really gives.
    for how, (label, prob) in r.reshared.items():
        probs = _predict(model, reshare(r.image, how))
        assert labels[int(probs.argmax())] == label and float(probs.max()) == pytest.approx(prob, abs=1e-5)
    assert r.success == all(label == "cat" for label, _ in r.reshared.values())


def test_fool_bad_arguments(tiny):
    model, labels = tiny
    photo = synthetic_photo("dog", 14, size=(96, 80))
    with pytest.raises(ValueError, match=r"unknown target 'zebra'; this model knows: cat, dog"):
        fool(model, labels, photo, "zebra")
    for eps in (0.0, 0.5 / 255, EPS_MAX * 2, float("nan")):
        with pytest.raises(ValueError, match="eps must be between 1/255"):
            fool(model, labels, photo, "cat", eps=eps)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        fool(model, labels, photo, "cat", steps=0)
    with pytest.raises(ImageError, match="not an image"):
        fool(model, labels, b"this is not a picture at all", "cat")


def test_fooled_png_passes_the_deployed_whole_verdict(tiny_ood_checkpoint, tiny_ood_onnx):
    """What /classify will say of the PNG fool() returns: the target label AND a pet, judged
    by the exported ONNX model (Classifier.assess) on the file a user downloads."""
    from export.runtime import Classifier

    model, labels = load_checkpoint(tiny_ood_checkpoint)
    assert model.ood_state is not None  # load_checkpoint hands the statistics to fool()
    onnx = Classifier.load(tiny_ood_onnx)
    for seed in (21, 22, 23):
        photo = synthetic_photo("dog", seed, size=(150, 120))
        r = fool(model, labels, photo, "cat", eps=8 / 255)
        buf = io.BytesIO()
        r.image.save(buf, "PNG")
        verdict = onnx.assess(buf.getvalue(), top_k=1)
        assert r.success, (r.result, verdict)
        assert verdict.top[0][0] == "cat" and verdict.is_pet, verdict
        assert r.result.is_pet and r.result.ood_score == pytest.approx(verdict.score, abs=1e-4)
        assert r.linf <= 8 / 255 + 1e-9


def test_the_pet_part_is_in_the_objective(tiny_ood_checkpoint):
    """An image the model calls a cat but refuses as a pet is not a success until the attack
    has also brought its OOD score under the threshold; with ood=None only the label counts."""
    from training.adversarial import Judged, _WholeVerdict
    from training.ood import ClassifierWithOOD, OODScorer

    model, labels = load_checkpoint(tiny_ood_checkpoint)
    scorer = OODScorer(model.ood_state)
    wrapped = _WholeVerdict(ClassifierWithOOD(model, scorer).eval(), labels.index("cat"), margin=3.0)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        out = wrapped(x)
        logits, score = ClassifierWithOOD(model, scorer).eval()(x)
    assert out.shape == (2, len(labels) + 1)
    # The competitor is beaten by the margin exactly when the score is PET_SLACK under the threshold.
    from training.adversarial import PET_SLACK, PET_WEIGHT

    expected = logits[:, 0] - 3.0 - PET_WEIGHT * (scorer.threshold - PET_SLACK - score)
    assert torch.allclose(out[:, -1], expected, atol=1e-5)
    assert not Judged("cat", 0.99, ood_score=1.0, is_pet=False).fooled("cat")
    assert Judged("cat", 0.99).fooled("cat") and not Judged("dog", 0.99, 0.0, True).fooled("cat")


# Eight photos of different sizes and both targets, small enough to stay fast.
BATCH_SIZES = [(200, 150), (150, 210), (128, 128), (176, 120), (96, 160), (224, 224), (160, 112), (120, 200)]


@pytest.mark.slow
def test_fool_batch_equals_single_runs_photo_by_photo(tiny_ood_checkpoint):
    """One attack loop over 8 different photos gives, photo by photo, what 8 runs of fool()
    give: the same verdicts before and after, within the same eps-ball, at the photo's size.
    (Not the same pixels: batched convolutions round differently; see fool_batch.)"""
    from training.adversarial import fool_batch

    model, labels = load_checkpoint(tiny_ood_checkpoint)
    photos = [synthetic_photo(("dog", "cat")[i % 2], 60 + i, size=size) for i, size in enumerate(BATCH_SIZES)]
    targets = [("cat", "dog")[i % 2] for i in range(len(photos))]
    eps = 8 / 255
    seen = []
    batch = fool_batch(model, labels, photos, targets, eps=eps, steps=25, progress=lambda s, t: seen.append(s))
    assert len(batch) == 8 and seen and seen == list(range(1, len(seen) + 1))
    for photo, target, got in zip(photos, targets, batch):
        want = fool(model, labels, photo, target, eps=eps, steps=25)
        assert got.image.size == want.image.size == photo.size and got.resized_from is None
        assert got.source == want.source  # judged alone in both, so identical
        assert (got.success, got.result.label, got.result.is_pet) == (want.success, want.result.label, want.result.is_pet)
        assert got.result.prob == pytest.approx(want.result.prob, abs=0.05)
        diff = np.abs(np.asarray(got.image, dtype=np.int16) - np.asarray(photo, dtype=np.int16)).max()
        assert diff <= 8 and got.linf == pytest.approx(diff / 255)
        assert 0 <= got.steps <= 25 and abs(got.steps - want.steps) <= 3
    assert sum(r.success for r in batch) >= 6


def test_fool_batch_checks_its_arguments(tiny):
    from training.adversarial import fool_batch

    model, labels = tiny
    photo = synthetic_photo("dog", 14, size=(96, 80))
    with pytest.raises(ValueError, match="2 photos but 1 targets"):
        fool_batch(model, labels, [photo, photo], ["cat"])
    with pytest.raises(ValueError, match="unknown target 'zebra'"):
        fool_batch(model, labels, [photo, photo], ["cat", "zebra"])
    one = fool_batch(model, labels, [photo, photo], "cat", eps=8 / 255, steps=2)
    assert [r.image.size for r in one] == [(96, 80), (96, 80)]
