"""The PetLens demo: Classify, Fool me, Ideal image and Inside the network, in Gradio.

The demo is an adapter over :class:`service.Service`: one module per tab (:mod:`demo.tabs`)
lays out its tab and turns Gradio payloads into service calls and answers into Gradio values;
every sentence a visitor reads comes from :mod:`service.answers`, every photo passes
:mod:`demo.uploads` (only uploads and the examples are read) and the service's intake.

``demo`` (this module's attribute) is the app on the shipped models, built on first access
so that importing this module stays cheap. Run it with ``python -m demo`` or, as a Hugging
Face Space does, ``python demo/app.py``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a file (``python demo/app.py``, which is how a Hugging Face Space starts its
    # app_file): Python put demo/ on sys.path, but the packages live one level up.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr

from demo.common import Ctx
from demo.lanes import MAX_WAITING, PER_CLIENT, HeavyLane
from demo.tabs import classify, fool, ideal, inside
from demo.uploads import Uploads
from service import Service
from service.answers import accuracy_sentence
from training.images import MAX_BYTES
from training.labels import english_list

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path("models/catsdogs.onnx")
DEFAULT_CHECKPOINT = Path("models/catsdogs.pt")
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
TABS = (classify, fool, ideal, inside)  # in the page's order
SERVER_TIMEOUT_S = 600.0  # a heavy job on --server: a robust fool-me of a big photo takes minutes on a CPU
QUEUE_MEMORY_BOUND = 1024  # waiting events of all kinds; the heavy lane keeps its own line far shorter

INTRO = """\
# PetLens: what does a CNN see in your pet?
A {arch} that learned from ImageNet's million photos, then was **fine-tuned to tell {labels}
apart**: transfer learning. {accuracy}
"""
CSS = """
.petlens-help { font-size: 0.95em; opacity: 0.9; }
/* The ideal image fills its box (it is made at 224 px; the download keeps that size). */
#petlens-ideal img { width: 100%; height: 100%; object-fit: contain; }
/* Gradio's own timer there restarts at every preview; the progress text carries the real time. */
#petlens-ideal .progress-text { display: none; }
/* Phones: every tab's name on screen (no overflow menu), the upload box on the first screen. */
@media (max-width: 640px) {
  .tab-wrapper button, [role="tab"] { padding: 0.4em 0.6em !important; font-size: 0.95em; }
  .tab-container { flex-wrap: wrap !important; }
  h1 { font-size: 1.3em !important; }
}
"""


def bind(fn, **kwargs):
    """``fn`` with ``kwargs`` bound. No ``__wrapped__`` (unlike ``functools.wraps``): gradio
    must see the partial's own signature, where those are already filled in."""
    bound = functools.partial(fn, **kwargs)
    bound.__name__, bound.__doc__ = fn.__name__, fn.__doc__
    return bound


def list_examples(folder: str | Path | None) -> list[str]:
    """Photo files in ``folder`` (sorted), or none when it is missing."""
    folder = Path(folder) if folder is not None else EXAMPLES_DIR
    if not folder.is_dir():
        return []
    return [str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in EXAMPLE_SUFFIXES]


def build_demo(
    service: Service,
    *,
    examples: str | Path | None = None,
    heavy_concurrency: int = 1,
    classify_concurrency: int = 4,
    max_queue: int = MAX_WAITING,
    jobs_per_client: int = PER_CLIENT,
) -> gr.Blocks:
    """The demo over ``service``.

    ``examples``: a folder of example photos (default ``demo/examples``). Two lanes
    (:mod:`demo.lanes`): classification is fast and runs ``classify_concurrency`` at a time in
    its own; the torch jobs (fool, ideal, explain) share one of ``heavy_concurrency`` workers so
    they cannot starve the CPU, with at most ``max_queue`` waiting and ``jobs_per_client``
    waiting or running per client; more are refused at once, and never block Classify.
    """
    folder = Path(examples) if examples is not None else EXAMPLES_DIR
    light = dict(concurrency_limit=classify_concurrency, concurrency_id="classify")
    ctx = Ctx(
        service=service,
        # The only files a visitor's photo may be read from (the API accepts any JSON path).
        uploads=Uploads(folder),
        examples=list_examples(folder),
        light=light,
        heavy=dict(concurrency_id="torch", concurrency_limit=heavy_concurrency),
        page=dict(api_visibility="private", preprocess=False, postprocess=False, **light),
        lane=HeavyLane(jobs_per_client, max_queue),
    )
    meta = dict(getattr(service.classifier, "metadata", {}) or {})
    labels = english_list(service.labels, "and")
    # No usage analytics: visitors' uploads are nobody else's business, and the app must
    # not phone home (CI and many hosts have no outside network).
    with gr.Blocks(title="PetLens: what does a CNN see in your pet?", delete_cache=(1800, 3600),
                   analytics_enabled=False) as app:
        gr.Markdown(INTRO.format(labels=labels, arch=meta.get("arch", "convolutional network"),
                                 accuracy=accuracy_sentence(meta)))
        with gr.Tabs():  # only tabs inside: any other block would split the tab bar in two
            for tab in TABS:
                tab.build(ctx, bind)
        classify.api(ctx)  # the endpoints without a button of their own
    ctx.lane.app = app
    # One queue for the app, whose size only bounds memory: the heavy lane's admission keeps
    # its own line short (demo.lanes), so a flood of heavy jobs never fills it for Classify.
    return app.queue(max_size=QUEUE_MEMORY_BOUND, default_concurrency_limit=1)


