"""Uploads for the bot tests: sample photos and every hostile file kind, made on the fly."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

import tests.conftest as _root_module  # shared helpers; pytest puts the repo root on sys.path

_root = _root_module
synthetic_photo = _root.synthetic_photo
LABELS = _root.LABELS


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, **kw)
    return buf.getvalue()


def photo_bytes(label: str, seed: int = 7) -> bytes:
    return png(synthetic_photo(label, seed))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 50_000) -> bytes:
    """A valid PNG header declaring side×side pixels (2.5 gigapixels) in under 1 KB."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def hostile_uploads() -> dict[str, tuple[str, bytes, str | None]]:
    """kind -> (filename, bytes, expectation): "cat" means a usable photo of a cat,
    "usable" a usable image with no clear label, otherwise a word the refusal must contain."""
    cat = synthetic_photo("cat", 3)
    huge = cat.resize((6400, 5120), Image.Resampling.BILINEAR)  # 33 MP: under the limit, big
    frames = [cat, synthetic_photo("dog", 3), synthetic_photo("dog", 4)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gray16 = Image.fromarray(np.asarray(cat.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    rgba = cat.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(cat.size).point(lambda v: 128 + v // 2))
    full = png(cat)
    return {
        "empty": ("empty.png", b"", "empty"),
        "truncated": ("truncated.png", full[: len(full) * 2 // 3], "truncated"),
        "text-named-png": ("notes.png", b"these are my shopping notes, not a photo\n" * 20, "not an image"),
        "svg": ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "SVG"),
        "decompression-bomb": ("bomb.png", bomb_png(), "too large"),
        "huge-photo": ("huge.jpg", jpeg(huge), "cat"),
        "animated-gif": ("cat.gif", gif.getvalue(), "cat"),
        "cmyk": ("cmyk.jpg", jpeg(cat.convert("CMYK")), "cat"),
        "16-bit": ("gray16.png", png(gray16), "usable"),
        "rgba": ("rgba.png", png(rgba), "cat"),
    }
