"""The Inside the network tab and the ``/explain`` API endpoint."""

from __future__ import annotations

from typing import Any

import gradio as gr

from demo.common import Ctx, refusal

HELP = """\
**Why did it say that?** Grad-CAM colours the parts of the photo that pushed the network
towards the label (red = most). The feature maps show the most active channels at three
depths: each small square is what one filter responds to.
"""
DEPTHS = {  # short enough to fit above a third of the page
    "early": "Early layers: edges, colours",
    "middle": "Middle: fur, textures, parts",
    "late": "Late: eyes, ears, snouts",
}


def inside_page(image: Any, *, ctx: Ctx) -> tuple:
    """(photo, overlay, summary, *grids) for a new photo: the last photo's explanation
    cleared, a refused file answered in place."""
    grids = (None,) * len(DEPTHS)
    if image is None:
        return gr.skip(), None, gr.skip(), *grids
    try:
        ctx.photo(image)
    except gr.Error as exc:
        return None, None, refusal(exc), *grids
    return gr.skip(), None, "", *grids


def explain_photo(image: Any, label: str | None = None, *, ctx: Ctx) -> tuple:
    """The Grad-CAM overlay, the summary (with the photo's own verdict) and the feature-map
    grids of the early, middle and late layers."""
    answer = ctx.run(ctx.service.explain, ctx.photo(image, heavy=True), label or None)
    return answer.overlay, answer.summary(), *(answer.grids[name] for name in DEPTHS)


def build(ctx: Ctx, bind) -> None:
    with gr.Tab("Inside"):
        with gr.Row():
            with gr.Column():
                photo = gr.Image(label="Your photo", sources=["upload", "webcam", "clipboard"], type="filepath")
                label = gr.Dropdown(ctx.service.labels, value=None, label="Explain which label? (empty: the top prediction)")
                button = gr.Button("Look inside", variant="primary")
            with gr.Column():
                overlay = gr.Image(label="Grad-CAM: where the evidence is", format="png", interactive=False)
                summary = gr.Markdown(label="verdict", show_label=False)
        with gr.Row():
            grids = []
            for text in DEPTHS.values():
                with gr.Column(min_width=160):
                    # A caption above the grid: the image's own label badge and buttons
                    # would cover its first row of tiles.
                    gr.Markdown(f"**{text}**")
                    grids.append(gr.Image(label=text, show_label=False, buttons=[], format="png", interactive=False))
        if ctx.examples:
            gr.Examples(ctx.examples, inputs=photo, label="Example photos")
        gr.Markdown(HELP, elem_classes="petlens-help")
        photo.change(bind(inside_page, ctx=ctx), photo, [photo, overlay, summary, *grids], **ctx.page)
        photo.clear(None, None, summary, js="() => ''", api_visibility="private", queue=False)
        button.click(bind(explain_photo, ctx=ctx), [photo, label], [overlay, summary, *grids], api_name="explain",
                     preprocess=False, validator=None if ctx.lane is None else ctx.lane.for_explain, **ctx.heavy)