def resolve_model_file(path: str | Path | None, default: Path) -> Path:
    """The file to load: ``path`` as given, or the shipped default found from the current
    directory or the repository root. Raises ``FileNotFoundError`` with what to do."""
    candidates = [Path(path)] if path is not None else [default, REPO_ROOT / default]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    hint = (
        "build it with `python -m export --checkpoint models/catsdogs.pt --out models/catsdogs.onnx`"
        if candidates[0].suffix == ".onnx"
        else "train one with `python -m training --data DIR --out RUN` and copy RUN/model.pt there"
    )
    raise FileNotFoundError(f"model file not found: {candidates[0]}; {hint}, or pass its path.")


def load_demo(model: str | Path | None = None, checkpoint: str | Path | None = None, *,
              server: str | None = None, job_timeout: float = SERVER_TIMEOUT_S,
              fool_steps: int | None = None, ideal_steps: int | None = None, ideal_size: int | None = None,
              **options: Any) -> gr.Blocks:
    """Load the ONNX classifier and the torch checkpoint once and build the demo on them.
    ``None`` means the shipped ``models/catsdogs.onnx`` / ``models/catsdogs.pt``; ``model``
    may also be a Triton URL (``http://host:8000/<model>``, see ``export.runtime``).
    ``server``: a Triton server that classifies *and* runs the heavy jobs
    (:meth:`service.Service.connect`); ``model`` and ``checkpoint`` are then not used, and
    each heavy job is given up after ``job_timeout`` seconds."""
    settings = dict(fool_steps=fool_steps, ideal_steps=ideal_steps, ideal_size=ideal_size)
    if server is not None:
        service = Service.connect(server, timeout=job_timeout, **settings)
    else:
        remote = model is not None and str(model).startswith(("http://", "https://"))  # a Triton classifier
        service = Service.load(model if remote else resolve_model_file(model, DEFAULT_MODEL),
                               resolve_model_file(checkpoint, DEFAULT_CHECKPOINT), **settings)
    return build_demo(service, **options)


def launch(
    app: gr.Blocks, *, host: str | None = None, port: int | None = None, share: bool = False,
    examples: str | Path | None = None, **kwargs: Any,
):
    """Serve ``app``. ``host``/``port`` ``None``: gradio's defaults or the
    ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` a Hugging Face Space sets."""
    folder = Path(examples) if examples is not None else EXAMPLES_DIR
    return app.launch(
        server_name=host, server_port=port, share=share,
        max_file_size=MAX_BYTES,  # bigger uploads are refused before they reach a handler
        allowed_paths=[str(folder)] if folder.is_dir() else None,
        theme=gr.themes.Soft(), css=CSS, **kwargs,
    )


_demo: gr.Blocks | None = None


def __getattr__(name: str) -> Any:
    """``demo.app.demo``: the app on the shipped models, loaded on first access (as
    ``gradio demo/app.py`` and a Space expect) rather than at import."""
    global _demo
    if name == "demo":
        if _demo is None:
            _demo = load_demo()
        return _demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # `python demo/app.py` (a Space's app_file) = `python -m demo`
    import runpy

    runpy.run_module("demo", run_name="__main__", alter_sys=True)
