"""The PetLens demo: Classify, Fool me, Ideal image and Inside the network, in Gradio.

One pure function per tab (:func:`classify`, :func:`fool_me`, :func:`ideal`,
:func:`explain_photo`) takes the models as keyword arguments and returns plain data;
:func:`build_demo` binds them to models loaded once and lays out the Blocks. The demo owns
no model logic: classification goes through ``export.runtime.Classifier`` (ONNX), the
adversarial photo, the ideal image and the explanations through ``training``'s torch
functions, and every upload is decoded by ``training.images.load_image``.

``demo`` (this module's attribute) is the app on the shipped models, built on first access
so that importing this module stays cheap. Run it with ``python -m demo`` or, as a Hugging
Face Space does, ``python demo/app.py``.
"""

from __future__ import annotations

import functools
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a file (``python demo/app.py``, which is how a Hugging Face Space starts its
    # app_file): Python put demo/ on sys.path, but the packages live one level up.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradio as gr
from gradio.data_classes import FileData
from PIL import Image

from demo.uploads import UploadRefused, Uploads
from training.images import MAX_BYTES, ImageError, load_image
from training.labels import describe_labels, english_list
from training.verdict import NOT_PET, UNSURE

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path("models/catsdogs.onnx")
DEFAULT_CHECKPOINT = Path("models/catsdogs.pt")
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
# Finished PNGs for the download buttons; gradio copies them into its own cache, so ours
# only need to live until then. Folders older than this are swept on the next save.
DOWNLOADS = Path(tempfile.gettempdir()) / "petlens-demo"
DOWNLOAD_TTL_S = 3600
MAX_STRENGTH = 16  # in 1/255 steps: beyond this the change starts to show
PREVIEWS = 16  # ideal image: how many in-between pictures a visitor sees

INTRO = """\
# PetLens: what does a CNN see in your pet?
A convolutional network ({arch}) that first learned from ImageNet's million photos, then was
**fine-tuned to tell {labels} apart**: transfer learning.{accuracy} Classify your own photo,
make the network see what isn't there, look at its idea of the perfect {first}, and peek
inside at what it looks at.
"""
CLASSIFY_HELP = """\
**Drop a photo, take one with the webcam or paste one.** The network shrinks it to 256 pixels
on the short side, looks at the central 224×224 square and gives a probability per label.
It only knows {labels}, so it always picks one of them. {ood}
"""
CLASSIFY_OOD_HELP = """It also compares your photo with the ones it learned from: a coffee cup gets
"Not {what}?" and its closest guess, not a confident label, and a photo only partly like them (a
rare breed, or another furry animal) gets "Probably a …" with a caveat."""
CLASSIFY_NO_OOD_HELP = "A coffee cup gets a confident answer too: this model cannot tell it knows nothing about it."
FOOL_HELP = """\
**An adversarial example.** Upload a photo and pick the label the network should see. Each
colour value of each pixel moves by at most *strength*/255, far below what you notice, but
in the exact direction that pushes the network towards your label. The photo looks the same
to you; the network changes its mind, because it relies on patterns people don't see.
The right-hand label is judged by the deployed ONNX model on the saved 8-bit PNG.
"""
IDEAL_HELP = """\
**The network's ideal {first}.** Start from random noise and change the pixels, step by step,
to make the network as sure as it can be of one label. What appears is what the network
looks for (fur texture, eyes, ears, repeated everywhere), not what an animal looks like.
"""
INSIDE_HELP = """\
**Why did it say that?** Grad-CAM colours the parts of the photo that pushed the network
towards the label (red = most). The feature maps show the most active channels at three
depths: each small square is what one filter responds to.
"""
DEPTHS = {  # short enough to fit above a third of the page
    "early": "Early layers: edges, colours",
    "middle": "Middle: fur, textures, parts",
    "late": "Late: eyes, ears, snouts",
}
CSS = """
.petlens-help { font-size: 0.95em; opacity: 0.9; }
/* The ideal image fills its box (it is made at 224 px; the download keeps that size). */
#petlens-ideal img { width: 100%; height: 100%; object-fit: contain; }
/* Gradio's own timer there restarts at every preview; the progress text carries the real time. */
#petlens-ideal .progress-text { display: none; }
"""


# --------------------------------------------------------------------------- helpers


def _photo(upload: Any, *, min_side: int, uploads: Uploads | None = None) -> Image.Image:
    """Decode an upload through the one safe intake; unusable files become a ``gr.Error``.

    ``upload`` is what gradio passes without preprocessing (a FileData dict or a path, which
    must lie in gradio's upload cache or the example folder: see :mod:`demo.uploads`) or a
    PIL image. Gradio's own preprocessing is skipped on purpose: it would open the file with
    PIL first and answer a broken upload with its own generic error.
    """
    if upload is None:
        raise gr.Error("Add a photo first: upload one, use the webcam or paste one.", title="No photo",
                       print_exception=False)
    try:
        src = (uploads or default_uploads()).source(upload)
    except UploadRefused as exc:
        raise gr.Error(str(exc), title="Not an upload", print_exception=False) from None
    if src is None:
        raise gr.Error("The upload did not arrive; try again.", title="No photo", print_exception=False)
    try:
        return load_image(src, min_side=min_side)
    except ImageError as exc:
        raise gr.Error(str(exc), title="Unusable photo", print_exception=False) from exc


@functools.cache
def default_uploads() -> Uploads:
    """Gradio's upload cache and the shipped example folder (:func:`build_demo` makes its own
    for the folder it is given)."""
    return Uploads(EXAMPLES_DIR)


def _as_label(top: Sequence[tuple[str, float]]) -> dict[str, float]:
    """``[(label, prob), ...]`` -> the ``{label: prob}`` that ``gr.Label`` shows."""
    return {label: float(prob) for label, prob in top}


def _label_data(top: Sequence[tuple[str, float]], big: str | None = None) -> dict:
    """``gr.Label``'s wire value ``{"label", "confidences"}``; ``big`` (default: the top
    class) is the large text above the bars."""
    big = big if big is not None else (top[0][0] if top else None)
    return {"label": big, "confidences": [{"label": label, "confidence": float(prob)} for label, prob in top]}


def _label_value(found) -> dict:
    """The page's label for an assessment: the big text is the top class, "Probably a dog"
    when the verdict is unsure, or "Not a cat or a dog?" when it is "not a pet", so the page
    never shows "dog" in large letters over a warning. The page only: ``/classify`` keeps
    returning the plain top class."""
    big = {UNSURE: f"Probably {describe_labels([found.top[0][0]])}",
           NOT_PET: f"Not {describe_labels(found.labels)}?"}.get(found.verdict)
    return _label_data(found.top, big)


def _refusal(exc: gr.Error) -> str:
    """A refused upload as the Markdown shown in place of the result."""
    return f"⚠️ **{exc.title or 'Unusable photo'}.** {exc.message}"


def _save_png(image: Image.Image, name: str) -> str:
    """Write ``image`` as a lossless PNG named ``name`` for a download button."""
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - DOWNLOAD_TTL_S
    for old in DOWNLOADS.iterdir():
        try:
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # another request swept it first
            pass
    folder = DOWNLOADS / uuid.uuid4().hex
    folder.mkdir()
    path = folder / name
    image.save(path, format="PNG")
    return str(path)


def _accuracy_note(metadata: dict[str, str]) -> str:
    """A sentence on held-out accuracy from the ONNX metadata, or "" when it has none."""
    for key in ("val_accuracy", "accuracy"):
        try:
            return f" It gets {float(metadata[key]):.1%} of held-out photos right."
        except (KeyError, TypeError, ValueError):
            continue
    return ""


def _stem(upload: Any) -> str:
    """A short, safe file stem from the upload's original name."""
    name = upload.get("orig_name") if isinstance(upload, dict) else None
    stem = Path(name or "photo").stem
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:40]
    return stem or "photo"


