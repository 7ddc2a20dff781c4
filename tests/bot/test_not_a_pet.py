"""/classify on a model with an out-of-distribution score (``tiny_ood_onnx``): a photo unlike
every training photo gets a plain "this doesn't look like a cat or a dog" with the closest
guess; a pet gets the usual answer. Through the fake Discord objects and the console."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from tests.bot.bot_uploads import _root, photo_bytes, png
from tests.bot.fakes import FakeAttachment, FakeInteraction, offline_bot

NOT_A_PET = "This doesn't look like a cat or a dog — closest guess:"
SHIFTED = {"stripes": _root.shifted_photo("stripes", 5), "noise": _root.shifted_photo("noise", 4)}


@pytest.fixture
def ood_bot(make_handlers, tiny_ood_onnx, tiny_ood_checkpoint):
    handlers = make_handlers(model=tiny_ood_onnx, checkpoint=tiny_ood_checkpoint)
    return offline_bot(handlers)


def classify(bot, data: bytes, name: str) -> FakeInteraction:
    it = FakeInteraction(command="classify")
    att = FakeAttachment.from_bytes(data, name, "image/png")
    asyncio.run(bot.tree.get_command("classify").callback(it, image=att))
    return it


@pytest.mark.parametrize("kind", SHIFTED)
def test_shifted_images_are_called_not_a_pet_with_the_closest_guess(ood_bot, kind):
    it = classify(ood_bot, png(SHIFTED[kind]), f"{kind}.png")
    embed = it.answer.embed
    assert embed is not None and not it.answer.ephemeral  # an answer, not an error
    assert embed.title == "Not a cat or a dog?"
    first, *bars = embed.description.splitlines()
    guess = ood_bot.handlers.service.classifier.predict(png(SHIFTED[kind]), top_k=1)[0]
    assert first.startswith(f"**{NOT_A_PET} {guess[0]} {guess[1]:.0%}.** The network only knows cat and dog")
    assert f"**{guess[0]}**" in bars[0]  # the top-k bars are still there


@pytest.mark.parametrize("label", ["cat", "dog"])
def test_pets_get_the_usual_answer(ood_bot, label):
    it = classify(ood_bot, photo_bytes(label, seed=2), f"{label}.png")
    assert it.answer.embed.title == f"A {label}"
    assert "doesn't look like" not in it.text


def test_console_says_it_too(tmp_path, tiny_ood_onnx, tiny_ood_checkpoint):
    path = tmp_path / "stripes.png"
    SHIFTED["stripes"].save(path)
    proc = subprocess.run([sys.executable, "-m", "bot.console", "classify", "--image", str(path),
                           "--model", str(tiny_ood_onnx), "--checkpoint", str(tiny_ood_checkpoint)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=240)
    reply = json.loads(proc.stdout)
    assert proc.returncode == 0 and reply["ok"]
    title, first, *_ = reply["text"].splitlines()
    assert title == "Not a cat or a dog?" and first.startswith(f"**{NOT_A_PET}")


def test_a_photo_between_the_thresholds_gets_an_answer_with_a_caveat(make_handlers, tiny_ood_onnx,
                                                                       tiny_ood_checkpoint, tmp_path):
    """The middle answer (training.verdict): the same model calibrated so that this cat photo
    scores between its two thresholds, as a pet of a breed the training photos barely hold does."""
    from export.runtime import Classifier
    from tests.conftest import with_ood_thresholds

    data = photo_bytes("cat", seed=2)
    score = Classifier.load(tiny_ood_onnx).assess(data).score
    model = with_ood_thresholds(tiny_ood_onnx, tmp_path / "unsure.onnx", score / 2, score * 2)
    bot = offline_bot(make_handlers(model=model, checkpoint=tiny_ood_checkpoint))
    it = classify(bot, data, "cat.png")
    label, prob = Classifier.load(model).predict(data, top_k=1)[0]
    assert not it.answer.ephemeral and it.answer.embed.title == f"Probably a {label}"
    first, *bars = it.answer.embed.description.splitlines()
    assert first == (f"**Probably a {label} ({prob:.0%}), but this photo is unlike the ones I learned from:** maybe a "
                     "breed or a setting it has seen few of, or maybe not a cat or a dog at all.")
    assert f"**{label}**" in bars[0] and "doesn't look like" not in it.text
