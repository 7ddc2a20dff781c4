"""The Ideal image tab and the ``/ideal`` API endpoint: the picture forms while you watch."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from demo.common import Ctx, save_png
from service.answers import ideal_help, ideal_progress

PREVIEWS = 16  # how many in-between pictures a visitor sees


class _Stopped(Exception):
    """The visitor left: the worker stops at its next step."""


def ideal(label: str, seed: float = 0, *, ctx: Ctx, progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
    """Yields (picture, None, "") while it forms, then (final picture, PNG path, summary).

    The optimization runs in a worker thread that hands previews back through a queue, so the
    visitor watches the image form; closing the page stops the worker at its next step."""
    service = ctx.service
    label = ctx.run(lambda: service.check_label(label))
    updates: queue.Queue = queue.Queue()
    stop, done, outcome = threading.Event(), object(), {}

    def on_step(step: int, total: int, preview) -> None:
        if stop.is_set():
            raise _Stopped
        every = max(1, total // PREVIEWS)
        updates.put((step, total, preview() if step % every == 0 and step < total else None))

    def work() -> None:
        try:
            outcome["answer"] = service.ideal(label, seed=seed, progress=on_step)
        except _Stopped:
            pass
        except Exception as exc:  # handed to the generator, which raises it in the request
            outcome["error"] = exc
        finally:
            updates.put(done)

    start = time.perf_counter()
    progress(0, desc=ideal_progress(label, 0, 1, 0))
    worker = threading.Thread(target=work, name="petlens-ideal", daemon=True)
    worker.start()
    try:
        while (item := updates.get()) is not done:
            step, total, preview = item
            progress((step, total), desc=ideal_progress(label, step, total, time.perf_counter() - start))
            if preview is not None:
                yield preview, None, ""
    finally:  # also when gradio closes the generator because the visitor left
        stop.set()
    worker.join()
    if "error" in outcome:
        ctx.run(_reraise, outcome["error"])
    answer = outcome["answer"]
    yield answer.image, save_png(answer.image, answer.file_name), answer.summary()


def _reraise(exc: Exception) -> Any:
    raise exc


def build(ctx: Ctx, bind) -> None:
    labels = ctx.service.labels
    with gr.Tab("Ideal"):
        with gr.Row():
            with gr.Column(scale=1):
                label = gr.Dropdown(labels, value=labels[0], label="Label")
                seed = gr.Number(0, precision=0, minimum=0, label="Seed (each one starts from different noise)")
                button = gr.Button("Dream it up", variant="primary")
                download = gr.DownloadButton("Download the PNG")
            with gr.Column(scale=2):
                picture = gr.Image(label="The network's ideal", format="png", interactive=False, height=448,
                                   elem_id="petlens-ideal")
                summary = gr.Markdown(show_label=False)
        gr.Markdown(ideal_help(labels), elem_classes="petlens-help")
        button.click(bind(ideal, ctx=ctx), [label, seed], [picture, download, summary], api_name="ideal",
                     show_progress="minimal",  # the full overlay would hide the picture as it forms
                     validator=None if ctx.lane is None else ctx.lane.for_ideal, **ctx.heavy)
