"""The three "is it a pet?" answers as Discord shows them: the real bot (discord.py) on the local
Discord emulator, over the tiny model with OOD statistics, calibrated so that one photo falls in
each band (training.verdict). Every payload must pass the emulator's check of Discord's limits."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from PIL import Image

from tests.bot.bot_uploads import photo_bytes
from tests.conftest import with_ood_thresholds

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def photo() -> bytes:
    return photo_bytes("dog", 3)


@pytest.fixture(scope="module", params=["pet", "unsure", "not_pet"])
def band(request, bot_settings, tiny_ood_onnx, tiny_ood_checkpoint, tmp_path_factory, photo):
    """(verdict, a bot logged in to a fresh emulator whose model puts ``photo`` in that band)."""
    from bot.handlers import Handlers
    from export.runtime import Classifier
    from tests.discord_emulator.harness import Harness

    score = Classifier.load(tiny_ood_onnx).assess(photo).score
    cuts = {"pet": (2 * score, 4 * score), "unsure": (score / 2, 2 * score), "not_pet": (score / 4, score / 2)}
    model = with_ood_thresholds(tiny_ood_onnx, tmp_path_factory.mktemp("band") / f"{request.param}.onnx",
                                *cuts[request.param])
    handlers = Handlers(replace(bot_settings, model=model, checkpoint=tiny_ood_checkpoint))
    try:
        with Harness(handlers, heartbeat_ms=1000, download_timeout_s=2.0) as live:
            yield request.param, live
    finally:
        handlers.close()


def test_classify_answers_each_band_in_words_discord_accepts(band, photo):
    verdict, live = band
    emu = live.emu
    w, h = Image.open(io.BytesIO(photo)).size
    att = emu.add_attachment("dog3.png", photo, "image/png", width=w, height=h)
    it = live.run(emu.answered(live.run(emu.invoke("classify", {"image": att})), 60), 70)
    (answer,) = it.messages
    assert not answer.ephemeral and emu.violations == []
    title, text = answer.embeds[0]["title"], answer.embeds[0]["description"]
    label = live.handlers.service.classifier.predict(photo, top_k=1)[0][0]
    if verdict == "pet":
        assert title == f"A {label}" and "unlike" not in text
    elif verdict == "unsure":
        assert title == f"Probably a {label}"
        assert text.startswith(f"**Probably a {label} (") and "unlike the ones I learned from" in text
    else:
        assert title == "Not a cat or a dog?"
        assert text.startswith(f"**This doesn't look like a cat or a dog — closest guess: {label}")
    assert f"**{label}**" in text  # the bars, top label first, in every band
