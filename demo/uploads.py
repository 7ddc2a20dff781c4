"""Where a visitor's photo may come from: the one door between Gradio's payloads and the intake.

Gradio hands an event handler whatever the client sent. The page sends a ``FileData`` dict
whose ``path`` points into Gradio's upload cache (an upload, a webcam shot, a pasted image or
a clicked example, all copied there by Gradio), but the raw HTTP API (``/gradio_api/call/…``)
accepts any JSON: ``{"path": "/etc/passwd"}``, ``"../models/catsdogs.pt"`` or a URL. The
handlers run with ``preprocess=False`` (so that a broken upload gets our own message rather
than Pillow's), so nothing in Gradio checks those paths for us.

:class:`Uploads` does: a photo is read only when its resolved path (symlinks followed) lies
inside Gradio's upload cache or the demo's example folder. Anything else gets one answer,
whether or not the file exists, so the demo cannot be used to probe the server's disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

NOT_AN_UPLOAD = ("That is not a photo uploaded to this page. Upload the photo itself "
                 "(drag it in, use the webcam or paste it); file paths and links are not read.")


class UploadRefused(ValueError):
    """A payload that does not name a visitor's upload; ``str(err)`` is for the visitor."""


def gradio_upload_folder() -> Path:
    """Gradio's cache of uploaded files (``$GRADIO_TEMP_DIR``, else ``<tmp>/gradio``)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


class Uploads:
    """The folders a visitor's photo may be read from.

    ``Uploads(examples)``: Gradio's upload cache plus ``examples`` (a folder or None).
    :meth:`source` turns a Gradio payload into something :func:`training.images.load_image`
    may read, or raises :class:`UploadRefused`.
    """

    def __init__(self, *folders: str | os.PathLike | None, upload_folder: str | os.PathLike | None = None):
        roots: Iterable[str | os.PathLike] = [upload_folder or gradio_upload_folder(), *(f for f in folders if f)]
        self.roots = tuple(Path(os.path.realpath(r)) for r in roots)

    def allows(self, path: str | os.PathLike) -> bool:
        """Whether ``path``, with every symlink and ``..`` resolved, lies inside a root."""
        real = Path(os.path.realpath(path))
        return any(real == root or root in real.parents for root in self.roots)

    def source(self, upload: Any) -> str | Image.Image | None:
        """The file (or in-process PIL image) a payload names; ``None`` when there is none.

        Accepted: a ``FileData``-shaped dict (``{"path": …}``) or a plain path string whose
        file lies inside a root, and a PIL image (only Python callers can pass one).
        """
        if upload is None or isinstance(upload, Image.Image):
            return upload
        path = upload.get("path") if isinstance(upload, dict) else upload
        if path is None and isinstance(upload, dict) and upload.get("url"):
            raise UploadRefused(NOT_AN_UPLOAD)  # a link: never fetched
        if path is None:
            return None
        if not isinstance(path, (str, os.PathLike)) or "://" in str(path) or not self.allows(path):
            raise UploadRefused(NOT_AN_UPLOAD)
        if not os.path.isfile(path):  # inside the cache but gone (swept, or a folder)
            raise UploadRefused("That upload is no longer on the server; upload the photo again.")
        return str(path)
