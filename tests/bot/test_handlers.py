"""The medium-independent handlers: upload checks, pools, and errors turned into replies."""

from __future__ import annotations

import asyncio
import logging
import shutil

import pytest

from bot.config import BOT_LIMITS
from bot.handlers import ConfigError, Handlers, Upload, top_k_text
from service.photos import check_metadata
from tests.bot.bot_uploads import photo_bytes


def upload(name="a.png", ctype="image/png", size=1000, width=None, height=None) -> Upload:
    async def read():
        raise AssertionError("must not download")
    return Upload(name, ctype, size, width, height, read)


@pytest.mark.parametrize("up, words", [
    (upload(ctype="image/svg+xml"), "SVG"),
    (upload(ctype="text/plain"), "not an image (text/plain)"),
    (upload(ctype="video/mp4"), "not an image"),
    (upload(size=0), "empty"),
    (upload(size=11 * 1024 * 1024), "11 MB; the limit is 10 MB"),
    (upload(width=9000, height=9000), "9000×9000"),
])
def test_check_upload_refuses_from_metadata(up, words):
    assert words in check_metadata(up.filename, up.content_type, up.size, up.width, up.height, BOT_LIMITS)


@pytest.mark.parametrize("up", [upload(), upload(ctype=None), upload(ctype="image/jpeg; charset=binary"),
                                upload(width=6000, height=4000)])
def test_check_upload_lets_plausible_photos_through(up):
    assert check_metadata(up.filename, up.content_type, up.size, up.width, up.height, BOT_LIMITS) is None


def test_top_k_text_is_sorted_bars():
    text = top_k_text([("cat", 0.934), ("dog", 0.05), ("fox", 0.016)])
    assert text.splitlines() == ["▰▰▰▰▰▰▰▰▰▱ **cat** 93.4%", "▱▱▱▱▱▱▱▱▱▱ dog 5.0%", "▱▱▱▱▱▱▱▱▱▱ fox 1.6%"]


def test_from_path_guesses_the_content_type(tmp_path):
    path = tmp_path / "x.jpeg"
    path.write_bytes(b"abc")
    up = Upload.from_path(path)
    assert (up.content_type, up.size, up.width) == ("image/jpeg", 3, None)
    assert asyncio.run(up.read()) == b"abc"


def test_process_pool_serves_the_same_answers(make_handlers):
    """--pool process: the jobs and their results cross process boundaries (pickling)."""
    h = make_handlers(pool="process", workers=1, max_heavy=1, checkpoint=None)
    reply = asyncio.run(h.classify(Upload("c.png", "image/png", 10, None, None, _bytes(photo_bytes("cat", 2)))))
    assert reply.ok and reply.title == "A cat"
    bad = asyncio.run(h.classify(Upload("c.png", "image/png", 10, None, None, _bytes(b"not a png"))))
    assert not bad.ok and "not an image" in bad.text  # ImageError crosses back intact


def _bytes(data: bytes):
    async def read():
        return data
    return read


def test_without_checkpoint_heavy_commands_say_why(make_handlers):
    h = make_handlers(checkpoint=None)
    reply = asyncio.run(h.fool_me(Upload("c.png", "image/png", 10, None, None, _bytes(photo_bytes("cat", 2)))))
    assert not reply.ok and reply.ephemeral and "without a torch checkpoint" in reply.text
    assert "off" in h.about().text


def test_unexpected_failures_become_a_reference_not_a_traceback(make_handlers, tiny_checkpoint, tmp_path, caplog):
    """The checkpoint vanishes after start-up: the user gets an apology with a reference,
    the operator's log gets the traceback with the same reference; once the file is back,
    the (rebuilt) worker pool serves again."""
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    h = make_handlers(checkpoint=ckpt)
    ckpt.unlink()
    with caplog.at_level(logging.ERROR, logger="petlens.bot"):
        reply = asyncio.run(h.explain(Upload("c.png", "image/png", 10, None, None, _bytes(photo_bytes("cat", 2)))))
    assert not reply.ok and reply.ephemeral and "reference" in reply.text
    ref = reply.text.split("reference ")[1][:8]
    assert "Traceback" not in reply.text and ref in caplog.text and "Traceback" in caplog.text
    shutil.copy(tiny_checkpoint, ckpt)
    reply = asyncio.run(h.explain(Upload("c.png", "image/png", 10, None, None, _bytes(photo_bytes("cat", 2)))))
    assert reply.ok, reply.text


def test_a_failed_download_asks_to_send_again(make_handlers):
    async def read():
        raise ConnectionResetError("peer went away")

    reply = asyncio.run(make_handlers().classify(Upload("c.png", "image/png", 10, None, None, read)))
    assert not reply.ok and "could not download c.png" in reply.text and "peer" not in reply.text


def test_mismatched_checkpoint_is_a_config_error(bot_settings, tmp_path):
    import torch

    from training import build_model, save_checkpoint

    torch.manual_seed(0)
    other = save_checkpoint(tmp_path / "birds.pt", build_model("mobilenet_v3_small", 2), ["owl", "crow"])
    with pytest.raises(ConfigError, match="owl"):
        Handlers(bot_settings.__class__(**{**bot_settings.__dict__, "checkpoint": other}))
