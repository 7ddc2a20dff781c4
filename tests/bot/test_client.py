"""The command callbacks through fake Discord objects (tests/bot/fakes.py), for what is cheaper
or only possible without a connection: many hostile files, metadata refusals, the heavy cap
and cooldown, the error handler, autocomplete for 25+ labels. The commands on Discord's real
protocol are tested through the emulator (test_discord*.py)."""

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


def test_hostile_files_are_answered_cleanly(bot, hostile):
    for kind, (path, data, expect) in hostile.items():
        att = attach(data, path.name)
        it = run(bot, "classify", image=att)
        assert it.sent, kind
        answer = it.answer
        if expect in ("cat", "usable"):
            assert answer.embed is not None and not answer.ephemeral, (kind, it.text)
            if expect == "cat":
                assert answer.embed.title == "A cat", (kind, it.text)
        else:
            assert answer.embed is None and answer.ephemeral, kind
            assert expect.lower() in it.text.lower(), (kind, it.text)
            assert "Traceback" not in it.text and "Error" not in it.text, (kind, it.text)
        # Refusals from metadata alone never download the file nor show "thinking...".
        if kind in ("empty", "svg", "decompression-bomb"):
            assert att.reads == 0 and it.deferred is None and it.answer.kind == "send_message", kind


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


def test_fool_me_refuses_bad_options_without_deferring(bot):
    it = run(bot, "fool-me", image=attach(photo_bytes("dog"), "rex.png"), target="parrot")
    assert it.deferred is None and it.answer.ephemeral and "cat, dog" in it.text
    it = run(bot, "fool-me", image=attach(photo_bytes("dog"), "rex.png"), target="dog")
    assert it.answer.ephemeral and "already sees **dog**" in it.text


def test_ideal_sends_an_image_the_onnx_model_judges(bot):
    it = run(bot, "ideal", label="dog")
    assert it.answer.embed is not None, it.text
    (name, data), = it.answer.files
    assert name == "ideal-dog-seed0.png" and Image.open(io.BytesIO(data)).mode == "RGB"
    assert "sure it is a dog" in it.text
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