def _verdict(found, names: str) -> str:
    """Markdown under the Classify tab's label: "" for a pet (or a model without an OOD
    score), the "probably a dog, but ..." caveat for an unsure verdict, else the "this doesn't
    look like a cat or a dog" warning with the closest guess."""
    message = found.message()
    if message is None:
        return ""
    if found.verdict == UNSURE:
        return (f"ℹ️ **{message}.**  \nMaybe a breed or a setting it has seen few of, or maybe not "
                f"{describe_labels(found.labels)} at all.")
    return (f"⚠️ **{message}**  \nThe network only knows {names}, so it always picks one of them; "
            "but this photo is unlike every photo it learned from.")


# --------------------------------------------------------------------------- one function per tab


def classify(image: Any, *, classifier, top_k: int = 3, uploads: Uploads | None = None) -> dict[str, float] | None:
    """Classify tab: the ONNX classifier's top-k probabilities for one photo."""
    if image is None:
        return None  # the input was cleared
    return _as_label(classifier.predict(_photo(image, min_side=256, uploads=uploads), top_k=top_k))


# Page handlers: what a new photo does to its tab. They run on the photo's change event,
# which gradio fires more than once for one upload, so they are idempotent and answer a
# refused file in place (one message, the photo and the last result cleared) instead of
# raising, which would stack one error toast per firing. They return values already in
# the components' wire format (the events run with postprocess=False); ``gr.skip()``
# leaves a component as it is (the photo input they got, or a refusal already shown).


