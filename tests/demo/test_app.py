"""The demo through its public API (gradio_client against the running server) and its tab
functions called directly: right labels, a real adversarial photo, an ideal image,
explanations, concurrency, and readable refusals of hostile uploads."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

LABELS = ["cat", "dog"]  # the tiny model's (tests/conftest.py)


def top_label(result: dict) -> str:
    """The top label of a gr.Label value as gradio_client returns it."""
    return result["label"]


@pytest.mark.parametrize("label", LABELS)
def test_classify_api_gives_the_right_label(client, photos, label):
    result = client.predict(handle_file(str(photos[label])), api_name="/classify")
    assert top_label(result) == label
    confidences = {c["label"]: c["confidence"] for c in result["confidences"]}
    assert set(confidences) == set(LABELS)
    assert confidences[label] > 0.5 and sum(confidences.values()) == pytest.approx(1, abs=1e-4)


def test_named_endpoints(client):
    assert {"/classify", "/fool_me", "/ideal", "/explain"} <= set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])


def test_twenty_concurrent_classify_calls_all_answered_right(client, photos):
    wanted = [LABELS[i % len(LABELS)] for i in range(20)]
    jobs = [client.submit(handle_file(str(photos[label])), api_name="/classify") for label in wanted]
    answers = [top_label(job.result(timeout=60)) for job in jobs]
    assert answers == wanted


def test_fool_me_fools_the_onnx_model(client, photos, demo_models):
    classifier, _, _ = demo_models
    original = Image.open(photos["dog"]).convert("RGB")
    adv_path, before, after, summary, download = client.predict(
        handle_file(str(photos["dog"])), "cat", 4, False, api_name="/fool_me"
    )
    assert top_label(before) == "dog"
    assert top_label(after) == "cat", summary
    assert "Fooled" in summary
    assert download.endswith("my-dog-as-cat.png")
    # The PNG a visitor downloads: same size, within the budget, and the deployed ONNX
    # model (not the torch one the attack used) calls it a cat.
    png = Image.open(download)
    assert png.format == "PNG" and png.size == original.size
    diff = np.abs(np.asarray(png.convert("RGB"), dtype=np.int16) - np.asarray(original, dtype=np.int16))
    assert 0 < diff.max() <= 4
    assert classifier.predict(download)[0][0] == "cat"
    assert np.array_equal(np.asarray(Image.open(adv_path).convert("RGB")), np.asarray(png.convert("RGB")))


def test_ideal_image_forms_with_previews(client):
    job = client.submit("dog", 3, api_name="/ideal")
    image_path, download = job.result(timeout=120)
    steps = job.outputs()  # everything the generator streamed: previews, then the final image
    assert len(steps) >= 3 and all(out[1] is None for out in steps[:-1])  # no download before the end
    img = Image.open(download)
    assert img.format == "PNG" and img.size == (96, 96) and img.mode == "RGB"
    assert np.asarray(img).std() > 1  # an image, not a blank
    assert np.array_equal(np.asarray(Image.open(image_path).convert("RGB")), np.asarray(img))


def test_explain_gives_overlay_at_photo_size_and_three_grids(client, photos):
    overlay, verdict, *grids = client.predict(handle_file(str(photos["cat"])), None, api_name="/explain")
    assert Image.open(overlay).size == Image.open(photos["cat"]).size
    assert "**cat**" in verdict
    assert len(grids) == 3 and all(min(Image.open(g).size) > 16 for g in grids)
    overlay, verdict, *_ = client.predict(handle_file(str(photos["cat"])), "dog", api_name="/explain")
    assert "**dog**" in verdict  # a chosen label is explained, not the predicted one


@pytest.mark.parametrize("kind", ["empty", "truncated", "non-image", "decompression-bomb"])
@pytest.mark.parametrize("endpoint", ["/classify", "/fool_me", "/explain"])
def test_hostile_uploads_get_a_readable_error_and_the_server_keeps_serving(client, hostile, photos, kind, endpoint):
    path, word = hostile[kind]
    args = {"/classify": (), "/fool_me": ("cat", 2, False), "/explain": (None,)}[endpoint]
    with pytest.raises(AppError) as err:
        client.predict(handle_file(str(path)), *args, api_name=endpoint)
    message = str(err.value)
    assert word in message, message
    assert "Traceback" not in message
    assert top_label(client.predict(handle_file(str(photos["cat"])), api_name="/classify")) == "cat"


def test_bad_arguments_are_refused_with_the_choices(client, photos):
    with pytest.raises(AppError, match="cat, dog"):
        client.predict(handle_file(str(photos["dog"])), "hamster", 2, False, api_name="/fool_me")
    with pytest.raises(AppError, match="32/255"):
        client.predict(handle_file(str(photos["dog"])), "cat", 99, False, api_name="/fool_me")
    with pytest.raises(AppError, match="hamster"):  # gradio's own check of the dropdown
        client.predict("hamster", 0, api_name="/ideal")


# --------------------------------------------------------------------------- the tab functions


def test_classify_function_on_a_pil_image_and_a_cleared_input(demo_models, make_photo):
    from demo.app import classify

    classifier, _, _ = demo_models
    probs = classify(make_photo("dog", 21), classifier=classifier)
    assert max(probs, key=probs.get) == "dog"
    assert classify(None, classifier=classifier) is None


def test_missing_photo_is_a_gr_error(demo_models):
    from demo.app import explain_photo

    _, model, labels = demo_models
    with pytest.raises(gr.Error, match="Add a photo"):
        explain_photo(None, model=model, labels=labels)


def test_build_demo_refuses_mismatched_labels(demo_models):
    from demo.app import build_demo

    classifier, model, _ = demo_models
    with pytest.raises(ValueError, match="labels"):
        build_demo(classifier, model, ["dog", "cat"])


def test_page_handlers_answer_a_refused_file_in_place_and_clear_the_last_result(demo_models, photos, hostile):
    """What the Fool me and Inside tabs do when a new photo lands: the old result goes, a
    refused file clears the input and says why (no exception: that would be a toast per
    firing of gradio's change event)."""
    import gradio as gr

    from demo.app import fool_page, inside_page
    from demo.uploads import Uploads

    classifier = demo_models[0]
    bad, word = hostile["non-image"]
    uploads = Uploads(bad.parent, photos["dog"].parent)  # as if both had been uploaded
    before, photo, adv, after, summary, download = fool_page(str(bad), classifier=classifier, uploads=uploads)
    assert (before, photo, adv, after, download) == ({}, None, None, {}, None) and word in summary
    before, photo, adv, after, summary, download = fool_page(str(photos["dog"]), classifier=classifier, uploads=uploads)
    assert before["label"] == "dog" and photo == gr.skip() and adv is None and summary == ""
    photo, overlay, verdict, *grids = inside_page(str(bad), uploads=uploads)
    assert photo is None and overlay is None and word in verdict and grids == [None, None, None]
    photo, overlay, verdict, *grids = inside_page(str(photos["cat"]), uploads=uploads)
    assert overlay is None and verdict == "" and grids == [None, None, None]
