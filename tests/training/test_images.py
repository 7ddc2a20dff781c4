"""Safe image intake: every hostile or unusual upload is generated here and must give a
clear ImageError subclass or the right pixels, fast."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from training.images import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    UnsupportedImageError,
    load_image,
)

pytestmark = pytest.mark.timeout(30)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_by_hand(width: int, height: int, *, bit_depth: int = 1, idat: bytes | None = None) -> bytes:
    """A grayscale PNG written chunk by chunk, so the header can declare anything."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    if idat is None:  # every row: filter byte 0 + zero pixels; compresses ~1000:1
        idat = zlib.compress(b"\x00" * ((width * bit_depth + 7) // 8 + 1) * height, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def photo(size=(320, 240), seed=0) -> Image.Image:
    """Smooth colours plus a little noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 128.0)], -1) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def timed_load(src, **kw):
    start = time.perf_counter()
    try:
        return load_image(src, **kw)
    finally:
        assert time.perf_counter() - start < 3.0


# --- refusals -------------------------------------------------------------------------

def _svg() -> bytes:
    return b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


def _truncated_jpeg() -> bytes:
    data = encode(photo((640, 480)), "JPEG", quality=90)
    return data[: len(data) // 2]


def _truncated_png() -> bytes:
    data = encode(photo((320, 240)), "PNG")
    return data[: len(data) // 2]


HOSTILE = {
    "empty bytes": (lambda: b"", EmptyImageError, "empty"),
    "text": (lambda: b"hello, this is not a picture\n" * 10, NotAnImageError, "not an image"),
    "svg": (_svg, UnsupportedImageError, "SVG"),
    "svg with xml prolog": (lambda: b'<?xml version="1.0"?>\n' + _svg(), UnsupportedImageError, "SVG"),
    "pdf": (lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", UnsupportedImageError, "PDF"),
    "heic": (lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, UnsupportedImageError, "HEIC"),
    "mp4 video": (lambda: b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64, UnsupportedImageError, "video"),
    "eps (ghostscript) is not decoded": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", NotAnImageError, "not an image"),
    "truncated jpeg": (_truncated_jpeg, CorruptImageError, "cut short (truncated) or damaged"),
    "truncated png": (_truncated_png, CorruptImageError, "damaged"),
    "png header only": (lambda: encode(photo(), "PNG")[:40], CorruptImageError, "damaged"),
    "declared 40000x40000": (lambda: png_by_hand(40000, 40000, idat=b""), ImageTooLargeError, "1,600 megapixels"),
    "declared 9000x9000": (lambda: png_by_hand(9000, 9000, idat=b""), ImageTooLargeError, "9000×9000"),
    "tiny highly compressed 7000x7000": (lambda: png_by_hand(7000, 7000), ImageTooLargeError, "decompression bomb"),
    "absurd aspect": (lambda: encode(Image.new("RGB", (4000, 20)), "PNG"), ImageTooLargeError, "long and thin"),
    "tiny": (lambda: encode(Image.new("RGB", (4, 4)), "PNG"), ImageTooSmallError, "too small"),
    "one pixel": (lambda: encode(Image.new("L", (1, 1)), "GIF"), ImageTooSmallError, "at least"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_input_is_refused_clearly(kind):
    make, error, phrase = HOSTILE[kind]
    with pytest.raises(error) as info:
        timed_load(make(), min_side=256)
    assert isinstance(info.value, ValueError)  # callers may catch plain ValueError
    assert phrase.lower() in str(info.value).lower()
    assert "Traceback" not in str(info.value) and len(str(info.value)) < 300


def test_refusals_name_the_file_and_read_paths_and_file_objects(tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("not a png at all")
    with pytest.raises(NotAnImageError, match="holiday.png"):
        load_image(fake)
    with pytest.raises(NotAnImageError, match="holiday.png"):
        with open(fake, "rb") as f:
            load_image(f)
    empty = tmp_path / "empty.jpg"
    empty.touch()
    with pytest.raises(EmptyImageError, match="empty.jpg"):
        load_image(str(empty))
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match=f"{tmp_path.name} is a folder, not a photo"):
        load_image(tmp_path)


def test_byte_limit_is_checked_before_reading(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(encode(photo(), "JPEG"))
    with pytest.raises(ImageTooLargeError, match="limit"):
        load_image(big, max_bytes=1000)
    with pytest.raises(ImageTooLargeError):
        load_image(big.read_bytes(), max_bytes=1000)


def test_pixel_limit_is_configurable():
    with pytest.raises(ImageTooLargeError, match="640×480"):
        load_image(encode(photo((640, 480)), "PNG"), max_pixels=100_000)


# --- right answers --------------------------------------------------------------------

def test_rgba_is_composited_on_white():
    rgba = np.zeros((32, 48, 4), np.uint8)
    rgba[:, :16] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[:, 16:32] = (0, 0, 255, 255)  # opaque blue stays blue
    rgba[:, 32:] = (255, 0, 0, 128)  # half-transparent red -> pink
    out = np.asarray(timed_load(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert out.dtype == np.uint8 and out.shape == (32, 48, 3)
    assert (out[:, :16] == 255).all()
    assert (out[:, 16:32] == (0, 0, 255)).all()
    assert np.abs(out[:, 32:].astype(int) - (255, 127, 127)).max() <= 1


def test_palette_with_transparency_becomes_white_not_black():
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.paste(1, (0, 0, 20, 40))  # left half index 1 = green, right half index 0 = transparent
    out = np.asarray(timed_load(encode(pal, "PNG", transparency=0)))
    assert (out[:, :20] == (0, 200, 0)).all()
    assert (out[:, 20:] == 255).all()


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    src = Image.fromarray(ramp)
    data = encode(src, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit file
    out = np.asarray(timed_load(data))
    assert out.shape == (16, 64, 3) and (out[..., 0] == out[..., 2]).all()
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255
    assert np.abs(out[0, :, 0].astype(int) - np.round(ramp[0] / 257)).max() <= 1
    assert len(np.unique(out[0, :, 0])) > 50  # not collapsed to a few levels


def test_grayscale_and_bilevel_become_rgb():
    gray = Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (20, 1)), "L")
    out = np.asarray(timed_load(encode(gray, "PNG")))
    assert out.shape == (20, 50, 3) and (out[..., 0] == np.asarray(gray)).all() and (out[..., 1] == out[..., 2]).all()
    bw = Image.new("1", (30, 30), 1)
    assert np.asarray(timed_load(encode(bw, "PNG"))).min() == 255


def test_cmyk_jpeg_colours_survive():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(timed_load(encode(cmyk, "JPEG", quality=95)), dtype=int)
    assert out.shape == (64, 64, 3)
    r, g, b = out[32, 32]
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = np.asarray(timed_load(data), dtype=int)
    assert out.shape == (30, 40, 3) and np.abs(out - (255, 0, 0)).max() <= 8


def test_webp_decodes():
    src = photo((200, 150))
    out = np.asarray(timed_load(encode(src, "WEBP", quality=90)), dtype=float)
    assert out.shape == (150, 200, 3)
    assert np.abs(out - np.asarray(src, dtype=float)).mean() < 6


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (200, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 100))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    out = np.asarray(timed_load(data), dtype=int)
    assert out.shape == (200, 100, 3)  # now portrait
    top, bottom = out[20, 50], out[180, 50]
    assert top[0] > 200 and top[2] < 60  # the left (red) half went to the top
    assert bottom[2] > 200 and bottom[0] < 60


def test_pil_input_is_normalized_too():
    rgba = Image.new("RGBA", (64, 48), (10, 20, 30, 0))
    out = load_image(rgba)
    assert out.mode == "RGB" and out.size == (64, 48) and np.asarray(out).min() == 255
    with pytest.raises(ImageTooSmallError):
        load_image(Image.new("RGB", (3, 300)))


def test_big_png_is_box_reduced_when_caller_allows():
    src = photo((1560, 1040))
    out = timed_load(encode(src, "PNG", compress_level=1), min_side=256)
    assert out.size == (780, 520)  # reduced 2x, still >= 2 * min_side


@pytest.fixture(scope="module")
def jpeg_35mp() -> bytes:
    """7216×4848 = 35 megapixels, smooth so the file stays a few MB."""
    w, h = 7216, 4848
    small = photo((w // 16, h // 16)).resize((w, h), Image.BILINEAR)
    return encode(small, "JPEG", quality=85)


def test_35_megapixel_jpeg_decodes_in_well_under_a_second(jpeg_35mp):
    load_image(jpeg_35mp, min_side=256)  # warm the decoder once
    start = time.perf_counter()
    out = load_image(jpeg_35mp, min_side=256)
    seconds = time.perf_counter() - start
    assert seconds < 0.5, f"35 MP JPEG took {seconds:.2f}s"
    assert out.mode == "RGB" and 256 <= min(out.size) < 1024
    assert out.size[0] / out.size[1] == pytest.approx(7216 / 4848, rel=0.01)
    full = Image.open(io.BytesIO(jpeg_35mp)).convert("RGB").resize(out.size, Image.BILINEAR)
    assert np.abs(np.asarray(out, dtype=float) - np.asarray(full, dtype=float)).mean() < 4  # same picture


def test_reduced_decode_matches_full_decode_after_preprocessing(jpeg_35mp):
    """Draft decoding must not change what the model sees in any way that matters."""
    from training.presets import preprocess

    fast = preprocess(load_image(jpeg_35mp, min_side=256))
    slow = preprocess(load_image(jpeg_35mp))
    assert fast.shape == slow.shape == (3, 224, 224)
    assert np.abs(fast - slow).mean() < 0.01


def test_pillows_bomb_warning_never_escapes(recwarn):
    """A header declaring more pixels than Pillow's own warning threshold (but less than its
    error): Pillow would print a raw DecompressionBombWarning; we refuse with our message."""
    side = int((1.5 * Image.MAX_IMAGE_PIXELS) ** 0.5)  # between Pillow's warning and its error
    data = png_by_hand(side, side, idat=b"")
    with pytest.warns(Image.DecompressionBombWarning):  # what a bare Image.open does
        Image.open(io.BytesIO(data))
    recwarn.clear()
    with pytest.raises(ImageTooLargeError, match=f"image too large: {side}×{side} pixels, limit 60 megapixels"):
        load_image(data)
    assert [str(w.message) for w in recwarn] == []


@pytest.mark.parametrize("make", [_truncated_jpeg, _truncated_png], ids=["jpeg", "png"])
def test_damaged_files_are_described_in_our_words(tmp_path, make):
    """Pillow's text ("image file is truncated (98 bytes not processed)") is not for users;
    it stays in the exception chain for logs."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(make())
    with pytest.raises(CorruptImageError) as info:
        load_image(path)
    assert str(info.value) == "photo.jpg is cut short (truncated) or damaged; re-save or re-send the photo."
    assert "image file is truncated" in str(info.value.__cause__)
