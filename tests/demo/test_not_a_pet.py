"""The Classify tab's "that's not a pet" verdict on a model with an out-of-distribution score
(``tiny_ood_onnx``): through the ``/assess`` API with gradio_client and through the tab's
page handler; ``/classify`` keeps returning the plain gr.Label value."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.conftest import LABELS, shifted_photo, synthetic_photo

NOT_A_PET = "This doesn't look like a cat or a dog — closest guess:"


@pytest.fixture(scope="module")
def ood_models(tiny_ood_onnx, tiny_ood_checkpoint):
    from export.runtime import Classifier
    from training import load_checkpoint

    model, labels = load_checkpoint(tiny_ood_checkpoint)
    return Classifier.load(tiny_ood_onnx), model, labels


@pytest.fixture(scope="module")
def ood_service(ood_models, tiny_ood_checkpoint):
    from tests.demo.conftest import make_service

    return make_service(ood_models[0], tiny_ood_checkpoint, fool_steps=5, ideal_steps=2, ideal_size=64)


@pytest.fixture(scope="module")
def ood_client(ood_service):
    from demo.app import build_demo, launch

    app = build_demo(ood_service)
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch(app, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    yield Client(url, verbose=False)
    app.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("not-a-pet")
    made = {"stripes": shifted_photo("stripes", 5), "cat": synthetic_photo("cat", 2, size=(320, 256))}
    for name, img in made.items():
        img.save(root / f"{name}.png")
    return {name: str(root / f"{name}.png") for name in made}


def test_assess_api_says_not_a_pet_for_stripes_and_nothing_for_a_cat(ood_client, ood_models, images):
    stripes = ood_client.predict(handle_file(images["stripes"]), api_name="/assess")
    assert stripes["is_pet"] is False and stripes["score"] > stripes["threshold"]
    label, prob = stripes["top"][0]
    assert label in LABELS and stripes["message"] == f"{NOT_A_PET} {label} {prob:.0%}"
    assert [lab for lab, _ in stripes["top"]] == [lab for lab, _ in ood_models[0].predict(images["stripes"])]
    cat = ood_client.predict(handle_file(images["cat"]), api_name="/assess")
    assert cat["is_pet"] is True and cat["message"] is None and cat["top"][0][0] == "cat"


def test_classify_api_still_returns_the_label_alone(ood_client, images):
    result = ood_client.predict(handle_file(images["stripes"]), api_name="/classify")
    assert isinstance(result, dict) and result["label"] in LABELS  # no verdict tuple for old clients


def test_the_tab_shows_the_verdict_and_no_big_label_for_a_non_pet(ood_service, images, demo_service):
    from demo.tabs.classify import classify_page
    from tests.demo.conftest import make_ctx

    folder = Path(images["cat"]).parent
    ctx = make_ctx(ood_service, folder)
    label, _, note = classify_page(images["stripes"], ctx=ctx)
    closest = label["confidences"][0]["label"]
    assert NOT_A_PET in note and f"guess: {closest}" in note
    # The big label does not read "dog" over the warning; the probabilities stay.
    assert label["label"] == "Not a cat or a dog?" and closest in LABELS
    assert sum(c["confidence"] for c in label["confidences"]) == pytest.approx(1.0, abs=1e-4)
    label, _, note = classify_page(images["cat"], ctx=ctx)
    assert note == "" and label["label"] == "A cat"
    # A model without an OOD score never warns, whatever the photo.
    label, _, note = classify_page(images["stripes"], ctx=make_ctx(demo_service, folder))
    assert note == "" and label["confidences"][0]["label"] in LABELS


def test_a_photo_between_the_thresholds_says_probably_with_a_caveat(ood_service, images, tiny_ood_onnx,
                                                                     tiny_ood_checkpoint, tmp_path):
    """The middle answer (training.verdict) on the page and in ``/assess``'s wire format: the
    same model calibrated so that the cat photo scores between its two thresholds."""
    from demo.tabs.classify import assess_api, classify_page
    from export.runtime import Classifier
    from tests.conftest import with_ood_thresholds
    from tests.demo.conftest import make_ctx, make_service

    folder = Path(images["cat"]).parent
    score = ood_service.classifier.assess(images["cat"]).score
    clf = Classifier.load(with_ood_thresholds(tiny_ood_onnx, tmp_path / "unsure.onnx", score / 2, score * 2))
    ctx = make_ctx(make_service(clf, tiny_ood_checkpoint), folder)
    label, _, note = classify_page(images["cat"], ctx=ctx)
    top, prob = label["confidences"][0]["label"], label["confidences"][0]["confidence"]
    assert label["label"] == f"Probably a {top}"  # not a bare "cat", and not "Not a cat or a dog?"
    assert note.startswith(f"ℹ️ **Probably a {top} ({prob:.0%}), but this photo is unlike the ones I learned from:**")
    assert "maybe not a cat or a dog at all" in note
    found = assess_api(images["cat"], ctx=ctx)
    assert (found["verdict"], found["is_pet"]) == ("unsure", False)
    assert found["threshold"] < found["score"] <= found["refuse_threshold"]
    assert assess_api(images["cat"], ctx=make_ctx(ood_service, folder))["verdict"] == "pet"
