"""The Classify tab, and the ``/classify`` and ``/assess`` API endpoints."""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.data_classes import FileData

from demo.common import Ctx, answer_label, label_data, note, refusal
from training.labels import describe_labels, english_list

HELP = """\
**Drop a photo, take one with the webcam or paste one.** The network shrinks it to 256 pixels
on the short side, looks at the central 224×224 square and gives a probability per label.
It only knows {labels}, so it always picks one of them. {ood}
"""
OOD_HELP = """It also compares your photo with the ones it learned from: a coffee cup gets
"Not {what}?" and its closest guess, not a confident label, and a photo only partly like them (a
rare breed, or another furry animal) gets "Probably a …" with a caveat."""
NO_OOD_HELP = "A coffee cup gets a confident answer too: this model cannot tell it knows nothing about it."


# The page handler runs on the photo's change event, which gradio fires more than once for one
# upload, so it is idempotent and answers a refused file in place (one message, the photo and
# the last result cleared) instead of raising, which would stack one error toast per firing.
# It returns values already in the components' wire format (postprocess=False); gr.skip()
# leaves a component as it is.
def classify_page(image: Any, *, ctx: Ctx) -> tuple:
    """(label, photo, note) for a new photo, a refused one or none."""
    if image is None:  # removed, or cleared by a refusal: keep the refusal's note
        return {}, gr.skip(), gr.skip()
    try:
        photo = ctx.photo(image)
    except gr.Error as exc:
        return {}, None, refusal(exc)
    try:
        found = ctx.run(ctx.service.classify, photo)
    except gr.Error as exc:  # the photo is fine; the model server is not (--server)
        return {}, gr.skip(), refusal(exc)
    return answer_label(found), gr.skip(), note(found)


def classify_api(image: FileData, *, ctx: Ctx) -> dict:
    """The top-3 labels of a photo, as gr.Label's value: {"label", "confidences"}."""
    return label_data(ctx.run(ctx.service.classify, ctx.photo(image)).top)


def assess_api(image: FileData, *, ctx: Ctx) -> dict:
    """Top-3 labels and whether the photo looks like a pet at all: {"top", "is_pet", "verdict",
    "score", "threshold", "refuse_threshold", "message", "breeds", "breed_sentence"} (verdict "pet", "unsure"
    or "not_pet"; breeds only for a pet, of its species)."""
    return ctx.run(ctx.service.classify, ctx.photo(image)).as_dict()


def build(ctx: Ctx, bind) -> None:
    service = ctx.service
    labels = service.labels
    ood = getattr(service.classifier, "ood_threshold", None) is not None
    with gr.Tab("Classify"):
        with gr.Row():
            with gr.Column():
                photo = gr.Image(label="Your photo", sources=["upload", "webcam", "clipboard"], type="filepath",
                                 elem_id="petlens-classify-photo")
            with gr.Column():
                top = gr.Label(label="What the network says", num_top_classes=3, elem_id="petlens-classify-label")
                caveat = gr.Markdown(show_label=False)
        if ctx.examples:
            gr.Examples(ctx.examples, inputs=photo, label="Or try one of these")
        ood_help = OOD_HELP.format(what=describe_labels(labels)) if ood else NO_OOD_HELP
        gr.Markdown(HELP.format(labels=english_list(labels, "and"), ood=ood_help), elem_classes="petlens-help")
        photo.change(bind(classify_page, ctx=ctx), photo, [top, photo, caveat], show_progress="minimal", **ctx.page)
        # Removing the photo removes its note (or refusal), in the browser at once.
        photo.clear(None, None, caveat, js="() => ''", api_visibility="private", queue=False)


def api(ctx: Ctx) -> None:
    """The ``/classify`` and ``/assess`` endpoints (outside the tabs: a gr.Tabs holds only tabs)."""

    # gr.api reads the endpoint's signature from its type hints: plain functions, not partials.
    def classify(image: FileData) -> dict:
        """The top-3 labels of a photo, as gr.Label's value: {"label", "confidences"}."""
        return classify_api(image, ctx=ctx)

    def assess(image: FileData) -> dict:
        """Top-3 labels and whether the photo looks like a pet at all: {"top", "is_pet", "verdict",
        "score", "threshold", "refuse_threshold", "message", "breeds", "breed_sentence"} (verdict "pet", "unsure"
    or "not_pet"; breeds only for a pet, of its species)."""
        return assess_api(image, ctx=ctx)

    gr.api(classify, api_name="classify", **ctx.light)
    gr.api(assess, api_name="assess", **ctx.light)
