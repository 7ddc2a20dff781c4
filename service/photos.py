"""Strangers' photos: one intake under one set of limits, for the bot and the demo alike.

Everything is checked as early as it can be: from what a surface knows before downloading
(:func:`check_metadata`: Discord announces name, type, size and width×height), from the bytes'
own signature (:func:`is_image_bytes`: a JPEG labelled ``application/octet-stream`` is still a
JPEG), and from the header while decoding (:func:`training.images.load_image`: one pixel limit
and one message everywhere). Heavy jobs decode at the size they work at (:attr:`Limits.max_side`),
so a 40-megapixel upload costs its decode once, not a 40-megapixel attack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from training.images import (
    IMAGE_SUFFIXES,
    MAX_BYTES,
    MAX_PIXELS,
    ImageError,
    ImageSource,
    check_size,
    load_image,
    open_quietly,
    sniff_format,
)
from training.presets import RESIZE_SIZE

WORK_SIDE = 1024  # longest side fool-me and explain work at, and of every image sent back


@dataclass(frozen=True)
class Limits:
    """What a photo may be; plain values, so they travel to worker processes.

    ``max_bytes``: the largest file (a surface may accept less: Discord's own cap is 10 MB);
    ``max_pixels``: width×height, the one limit every surface and tool applies;
    ``max_side``: the longest side the heavy jobs work at and send back (bigger photos are
    scaled down, and the answer says so)."""

    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    max_side: int = WORK_SIDE


@dataclass(frozen=True)
class Photo:
    """A decoded photo: 8-bit RGB ``image``, a safe file ``name`` stem for what is sent back,
    and the ``original_size`` (width, height) it had before any scaling."""

    image: Image.Image
    name: str = "photo"
    original_size: tuple[int, int] = (0, 0)

    @property
    def scaled(self) -> bool:
        """Whether the photo was scaled down to the heavy jobs' working size."""
        return self.original_size != (0, 0) and self.original_size != self.image.size


def stem(filename: str | None) -> str:
    """A short, safe file stem from a user's file name: ``"Rex (1).JPG"`` -> ``"Rex-1"``."""
    text = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(filename or "photo").stem).strip("-")[:40]
    return text or "photo"


def _size_of(source: ImageSource) -> tuple[int, int]:
    """(width, height) from the header alone; (0, 0) when it cannot be read cheaply."""
    if isinstance(source, Image.Image):
        return source.size
    if not isinstance(source, (bytes, bytearray, str, Path)):
        return (0, 0)  # a stream: reading its header here would consume it
    try:
        with open_quietly(source) as img:
            return img.size
    except Exception:  # the decode below gives the real, readable error
        return (0, 0)


def open_photo(source: ImageSource, *, name: str | None = None, limits: Limits = Limits(), heavy: bool = False) -> Photo:
    """Decode a photo for a job. ``heavy``: for fool-me and explain, at most
    :attr:`Limits.max_side` on its longest side; else for classifying (decoded at reduced scale
    down to what the classifier looks at). Raises :class:`~training.images.ImageError` with a
    message for the person who sent it."""
    if isinstance(source, (str, Path)) and name is None:
        name = Path(source).name
    size = _size_of(source) if heavy else (0, 0)
    image = load_image(source, min_side=None if heavy else RESIZE_SIZE, max_side=limits.max_side if heavy else None,
                       max_pixels=limits.max_pixels, max_bytes=limits.max_bytes)
    if size == (0, 0) or sorted(size) == sorted(image.size):
        size = image.size  # not scaled (EXIF may have turned it: the header's size is unturned)
    elif (size[0] > size[1]) != (image.width > image.height):
        size = (size[1], size[0])
    return Photo(image, stem(name), size)


def is_image_bytes(data: bytes) -> bool:
    """Whether the bytes start like an image format the intake reads."""
    return sniff_format(data[:64]) is not None


def looks_like_image(filename: str | None, content_type: str | None) -> bool | None:
    """What an attachment's label says: True (an image type or, lacking a type, an image file
    name), False (another type, or SVG) or None (no usable label: ``application/octet-stream``,
    no type and no telling name), when only the bytes can tell."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "image/svg+xml":
        return False
    if ctype.startswith("image/"):
        return True
    if ctype not in ("", "application/octet-stream", "binary/octet-stream"):
        return False  # text/plain, video/mp4, application/pdf, ...
    return True if Path(filename or "").suffix.lower() in IMAGE_SUFFIXES else None


def _human(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def check_metadata(filename: str | None, content_type: str | None, size: int, width: int | None,
                   height: int | None, limits: Limits) -> str | None:
    """Why an attachment cannot be used, from what is known before downloading it (name, type,
    size, dimensions); None when it may be. The pixel limit's message is the intake's own."""
    name = filename or "the attachment"
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "image/svg+xml":
        return f"{name}: SVG drawings are not supported; export it as PNG or JPEG and send that."
    if looks_like_image(filename, content_type) is False:
        return f"{name} is not an image ({ctype or 'no image type'}). Send a photo: JPEG, PNG, WebP, GIF, BMP or TIFF."
    if size == 0:
        return f"{name} is empty (0 bytes). Send a photo file (JPEG, PNG, ...)."
    if size > limits.max_bytes:
        return f"{name} is {_human(size)}; the limit is {_human(limits.max_bytes)}. Send a smaller photo."
    if width and height:
        try:
            check_size(width, height, name, limits.max_pixels)
        except ImageError as exc:
            return str(exc)
    return None
