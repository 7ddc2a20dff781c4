"""What the demo's tabs share: turning Gradio payloads into photos and answers into Gradio values.

Nothing here decides what a result means or how it is said (that is :mod:`service.answers`);
it only translates between the service and Gradio: uploads -> :class:`service.Photo`, user
errors -> ``gr.Error`` (never a traceback in the operator's terminal), answers -> ``gr.Label``
values and downloadable PNGs.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from demo.uploads import UploadRefused, Uploads
from service import Classified, Photo, Service, UserError
from service.answers import NO_PHOTO
from training.images import ImageError

# Finished PNGs for the download buttons; gradio copies them into its own cache, so ours
# only need to live until then. Folders older than this are swept on the next save.
DOWNLOADS = Path(tempfile.gettempdir()) / "petlens-demo"
DOWNLOAD_TTL_S = 3600


def error(message: str, title: str) -> gr.Error:
    """A ``gr.Error`` for a visitor's mistake: shown to them, not printed as a traceback."""
    return gr.Error(message, title=title, print_exception=False)


@dataclass(frozen=True)
class Ctx:
    """What every tab is built from: the service, where photos may come from, the example
    photos, and the event options of the light (classify) and heavy (torch) lanes."""

    service: Service
    uploads: Uploads
    examples: list[str]
    light: dict
    heavy: dict
    page: dict
    lane: Any = None  # demo.lanes.HeavyLane: admission to the heavy group (None: no bound)

    def photo(self, upload: Any, *, heavy: bool = False) -> Photo:
        """Decode a Gradio upload (see :mod:`demo.uploads`) through the service's intake;
        anything unusable becomes a ``gr.Error`` with the service's words."""
        if upload is None:
            raise error(NO_PHOTO, "No photo")
        try:
            source = self.uploads.source(upload)
        except UploadRefused as exc:
            raise error(str(exc), "Not an upload") from None
        if source is None:
            raise error("The upload did not arrive; try again.", "No photo")
        name = upload.get("orig_name") if isinstance(upload, dict) else None
        try:
            return self.service.photo(source, name=name or (Path(source).name if isinstance(source, str) else None),
                                      heavy=heavy)
        except ImageError as exc:
            raise error(str(exc), "Unusable photo") from exc

    def run(self, fn, *args, **kwargs):
        """A service call whose user errors become ``gr.Error``."""
        try:
            return fn(*args, **kwargs)
        except (UserError, ImageError) as exc:
            raise error(str(exc), "Cannot do that") from exc


def label_data(top: Sequence[tuple[str, float]], big: str | None = None) -> dict:
    """``gr.Label``'s wire value ``{"label", "confidences"}``; ``big`` (default: the top class)
    is the large text above the bars."""
    big = big if big is not None else (top[0][0] if top else None)
    return {"label": big, "confidences": [{"label": label, "confidence": float(prob)} for label, prob in top]}


def answer_label(found: Classified) -> dict:
    """The page's label for an answer: the big text is the service's headline ("A cat",
    "Probably a dog", "Not a cat or a dog?") over the bars."""
    return label_data(found.top, found.headline())


def refusal(exc: gr.Error) -> str:
    """A refused upload as the Markdown shown in place of the result."""
    return f"⚠️ **{exc.title or 'Unusable photo'}.** {exc.message}"


def note(found: Classified) -> str:
    """What goes under a label: the breed sentence for a pet, or the caveat with a symbol every
    browser font has; "" for a pet of a model without breeds."""
    caveat = found.caveat()
    if not caveat:
        return found.breed_sentence()
    return ("ℹ️ " if found.verdict == "unsure" else "⚠️ ") + caveat


def save_png(image: Image.Image, name: str) -> str:
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
