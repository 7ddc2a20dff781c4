"""Safe image intake shared by every surface (CLI, bot, demo, Classifier).

:func:`load_image` turns a path, bytes, a binary file object or a PIL image into a decoded
8-bit RGB PIL image, or raises an :class:`ImageError` (a ``ValueError``) whose message a
person can act on. It never decodes pixels before the header has been checked against the
limits, so decompression bombs cost nothing, and it decodes big JPEGs at reduced scale
(``Image.draft``) when the caller says how small it may go.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import struct
import threading
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from .labels import english_list

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]

MAX_BYTES = 40 * 1024 * 1024  # a 35-megapixel JPEG is ~10-20 MB
MAX_PIXELS = 60_000_000  # 60 megapixels: above any phone camera, far below a bomb
MIN_SIDE = 8
MAX_ASPECT = 25.0  # a 1x100000 strip would blow up when resized to 256 px short side
# Non-JPEG images this big must not be "nearly free" to store: a 49-megapixel PNG that
# fits in 6 KB costs seconds and ~150 MB to decode and is only ever a decompression bomb.
BOMB_MIN_PIXELS = 16_000_000
BOMB_RATIO = 1000  # pixels per byte of file; photos are ~0.3, flat screenshots ~10

# Decoders we let Pillow use. Restricting ``Image.open`` keeps user uploads away from the
# exotic plugins (EPS shells out to Ghostscript; PSD, FITS, ... are rarely exercised code).
FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"] + (["AVIF"] if features.check("avif") else [])
SUPPORTED = english_list([f.replace("WEBP", "WebP") for f in FORMATS])
# File names every tool treats as photos when it reads a folder: the formats above.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
                           | ({".avif"} if "AVIF" in FORMATS else set()))


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


def is_image_file(path: Path) -> bool:
    """A photo by its name (:data:`IMAGE_SUFFIXES`); hidden files such as macOS ``._x.jpg`` are not."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def image_files(root: str | os.PathLike, *, recursive: bool = True, limit: int | None = None) -> list[Path]:
    """The photos in folder ``root`` (or ``[root]`` for one file), sorted; ``recursive`` looks
    into subfolders. With ``limit``, evenly spaced picks, so every class folder contributes.
    A missing folder is a ``FileNotFoundError`` that names it."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if is_image_file(p))
    if limit is not None and len(files) > limit:
        idx = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in idx]
    return files


def _human_bytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def _read_source(src: ImageSource, max_bytes: int) -> tuple[bytes, str]:
    """Raw bytes plus a short name for messages."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "this file"
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        name = path.name
        if path.is_dir():
            raise ImageError(f"{name} is a folder, not a photo; give a photo file (JPEG, PNG, ...).")
        if not path.is_file():
            raise ImageError(f"{name}: no such file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLargeError(
                f"{name} is {_human_bytes(size)}; the limit is {_human_bytes(max_bytes)}. Send a smaller photo."
            )
        data = path.read_bytes()
    elif hasattr(src, "read"):
        data, name = src.read(max_bytes + 1), getattr(src, "name", "this file")
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
    """A readable refusal for common non-photo uploads Pillow would only call 'unidentified'."""
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "SVG drawings are not supported; export it as PNG or JPEG and send that."
    if head.startswith(b"%pdf"):
        return "that is a PDF, not a photo; send a JPEG or PNG."
    if data[4:8] == b"ftyp":  # ISO media: HEIC/AVIF stills, or MP4/MOV video
        brand = data[8:12]
        if brand in (b"avif", b"avis") and "AVIF" in FORMATS:
            return None
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"):
            return "HEIC/AVIF photos are not supported here; send a JPEG or PNG (most phones can share as JPEG)."
        return "that looks like a video, not a photo; send a JPEG or PNG still image."
    return None


_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes start like ("JPEG", "PNG", "WebP", ...), whatever a file's
    name or label says; None when they start like none of the formats read here."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)


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


# Pillow checks every opened image against its own process-wide limit (Image.MAX_IMAGE_PIXELS,
# ~89 megapixels) and *prints* a DecompressionBombWarning above it, before we see the size.
# Ours is lower and runs right after opening (check_size), so that warning only ever precedes
# our own refusal: it is silenced while we open. catch_warnings swaps process-wide state, so
# our threads (the bot's and the demo's workers) take turns; opening reads only the header.
_OPEN_LOCK = threading.Lock()