def classify_page(image: Any, *, classifier, top_k: int = 3, uploads: Uploads | None = None) -> tuple:
    """Classify tab: (label, photo, note) for a new photo, a refused one or none."""
    if image is None:  # removed, or cleared by a refusal: keep the refusal's note
        return {}, gr.skip(), gr.skip()
    try:
        photo = _photo(image, min_side=256, uploads=uploads)
    except gr.Error as exc:
        return {}, None, _refusal(exc)
    found = classifier.assess(photo, top_k=top_k)
    return _label_value(found), gr.skip(), _verdict(found, english_list(found.labels, "and"))


def fool_page(image: Any, *, classifier, top_k: int = 3, uploads: Uploads | None = None) -> tuple:
    """Fool me tab: (before, photo, adversarial, after, summary, download) for a new photo:
    its label, and the last photo's adversarial result cleared."""
    cleared = (None, {}, gr.skip() if image is None else "", None)
    if image is None:
        return {}, gr.skip(), *cleared
    try:
        photo = _photo(image, min_side=256, uploads=uploads)
    except gr.Error as exc:
        return {}, None, None, {}, _refusal(exc), None
    return _label_value(classifier.assess(photo, top_k=top_k)), gr.skip(), *cleared


def inside_page(image: Any, *, uploads: Uploads | None = None) -> tuple:
    """Inside the network tab: (photo, overlay, verdict, *grids) for a new photo: the last
    photo's explanation cleared, a refused file answered in place."""
    grids = (None,) * len(DEPTHS)
    if image is None:
        return gr.skip(), None, gr.skip(), *grids
    try:
        _photo(image, min_side=256, uploads=uploads)
    except gr.Error as exc:
        return None, None, _refusal(exc), *grids
    return gr.skip(), None, "", *grids


def assess(image: Any, *, classifier, top_k: int = 3, uploads: Uploads | None = None) -> dict[str, Any]:
    """The ``/assess`` API: ``{"top": [[label, prob], ...], "is_pet": bool | None, "verdict",
    "score", "threshold", "refuse_threshold", "message"}`` (``verdict`` "pet", "unsure" or
    "not_pet", :mod:`training.verdict`; ``is_pet`` True for "pet" alone; these and the scores
    None for a model without an OOD score; ``message`` the caveat or warning, or None)."""
    found = classifier.assess(_photo(image, min_side=256, uploads=uploads), top_k=top_k)
    return {"top": [[label, prob] for label, prob in found.top], "is_pet": found.is_pet, "verdict": found.verdict,
            "score": found.score, "threshold": found.threshold, "refuse_threshold": found.refuse_threshold,
            "message": found.message()}


