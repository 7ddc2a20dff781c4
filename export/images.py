"""Safe image intake shared by every surface (CLI, bot, demo, Classifier).

:func:`load_image` turns a path, bytes, a binary file object or a PIL image into a decoded
8-bit RGB PIL image, or raises an :class:`ImageError` (a ``ValueError``) whose message a
person can act on. It never decodes pixels before the header has been checked against the
limits, so decompression bombs cost nothing, and it decodes big JPEGs at reduced scale
(``Image.draft``) when the caller says how small it may go.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]

MAX_BYTES = 40 * 1024 * 1024  # a 35-megapixel JPEG is ~10-20 MB
MAX_PIXELS = 60_000_000  # 60 megapixels: above any phone camera, far below a bomb
MIN_SIDE = 8
MAX_ASPECT = 25.0  # a 1x100000 strip would blow up when resized to 256 px short side
SUPPORTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"


class ImageError(ValueError):
    """An upload that cannot be used; ``str(err)`` is meant for the person who sent it."""


class EmptyImageError(ImageError):
    pass


class NotAnImageError(ImageError):
    pass


class UnsupportedImageError(ImageError):
    pass


class CorruptImageError(ImageError):
    pass


class ImageTooLargeError(ImageError):
    pass


class ImageTooSmallError(ImageError):
    pass


def _human_bytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def _read_source(src: ImageSource, max_bytes: int) -> tuple[bytes, str]:
    """Raw bytes plus a short name for messages."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "the image"
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        name = path.name
        if not path.is_file():
            raise ImageError(f"{name}: no such file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLargeError(
                f"{name} is {_human_bytes(size)}; the limit is {_human_bytes(max_bytes)}. Send a smaller photo."
            )
        data = path.read_bytes()
    elif hasattr(src, "read"):
        data, name = src.read(max_bytes + 1), getattr(src, "name", "the image")
        name = Path(str(name)).name
    else:
        raise TypeError(f"expected a path, bytes, a file object or a PIL image, got {type(src).__name__}")
    if len(data) == 0:
        raise EmptyImageError(f"{name} is empty (0 bytes). Send a photo file (JPEG, PNG, ...).")
    if len(data) > max_bytes:
        raise ImageTooLargeError(
            f"{name} is larger than {_human_bytes(max_bytes)}. Send a smaller photo."
        )
    return data, name


def _sniff_unsupported(data: bytes) -> str | None:
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "SVG drawings are not supported; export it as PNG or JPEG and send that."
    if head.startswith(b"%pdf"):
        return "that is a PDF, not a photo; send a JPEG or PNG."
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIC/AVIF photos are not supported yet; send a JPEG or PNG (most phones can share as JPEG)."
    return None


def check_size(width: int, height: int, name: str = "the image", max_pixels: int = MAX_PIXELS) -> None:
    """Refuse absurd geometry before any pixel is decoded."""
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image too large: {width}×{height} pixels, limit {max_pixels / 1e6:.0f} megapixels. "
            "Resize it and send it again."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageTooSmallError(
            f"image too small: {width}×{height} pixels; each side needs at least {MIN_SIDE} pixels."
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageTooLargeError(
            f"{name} is {width}×{height} pixels, too long and thin to classify; crop it to the animal."
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            hi = 1.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def load_image(
    src: ImageSource,
    *,
    min_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
) -> Image.Image:
    """Decode ``src`` safely into an 8-bit RGB image, EXIF orientation applied.

    ``min_side``: the caller only needs the shorter side to be at least this many pixels
    (e.g. 256 for classification); big JPEGs are then decoded at 1/2, 1/4 or 1/8 scale and
    other big images reduced, which makes a 35-megapixel photo cost a fraction of a second.
    Animated images give their first frame.
    """
    if isinstance(src, Image.Image):
        check_size(src.width, src.height, max_pixels=max_pixels)
        return _to_rgb(ImageOps.exif_transpose(src))
    data, name = _read_source(src, max_bytes)
    reason = _sniff_unsupported(data)
    if reason:
        raise UnsupportedImageError(f"{name}: {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(
                f"{name} declares an absurd size ({exc}); limit {max_pixels / 1e6:.0f} megapixels."
            ) from exc
        except UnidentifiedImageError as exc:
            raise NotAnImageError(
                f"{name} is not an image Pillow can read. Send a {SUPPORTED} file."
            ) from exc
        except Exception as exc:  # malformed headers raise all sorts of things
            raise CorruptImageError(f"{name} looks damaged and cannot be read ({exc.__class__.__name__}).") from exc
        check_size(img.width, img.height, name, max_pixels)
        try:
            if min_side and img.format == "JPEG" and min(img.size) > 2 * min_side:
                scale = min_side / min(img.size)
                img.draft("RGB", (max(1, int(img.width * scale + 1)), max(1, int(img.height * scale + 1))))
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"{name} is too large to decode ({exc}).") from exc
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            raise CorruptImageError(
                f"{name} is truncated or corrupt ({exc}); re-save or re-send the photo."
            ) from exc
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost the user their photo
        pass
    if min_side and min(img.size) >= 4 * min_side:
        img = img.reduce(min(img.size) // (2 * min_side))
    return _to_rgb(img)