def open_quietly(data: bytes | str | os.PathLike) -> Image.Image:
    """``Image.open`` (header only) on our formats, without Pillow's bomb warning: the caller's
    own limit applies next (see :func:`check_size`)."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data, formats=FORMATS)


def _bomb_error(name: str, exc: Exception, max_pixels: int) -> ImageTooLargeError:
    # Pillow refuses far beyond our limit before we can see the size; its message has it.
    m = re.search(r"\((\d+) pixels\)", str(exc))
    declared = f"{int(m.group(1)) / 1e6:,.0f} megapixels" if m else "an absurd number of pixels"
    return ImageTooLargeError(
        f"image too large: {name} declares {declared}, limit {max_pixels / 1e6:.0f} megapixels. "
        "Resize it and send it again."
    )


def _shrink(img: Image.Image, side: int, longest: bool = False) -> Image.Image:
    """Integer-factor box reduction keeping the shorter side (``longest``: the longer one)
    >= 2 * ``side`` (so the antialiased resize that follows still sees more pixels than it
    keeps)."""
    factor = (max(img.size) if longest else min(img.size)) // (2 * side)
    if factor < 2:
        return img
    if img.mode in ("1", "P", "I;16", "I;16L", "I;16B", "I;16N"):  # modes reduce() cannot do
        img = _to_rgb(img)
    return img.reduce(factor)


def _bound(img: Image.Image, max_side: int) -> Image.Image:
    """``img`` (RGB) with its longest side at most ``max_side`` (Lanczos)."""
    if max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)


def _release_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps a big decode's buffers otherwise,
    and a bot that once decoded a 40-megapixel upload would stay hundreds of MB larger)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def load_image(
    src: ImageSource,
    *,
    min_side: int | None = None,
    max_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
) -> Image.Image:
    """Decode ``src`` safely into an 8-bit RGB image, EXIF orientation applied.

    ``src``: a path, bytes, a binary file object or a PIL image. ``min_side``: the caller
    only needs the shorter side to be at least this many pixels (e.g. 256 for
    classification); big JPEGs are then decoded at 1/2, 1/4 or 1/8 scale (DCT scaling,
    ``Image.draft``) and other big images box-reduced, which makes a 35-megapixel photo
    cost a fraction of a second. ``max_side``: the caller works at most at this size (the
    heavy jobs): the returned image's longest side is at most ``max_side``, reached by the same
    reduced-scale decoding and a Lanczos resize, and a big upload's full-size pixels are freed
    (and handed back to the system) before this returns. Animated images give their first frame; transparency is
    composited on white. Raises an :class:`ImageError` subclass whose message a person can
    act on; geometry is checked from the header before any pixel is decoded.

    Example::

        img = load_image(upload_bytes, min_side=256)   # PIL.Image, mode "RGB"
    """
    if isinstance(src, Image.Image):
        check_size(src.width, src.height, max_pixels=max_pixels)
        return _decode(src, "the image", min_side, max_pixels, max_side)
    data, name = _read_source(src, max_bytes)
    reason = _sniff_unsupported(data)
    if reason:
        raise UnsupportedImageError(f"{name}: {reason}")
    try:
        img = open_quietly(data)
    except Image.DecompressionBombError as exc:
        raise _bomb_error(name, exc, max_pixels) from exc
    except UnidentifiedImageError as exc:
        fmt = sniff_format(data)
        if fmt:  # the right signature, but Pillow could not parse what follows
            raise CorruptImageError(f"{name} starts like a {fmt} file but is damaged or cut short; re-save or re-send the photo.") from exc
        raise NotAnImageError(f"{name} is not an image this service can read. Send a {SUPPORTED} file.") from exc
    except Exception as exc:  # malformed headers raise all sorts of things
        raise CorruptImageError(f"{name} looks damaged and cannot be read; re-save or re-send the photo.") from exc
    check_size(img.width, img.height, name, max_pixels)
    draftable = img.format in ("JPEG", "MPO")  # MPO: multi-picture JPEG from many phone cameras
    pixels = img.width * img.height
    if not draftable and pixels > BOMB_MIN_PIXELS and pixels > BOMB_RATIO * len(data):
        raise ImageTooLargeError(
            f"image too large: {name} declares {img.width}×{img.height} pixels in only {_human_bytes(len(data))}, "
            "which only decompression bombs do. Send a real photo."
        )
    if draftable and ((min_side and min(img.size) > 2 * min_side) or (max_side and max(img.size) > 2 * max_side)):
        # Ask libjpeg for the smallest 1/2, 1/4 or 1/8 scale that keeps min_side (or max_side).
        scale = min_side / min(img.size) if min_side else max_side / max(img.size)
        img.draft(img.mode, (max(1, int(img.width * scale + 1)), max(1, int(img.height * scale + 1))))
    decoded = _decode(img, name, min_side, max_pixels, max_side)
    if pixels > BOMB_MIN_PIXELS:
        del img
        _release_memory()
    return decoded


def _decode(img: Image.Image, name: str, min_side: int | None, max_pixels: int,
            max_side: int | None = None) -> Image.Image:
    """Load the pixels (first frame), orient, shrink, convert; decoder failures -> ImageError."""
    try:
        img.load()
        img = _exif_transpose(img)
        if min_side:
            img = _shrink(img, min_side)
        if max_side:
            return _bound(_to_rgb(_shrink(img, max_side, longest=True)), max_side)
        return _to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise _bomb_error(name, exc, max_pixels) from exc
    except (OSError, SyntaxError, EOFError, IndexError, struct.error, zlib.error) as exc:
        # Our words only: Pillow's ("image file is truncated (98 bytes not processed)") stay
        # in the exception chain for logs.
        raise CorruptImageError(f"{name} is cut short (truncated) or damaged; re-save or re-send the photo.") from exc
    except ValueError as exc:  # e.g. a colour mode Pillow cannot convert to RGB
        raise UnsupportedImageError(
            f"{name} uses an image format variant that cannot be read; re-save it as JPEG or PNG."
        ) from exc


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost the user their photo
        return img
