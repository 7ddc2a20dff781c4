"""The slash commands end to end through fake Discord objects: the real command callbacks,
handlers, ONNX Classifier and torch code; only the Discord connection is faked."""

from __future__ import annotations

import asyncio
import io
import mimetypes

import pytest
from PIL import Image

from bot.client import PetBot
from tests.bot.bot_uploads import LABELS, photo_bytes
from tests.bot.fakes import FakeAttachment, FakeInteraction, offline_bot


@pytest.fixture
def bot(make_handlers):
    handlers = make_handlers()
    return offline_bot(handlers)


def run(bot, command: str, interaction: FakeInteraction | None = None, **options) -> FakeInteraction:
    """Invoke ``/command`` the way discord.py does once it has parsed the options."""
    interaction = interaction or FakeInteraction(command=command)
    asyncio.run(bot.tree.get_command(command).callback(interaction, **options))
    return interaction


def attach(data: bytes, name: str) -> FakeAttachment:
    # Discord reports a content type from the name and width/height for images it can probe.
    return FakeAttachment.from_bytes(data, name, mimetypes.guess_type(name)[0])


def test_commands_and_their_options_are_registered(bot):
    import discord

    names = {c.name for c in bot.tree.get_commands(type=discord.AppCommandType.chat_input)}
    assert names == {"classify", "fool-me", "ideal", "explain", "about"}
    menus = {c.name for c in bot.tree.get_commands(type=discord.AppCommandType.message)}
    assert menus == {"Classify photo", "Fool me", "Explain"}
    fool = bot.tree.get_command("fool-me")
    params = {p.name: p for p in fool.parameters}
    assert [c.value for c in params["target"].choices] == LABELS  # choices come from the model
    assert not params["target"].required and params["image"].required
    assert [c.value for c in bot.tree.get_command("ideal").parameters[0].choices] == LABELS
    for command in bot.tree.get_commands(type=discord.AppCommandType.chat_input):
        assert 0 < len(command.description) <= 100  # Discord's limit


@pytest.mark.parametrize("label", LABELS)
def test_classify_defers_then_answers_with_a_top3_embed(bot, label):
    it = run(bot, "classify", image=attach(photo_bytes(label, seed=11), f"{label}.png"))
    assert it.deferred is not None and it.deferred.thinking and not it.deferred.ephemeral
    assert len(it.sent) == 1 and it.answer.kind == "followup" and not it.answer.ephemeral
    embed = it.answer.embed
    assert embed.title == f"I see a {label}"
    lines = embed.description.splitlines()
    assert len(lines) == min(3, len(LABELS)) and f"**{label}**" in lines[0]
    probs = [float(line.rsplit(" ", 1)[1].rstrip("%")) for line in lines]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(100, abs=0.2)


def test_hostile_files_are_answered_cleanly(bot, hostile):
    for kind, (path, data, expect) in hostile.items():
        att = attach(data, path.name)
        it = run(bot, "classify", image=att)
        assert it.sent, kind
        answer = it.answer
        if expect in ("cat", "usable"):
            assert answer.embed is not None and not answer.ephemeral, (kind, it.text)
            if expect == "cat":
                assert answer.embed.title == "I see a cat", (kind, it.text)
        else:
            assert answer.embed is None and answer.ephemeral, kind
            assert expect.lower() in it.text.lower(), (kind, it.text)
            assert "Traceback" not in it.text and "Error" not in it.text, (kind, it.text)
        # Refusals from metadata alone never download the file nor show "thinking...".
        if kind in ("empty", "svg", "decompression-bomb"):
            assert att.reads == 0 and it.deferred is None and it.answer.kind == "send_message", kind


def test_late_errors_stay_private_after_a_public_defer(bot, hostile):
    """A broken file found only after downloading: the public placeholder is settled and
    removed, the details go to the user alone."""
    path, data, _ = hostile["text-named-png"]
    it = run(bot, "classify", image=attach(data, path.name))
    assert it.deferred is not None and not it.deferred.ephemeral
    kinds = [s.kind for s in it.sent]
    assert kinds == ["edit_original", "followup"] and it.answer.ephemeral and it.deleted_original
    assert "not an image" in it.answer.content


def test_oversized_attachments_are_refused_before_download(make_handlers):
    from bot.config import Limits

    h = make_handlers(limits=Limits(max_bytes=1000, max_pixels=10_000))
    bot = offline_bot(h)
    big = FakeAttachment(b"x" * 10, "big.jpg", "image/jpeg", size=5_000_000)
    wide = FakeAttachment(b"x" * 10, "wide.png", "image/png", width=200, height=100, size=500)
    doc = FakeAttachment(b"%PDF-1.4", "cv.pdf", "application/pdf")
    for att, words in ((big, "limit is"), (wide, "200×100"), (doc, "not an image")):
        it = run(bot, "classify", image=att)
        assert att.reads == 0 and it.answer.ephemeral and words in it.text, it.text


