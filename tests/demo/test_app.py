"""The demo through its public API (gradio_client against the running server) and its tab
functions called directly: right labels, a real adversarial photo, an ideal image,
explanations, concurrency, and readable refusals of hostile uploads."""

from __future__ import annotations

import gradio as gr
import httpx
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
    image_path, download, summary = job.result(timeout=120)
    assert summary.startswith("**Done:** the network's ideal dog, after 6 steps") and "sure it is a dog" in summary
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
    with pytest.raises(AppError, match="from 1 to 16"):
        client.predict(handle_file(str(photos["dog"])), "cat", 99, False, api_name="/fool_me")
    # Gradio's own check of the dropdown, which refuses the submission itself (HTTP 400) as the
    # heavy lane's validator sees the inputs first.
    with pytest.raises(httpx.HTTPStatusError) as refused:
        client.predict("hamster", 0, api_name="/ideal")
    assert refused.value.response.status_code == 400 and "hamster" in refused.value.response.text


# --------------------------------------------------------------------------- the tab functions


def test_missing_photo_is_a_gr_error(demo_service):
    from demo.tabs.inside import explain_photo
    from tests.demo.conftest import make_ctx

    with pytest.raises(gr.Error, match="Add a photo"):
        explain_photo(None, ctx=make_ctx(demo_service))


def test_service_refuses_a_checkpoint_with_other_labels(tiny_onnx, tmp_path):
    import torch

    from service.jobs import ConfigError, Service
    from training import build_model, save_checkpoint

    torch.manual_seed(0)
    other = save_checkpoint(tmp_path / "birds.pt", build_model("mobilenet_v3_small", 2), ["owl", "crow"])
    with pytest.raises(ConfigError, match="owl"):
        Service.load(tiny_onnx, other)


def test_page_handlers_answer_a_refused_file_in_place_and_clear_the_last_result(demo_service, photos, hostile):
    """What the Fool me and Inside tabs do when a new photo lands: the old result goes, a
    refused file clears the input and says why (no exception: that would be a toast per
    firing of gradio's change event)."""
    import gradio as gr

    from demo.tabs.fool import fool_page
    from demo.tabs.inside import inside_page
    from tests.demo.conftest import make_ctx

    bad, word = hostile["non-image"]
    ctx = make_ctx(demo_service, bad.parent, photos["dog"].parent)  # as if both had been uploaded
    before, photo, adv, after, summary, download = fool_page(str(bad), ctx=ctx)
    assert (before, photo, adv, after, download) == ({}, None, None, {}, None) and word in summary
    before, photo, adv, after, summary, download = fool_page(str(photos["dog"]), ctx=ctx)
    assert before["label"] == "A dog" and before["confidences"][0]["label"] == "dog"
    assert photo == gr.skip() and adv is None and summary == ""
    photo, overlay, verdict, *grids = inside_page(str(bad), ctx=ctx)
    assert photo is None and overlay is None and word in verdict and grids == [None, None, None]
    photo, overlay, verdict, *grids = inside_page(str(photos["cat"]), ctx=ctx)
    assert overlay is None and verdict == "" and grids == [None, None, None]