def fool_me(
    image: Any,
    target: str,
    strength: float,
    robust: bool = False,
    *,
    classifier,
    model,
    labels: Sequence[str],
    steps: int | None = None,
    uploads: Uploads | None = None,
    progress: gr.Progress = gr.Progress(),
) -> tuple[Image.Image, dict[str, float], dict[str, float], str, str]:
    """Fool me tab: a targeted adversarial version of the photo.

    ``strength``: the L-inf budget in 1/255 steps. ``robust``: also survive JPEG
    re-encoding and halving (slower; wants strength 8 or so). Returns the adversarial
    image, the ONNX classifier's labels before and after (the after judged on the 8-bit
    result, as a visitor would download it), a summary in Markdown and the PNG's path.
    """
    from training.adversarial import fool

    photo = _photo(image, min_side=512, uploads=uploads)
    if target not in labels:
        raise gr.Error(f"Unknown target {target!r}; choose one of: {', '.join(labels)}.")
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        raise gr.Error(f"Strength must be a number of 1/255 steps, e.g. 2; got {strength!r}.") from None
    progress(0, desc="Looking for the smallest change")
    try:  # the attack checks the strength's range and says what is allowed
        result = fool(
            model, list(labels), photo, target, eps=strength / 255, steps=steps, robust=bool(robust),
            progress=lambda step, total: progress((step, total), desc="Nudging pixels"),
        )
    except ValueError as exc:
        raise gr.Error(str(exc)) from exc
    before = _as_label(classifier.predict(photo, top_k=3))
    judged = classifier.assess(result.image, top_k=3)  # the whole verdict Classify gives
    after = _as_label(judged.top)
    said = max(after, key=after.get)
    changed = round(result.linf * 255)
    if said == target and judged.is_pet is not False:
        verdict = (f"**Fooled.** The network now says **{said}** ({after[said]:.0%}) and takes it for a pet: "
                   "download it and try it in Classify.")
    elif said == target and judged.verdict == UNSURE:
        verdict = (f"**Not quite fooled:** it says **{said}** ({after[said]:.0%}), but Classify would add that "
                   "the photo is unlike the ones it learned from. Try a higher strength.")
    elif said == target:
        verdict = (f"**Not fooled this time:** it says **{said}**, but no longer takes the photo for a pet. "
                   "Try a higher strength.")
    else:
        verdict = f"**Not fooled this time:** it still says **{said}**. Try a higher strength."
    lines = [verdict, f"Largest change to any colour value: {changed}/255 ({result.steps} steps, {result.seconds:.1f} s)."]
    if result.reshared:
        shared = {"jpeg": "saved as JPEG", "half": "shrunk to half size"}
        lines.append("Re-shared, it says: " + "; ".join(
            f"{text}: **{result.reshared[how][0]}** ({result.reshared[how][1]:.0%})"
            for how, text in shared.items() if how in result.reshared
        ) + ".")
    if result.resized_from:
        w, h = result.resized_from
        lines.append(f"Your {w}×{h} photo was worked on at {result.image.width}×{result.image.height} pixels.")
    summary = "  \n".join(lines)
    download = _save_png(result.image, f"{_stem(image)}-as-{target}.png")
    return result.image, before, after, summary, download


