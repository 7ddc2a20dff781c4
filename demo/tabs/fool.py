"""The Fool me tab and the ``/fool_me`` API endpoint."""

from __future__ import annotations

from typing import Any

import gradio as gr

from demo.common import Ctx, answer_label, refusal, save_png
from service.jobs import MAX_STRENGTH

HELP = """\
**An adversarial example.** Upload a photo and pick the label the network should see (by
default the other one). Each colour value of each pixel moves by at most *strength*/255, far
below what you notice, but in the exact direction that pushes the network towards your label.
The photo looks the same to you; the network changes its mind, because it relies on patterns
people don't see. The right-hand label is the deployed model's, on the saved 8-bit PNG.
"""
OTHER = "the other one"  # the target dropdown's default: the most likely other label


def fool_page(image: Any, *, ctx: Ctx) -> tuple:
    """(before, photo, adversarial, after, summary, download) for a new photo: its label, and
    the last photo's adversarial result cleared; a refused file answered in place."""
    cleared = (None, {}, gr.skip() if image is None else "", None)
    if image is None:
        return {}, gr.skip(), *cleared
    try:
        photo = ctx.photo(image)
    except gr.Error as exc:
        return {}, None, None, {}, refusal(exc), None
    try:
        found = ctx.run(ctx.service.classify, photo)
    except gr.Error as exc:  # the photo is fine; the model server is not (--server)
        return {}, gr.skip(), None, {}, refusal(exc), None
    return answer_label(found), gr.skip(), *cleared


def fool_me(image: Any, target: str | None, strength: float, robust: bool = False, *, ctx: Ctx,
            progress: gr.Progress = gr.Progress()) -> tuple:
    """The photo changed by at most ``strength``/255 until the deployed model calls it ``target``
    (``robust``: also once saved as JPEG and halved; slower, wants strength 8 or so). Returns the
    adversarial image, the labels before and after, a summary in Markdown and the PNG's path."""
    photo = ctx.photo(image, heavy=True)
    target = None if target in (None, "", OTHER) else target
    progress(0, desc="Looking for the smallest change")
    answer = ctx.run(ctx.service.fool, photo, target, strength, robust=bool(robust),
                     progress=lambda step, total: progress((step, total), desc="Nudging pixels"))
    after = {} if answer.result is None else dict(answer.result.top)  # gr.Label's {label: prob}
    download = None if answer.image is None else save_png(answer.image, answer.file_name)
    return answer.image, dict(answer.source.top), after, answer.summary(), download


def build(ctx: Ctx, bind) -> None:
    with gr.Tab("Fool me"):
        with gr.Row():
            with gr.Column():
                photo = gr.Image(label="Original (upload a photo)", sources=["upload", "webcam", "clipboard"],
                                 type="filepath", elem_id="petlens-fool-photo")
                before = gr.Label(label="The network says", num_top_classes=3, elem_id="petlens-fool-before")
            with gr.Column():
                adversarial = gr.Image(label="Adversarial", format="png", interactive=False)
                after = gr.Label(label="Now the network says", num_top_classes=3)
        with gr.Row():
            target = gr.Dropdown([OTHER, *ctx.service.labels], value=OTHER, label="Make the network see")
            strength = gr.Slider(1, MAX_STRENGTH, value=2, step=1, label="Strength (largest change per colour value, in 1/255)")
            robust = gr.Checkbox(False, label="Survive sharing (JPEG, resizing): slower, use strength 8+")
        with gr.Row():
            button = gr.Button("Fool the network", variant="primary")
            download = gr.DownloadButton("Download the PNG")
        summary = gr.Markdown(label="summary", show_label=False)
        if ctx.examples:
            gr.Examples(ctx.examples, inputs=photo, label="Example photos")
        gr.Markdown(HELP, elem_classes="petlens-help")
        # The "before" label as soon as a photo is in: the visitor sees what they start from.
        photo.change(bind(fool_page, ctx=ctx), photo, [before, photo, adversarial, after, summary, download],
                     show_progress="minimal", **ctx.page)
        photo.clear(None, None, summary, js="() => ''", api_visibility="private", queue=False)
        button.click(bind(fool_me, ctx=ctx), [photo, target, strength, robust],
                     [adversarial, before, after, summary, download], api_name="fool_me", preprocess=False, validator=None if ctx.lane is None else ctx.lane.for_fool, **ctx.heavy)