def test_fool_me_output_is_classified_as_the_target_by_onnx(bot, make_handlers):
    from export.runtime import Classifier

    it = run(bot, "fool-me", image=attach(photo_bytes("dog", seed=5), "rex.png"), target="cat")
    assert it.deferred is not None
    assert it.answer.embed is not None, it.text
    (name, data), = it.answer.files
    assert name == "rex-as-cat.png"
    out = Image.open(io.BytesIO(data))
    assert out.format == "PNG" and out.size == Image.open(io.BytesIO(photo_bytes("dog", seed=5))).size
    clf = Classifier.load(bot.handlers.model_path)
    assert clf.predict(data, top_k=1)[0][0] == "cat"
    assert "Before: **dog**" in it.text and "now says **cat**" in it.text


def test_fool_me_refuses_bad_options_without_deferring(bot):
    it = run(bot, "fool-me", image=attach(photo_bytes("dog"), "rex.png"), target="parrot")
    assert it.deferred is None and it.answer.ephemeral and "cat, dog" in it.text
    it = run(bot, "fool-me", image=attach(photo_bytes("dog"), "rex.png"), target="dog")
    assert it.answer.ephemeral and "already sees a dog" in it.text


def test_explain_sends_an_overlay_and_the_top_label(bot):
    photo = photo_bytes("cat", seed=9)
    it = run(bot, "explain", image=attach(photo, "tom.png"))
    assert it.answer.embed is not None, it.text
    (name, data), = it.answer.files
    assert name == "tom-gradcam.png"
    assert Image.open(io.BytesIO(data)).size == Image.open(io.BytesIO(photo)).size
    assert it.answer.embed.title == "Why cat?"


def test_ideal_sends_an_image_the_onnx_model_judges(bot):
    it = run(bot, "ideal", label="dog")
    assert it.answer.embed is not None, it.text
    (name, data), = it.answer.files
    assert name == "ideal-dog.png" and Image.open(io.BytesIO(data)).mode == "RGB"
    assert "judges the result" in it.text
    # The picture is deterministic: a repeat is served from memory, without a heavy slot.
    admitted = bot.handlers.heavy.admitted
    again = run(bot, "ideal", label="Dog")
    assert again.answer.files == it.answer.files and bot.handlers.heavy.admitted == admitted


def test_heavy_commands_are_capped_and_cooled_down(make_handlers):
    h = make_handlers(max_heavy=1, cooldown_s=60)
    bot = offline_bot(h)
    photo = photo_bytes("dog", seed=5)

    async def burst():
        its = [FakeInteraction(user_id=u, command="fool-me") for u in (1, 2, 3)]
        cb = bot.tree.get_command("fool-me").callback
        await asyncio.gather(*(cb(it, attach(photo, "a.png")) for it in its))
        again = FakeInteraction(user_id=1, command="fool-me")
        await cb(again, attach(photo, "a.png"))
        return its, again

    its, again = asyncio.run(burst())
    served = [it for it in its if it.answer.embed is not None]
    busy = [it for it in its if "busy" in it.text]
    assert len(served) == 1 and len(busy) == 2 and h.heavy.peak == 1
    assert all(it.answer.ephemeral and it.deferred is None and "try again in" in it.text for it in busy)
    assert "again in" in again.text and again.answer.ephemeral  # user 1 is cooling down


def test_about_names_the_model_and_labels(bot):
    it = run(bot, "about")
    assert it.answer.kind == "send_message" and not it.answer.ephemeral
    assert "mobilenet_v3_small" in it.text and "cat, dog" in it.text


def test_error_handler_answers_privately_without_a_traceback(bot):
    from discord import app_commands

    it = FakeInteraction(command="classify")
    asyncio.run(bot.tree.on_error(it, app_commands.AppCommandError("boom")))
    assert it.answer.ephemeral and "failed on my side" in it.text and "boom" not in it.text


def test_models_with_more_than_25_labels_get_autocomplete():
    """Discord allows 25 fixed choices; an Oxford-IIIT Pet model (37 breeds) gets
    autocomplete. Only the label list of the handlers is used to build the commands."""
    from types import SimpleNamespace

    from bot.config import Settings

    labels = [f"breed_{i:02d}" for i in range(37)]
    bot = PetBot(SimpleNamespace(labels=labels), Settings())
    fool = bot.tree.get_command("fool-me")
    option = next(o for o in fool.to_dict(bot.tree)["options"] if o["name"] == "target")
    assert option.get("autocomplete") is True and not option.get("choices")
    complete = fool._params["target"].autocomplete
    found = asyncio.run(complete(FakeInteraction(), "_3"))
    assert [c.value for c in found] == [f"breed_3{i}" for i in range(7)]
    assert len(asyncio.run(complete(FakeInteraction(), ""))) == 25