def ideal(
    label: str,
    seed: float = 0,
    *,
    model,
    labels: Sequence[str],
    steps: int | None = None,
    size: int = 224,
    progress: gr.Progress = gr.Progress(),
) -> Iterator[tuple[Image.Image, str | None]]:
    """Ideal image tab: yields in-between pictures while it forms, then the final one and
    the path of its PNG.

    The optimization runs in a worker thread that hands previews back through a queue, so
    the visitor watches the image form; closing the page stops the worker at its next step.
    """
    from training.ideal import ideal_image

    if label not in labels:
        raise gr.Error(f"Unknown label {label!r}; choose one of: {', '.join(labels)}.")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise gr.Error("The seed must be a whole number.") from None
    updates: queue.Queue = queue.Queue()
    stop = threading.Event()
    done = object()
    outcome: dict[str, Any] = {}

    class _Stopped(Exception):
        pass

    def on_step(step: int, total: int, preview) -> None:
        if stop.is_set():
            raise _Stopped
        every = max(1, total // PREVIEWS)
        updates.put((step, total, preview() if step % every == 0 and step < total else None))

    def work() -> None:
        try:
            outcome["image"] = ideal_image(model, list(labels), label, steps=steps, size=size, seed=seed, progress=on_step)
        except _Stopped:
            pass
        except Exception as exc:  # handed to the generator, which raises it in the request
            outcome["error"] = exc
        finally:
            updates.put(done)

    start = time.perf_counter()
    progress(0, desc=f"Dreaming up the ideal {label}")
    worker = threading.Thread(target=work, name="petlens-ideal", daemon=True)
    worker.start()
    try:
        while (item := updates.get()) is not done:
            step, total, preview = item
            progress((step, total), desc=f"Dreaming up the ideal {label}: step {step}/{total}, "
                                        f"{time.perf_counter() - start:.0f} s")
            if preview is not None:
                yield preview, None
    finally:  # also when gradio closes the generator because the visitor left
        stop.set()
    worker.join()
    if "error" in outcome:
        exc = outcome["error"]
        raise gr.Error(str(exc) if isinstance(exc, ValueError) else "The ideal image failed; try again.") from exc
    yield outcome["image"], _save_png(outcome["image"], f"ideal-{label}-seed{seed}.png")


def explain_photo(
    image: Any, label: str | None = None, *, model, labels: Sequence[str], uploads: Uploads | None = None
) -> tuple[Image.Image, str, Image.Image, Image.Image, Image.Image]:
    """Inside the network tab: the Grad-CAM overlay, a one-line verdict and the feature-map
    grids of the early, middle and late layers."""
    from training.explain import explain

    photo = _photo(image, min_side=256, uploads=uploads)
    label = label or None  # an empty dropdown means "the top prediction"
    if label is not None and label not in labels:
        raise gr.Error(f"Unknown label {label!r}; choose one of: {', '.join(labels)}.")
    try:
        result = explain(model, list(labels), photo, label=label)
    except ValueError as exc:
        raise gr.Error(str(exc)) from exc
    verdict = (
        f"Heat map for **{result.label}** (the network gives it {result.prob:.0%}); "
        f"computed in {result.seconds:.2f} s."
    )
    return result.overlay, verdict, result.grids["early"], result.grids["middle"], result.grids["late"]


# --------------------------------------------------------------------------- the app


def _bind(fn, **models):
    """``fn`` with its models bound. No ``__wrapped__`` (unlike ``functools.wraps``): gradio
    must see the partial's own signature, where the models are already filled in."""
    bound = functools.partial(fn, **models)
    bound.__name__, bound.__doc__ = fn.__name__, fn.__doc__
    return bound


def list_examples(folder: str | Path | None) -> list[str]:
    """Photo files in ``folder`` (sorted), or none when it is missing."""
    folder = Path(folder) if folder is not None else EXAMPLES_DIR
    if not folder.is_dir():
        return []
    return [str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in EXAMPLE_SUFFIXES]


def build_demo(
    classifier,
    model,
    labels: Sequence[str],
    *,
    examples: str | Path | None = None,
    fool_steps: int | None = None,
    ideal_steps: int | None = None,
    ideal_size: int = 224,
    heavy_concurrency: int = 1,
    classify_concurrency: int = 4,
    max_queue: int = 64,
) -> gr.Blocks:
    """The demo around an ONNX ``Classifier`` and the matching torch checkpoint model.

    ``examples``: a folder of example photos (default ``demo/examples``). ``fool_steps`` /
    ``ideal_steps``: attack and ideal-image steps (``None``: the library defaults; tests
    pass small numbers). Classification is fast and runs ``classify_concurrency`` at a
    time; the torch jobs (fool, ideal, explain) share one pool of ``heavy_concurrency``
    workers so they cannot starve the CPU; at most ``max_queue`` requests wait.
    """
    labels = list(labels)
    if list(classifier.labels) != labels:
        raise ValueError(
            f"the ONNX model's labels {list(classifier.labels)} differ from the checkpoint's {labels}; "
            "export the checkpoint again (python -m export) or pass the matching pair."
        )
    names = english_list(labels, "and")
    photos = list_examples(examples)
    # The only files a visitor's photo may be read from (the API accepts any JSON path).
    uploads = Uploads(Path(examples) if examples is not None else EXAMPLES_DIR)
    heavy = dict(concurrency_id="torch", concurrency_limit=heavy_concurrency)

    # No usage analytics: visitors' uploads are nobody else's business, and the app must
    # not phone home (CI and many hosts have no outside network).
    with gr.Blocks(title="PetLens: what does a CNN see in your pet?", delete_cache=(1800, 3600),
                   analytics_enabled=False) as app:
        gr.Markdown(INTRO.format(labels=names, first=labels[0], arch=getattr(model, "arch", "a CNN"),
                                 accuracy=_accuracy_note(classifier.metadata)))

        with gr.Tab("Classify"):
            ood = getattr(classifier, "ood_threshold", None) is not None
            ood_help = CLASSIFY_OOD_HELP.format(what=describe_labels(labels)) if ood else CLASSIFY_NO_OOD_HELP
            gr.Markdown(CLASSIFY_HELP.format(labels=names, ood=ood_help), elem_classes="petlens-help")
            with gr.Row():
                with gr.Column():
                    photo = gr.Image(label="Your photo", sources=["upload", "webcam", "clipboard"], type="filepath",
                                     elem_id="petlens-classify-photo")
                with gr.Column():
                    top = gr.Label(label="What the network says", num_top_classes=3, elem_id="petlens-classify-label")
                    not_a_pet = gr.Markdown(show_label=False)
            if photos:
                gr.Examples(photos, inputs=photo, label="Or try one of these")
            page = dict(api_visibility="private", preprocess=False, postprocess=False,
                        concurrency_limit=classify_concurrency, concurrency_id="classify")
            photo.change(_bind(classify_page, classifier=classifier, uploads=uploads), photo, [top, photo, not_a_pet],
                         show_progress="minimal", **page)
            # Removing the photo removes its warning (or refusal), in the browser at once.
            photo.clear(None, None, not_a_pet, js="() => ''", api_visibility="private", queue=False)

            def classify_api(image: FileData) -> dict:
                """The top-3 labels of a photo, as gr.Label's value: {"label", "confidences"}."""
                return _label_data(list((classify(image, classifier=classifier, uploads=uploads) or {}).items()))

            gr.api(classify_api, api_name="classify", concurrency_limit=classify_concurrency, concurrency_id="classify")

            def assess_api(image: FileData) -> dict:
                """Top-3 labels and whether the photo looks like a pet at all (the model's
                out-of-distribution verdict): {"top", "is_pet", "verdict", "score", "threshold",
                "refuse_threshold", "message"}."""
                return assess(image, classifier=classifier, uploads=uploads)

            gr.api(assess_api, api_name="assess", concurrency_limit=classify_concurrency, concurrency_id="classify")

        with gr.Tab("Fool me"):
            gr.Markdown(FOOL_HELP, elem_classes="petlens-help")
            with gr.Row():
                with gr.Column():
                    fool_in = gr.Image(label="Original (upload a photo)", sources=["upload", "webcam", "clipboard"], type="filepath",
                                       elem_id="petlens-fool-photo")
                    fool_before = gr.Label(label="The network says", num_top_classes=3, elem_id="petlens-fool-before")
                with gr.Column():
                    fool_out = gr.Image(label="Adversarial", format="png", interactive=False)
                    fool_after = gr.Label(label="Now the network says", num_top_classes=3)
            with gr.Row():
                target = gr.Dropdown(labels, value=labels[0], label="Make the network see")
                strength = gr.Slider(1, MAX_STRENGTH, value=2, step=1, label="Strength (largest change per colour value, in 1/255)")
                robust = gr.Checkbox(False, label="Survive sharing (JPEG, resizing): slower, use strength 8+")
            with gr.Row():
                fool_btn = gr.Button("Fool the network", variant="primary")
                fool_file = gr.DownloadButton("Download the PNG")
            fool_summary = gr.Markdown(label="summary", show_label=False)
            if photos:
                gr.Examples(photos, inputs=fool_in, label="Example photos")
            # The "before" label as soon as a photo is in: the visitor sees what they start from.
            fool_in.change(_bind(fool_page, classifier=classifier, uploads=uploads), fool_in,
                           [fool_before, fool_in, fool_out, fool_after, fool_summary, fool_file],
                           show_progress="minimal", **page)
            fool_in.clear(None, None, fool_summary, js="() => ''", api_visibility="private", queue=False)
            fool_btn.click(
                _bind(fool_me, classifier=classifier, model=model, labels=labels, steps=fool_steps, uploads=uploads),
                [fool_in, target, strength, robust], [fool_out, fool_before, fool_after, fool_summary, fool_file],
                api_name="fool_me", preprocess=False, **heavy,
            )

        with gr.Tab("Ideal image"):
            gr.Markdown(IDEAL_HELP.format(first=labels[0]), elem_classes="petlens-help")
            with gr.Row():
                with gr.Column(scale=1):
                    ideal_label = gr.Dropdown(labels, value=labels[0], label="Label")
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed (each one starts from different noise)")
                    ideal_btn = gr.Button("Dream it up", variant="primary")
                    ideal_file = gr.DownloadButton("Download the PNG")
                with gr.Column(scale=2):
                    ideal_out = gr.Image(label="The network's ideal", format="png", interactive=False, height=448,
                                         elem_id="petlens-ideal")
            ideal_btn.click(
                _bind(ideal, model=model, labels=labels, steps=ideal_steps, size=ideal_size),
                [ideal_label, seed], [ideal_out, ideal_file], api_name="ideal",
                show_progress="minimal",  # the full overlay would hide the picture as it forms
                **heavy,
            )

        with gr.Tab("Inside the network"):
            gr.Markdown(INSIDE_HELP, elem_classes="petlens-help")
            with gr.Row():
                with gr.Column():
                    inside_in = gr.Image(label="Your photo", sources=["upload", "webcam", "clipboard"], type="filepath")
                    inside_label = gr.Dropdown(labels, value=None, label="Explain which label? (empty: the top prediction)")
                    inside_btn = gr.Button("Look inside", variant="primary")
                with gr.Column():
                    overlay = gr.Image(label="Grad-CAM: where the evidence is", format="png", interactive=False)
                    verdict = gr.Markdown(label="verdict", show_label=False)
            with gr.Row():
                grids = []
                for text in DEPTHS.values():
                    with gr.Column(min_width=160):
                        # A caption above the grid: the image's own label badge and buttons
                        # would cover its first row of tiles.
                        gr.Markdown(f"**{text}**")
                        grids.append(gr.Image(label=text, show_label=False, buttons=[], format="png",
                                              interactive=False))
            if photos:
                gr.Examples(photos, inputs=inside_in, label="Example photos")
            inside_in.change(_bind(inside_page, uploads=uploads), inside_in, [inside_in, overlay, verdict, *grids], **page)
            inside_in.clear(None, None, verdict, js="() => ''", api_visibility="private", queue=False)
            inside_btn.click(
                _bind(explain_photo, model=model, labels=labels, uploads=uploads),
                [inside_in, inside_label], [overlay, verdict, *grids],
                api_name="explain", preprocess=False, **heavy,
            )

    # One queue for the app: heavy events set their own limit above; max_size bounds how
    # many visitors wait (the rest get "queue full" at once instead of a long silent wait).
    return app.queue(max_size=max_queue, default_concurrency_limit=1)


def resolve_model_file(path: str | Path | None, default: Path) -> Path:
    """The file to load: ``path`` as given, or the shipped default found from the current
    directory or the repository root. Raises ``FileNotFoundError`` with what to do."""
    if path is not None:
        candidates = [Path(path)]
    else:
        candidates = [default, REPO_ROOT / default]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    hint = (
        "build it with `python -m export --checkpoint models/catsdogs.pt --out models/catsdogs.onnx`"
        if candidates[0].suffix == ".onnx"
        else "train one with `python -m training --data DIR --out RUN` and copy RUN/model.pt there"
    )
    raise FileNotFoundError(f"model file not found: {candidates[0]}; {hint}, or pass its path.")


def load_demo(
    model: str | Path | None = None, checkpoint: str | Path | None = None, **options: Any
) -> gr.Blocks:
    """Load the ONNX classifier and the torch checkpoint once and build the demo on them.
    ``None`` means the shipped ``models/catsdogs.onnx`` / ``models/catsdogs.pt``; ``model``
    may also be a Triton URL (``http://host:8000/<model>``, see ``export.runtime``)."""
    from export.runtime import Classifier
    from training import load_checkpoint

    remote = model is not None and str(model).startswith(("http://", "https://"))  # a Triton server
    classifier = Classifier.load(model if remote else resolve_model_file(model, DEFAULT_MODEL))
    torch_model, labels = load_checkpoint(resolve_model_file(checkpoint, DEFAULT_CHECKPOINT))
    return build_demo(classifier, torch_model, labels, **options)


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
