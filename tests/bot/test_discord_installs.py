"""Where the commands work: installed to a server or to a user's account, used in a server, in
the bot's DM or in other DMs. Every command declares ``integration_types`` [0, 1] and
``contexts`` [0, 1, 2]; the emulator checks those fields at registration and offers a command
only where it was registered, and the DM and user-install payloads (``user`` instead of
``member``, no ``guild_id``, ``authorizing_integration_owners``) go through the real client."""

from __future__ import annotations

import io

import discord
import pytest
from PIL import Image

from tests.bot.bot_uploads import photo_bytes
from tests.discord_emulator import validate
from tests.discord_emulator.payloads import APPLICATION_ID

pytestmark = pytest.mark.emulator

NAMES = ["classify", "fool-me", "ideal", "explain", "about", "Classify photo", "Fool me", "Explain"]


@pytest.fixture(autouse=True)
def no_violations(live):
    before = len(live.emu.violations)
    yield
    assert live.emu.violations[before:] == []


def attach(emu, label: str, seed: int = 1, name: str | None = None) -> dict:
    data = photo_bytes(label, seed)
    w, h = Image.open(io.BytesIO(data)).size
    return emu.add_attachment(name or f"{label}{seed}.png", data, "image/png", width=w, height=h)


def dispatched(emu, it) -> dict:
    """The INTERACTION_CREATE payload the bot received for ``it``."""
    return next(e["d"] for s in emu.sessions.values() for e in s.events
                if e["t"] == "INTERACTION_CREATE" and e["d"]["id"] == str(it.id))


def test_every_command_is_declared_for_both_installs_and_every_context(live):
    (synced,) = live.emu.commands.values()
    assert [c["name"] for c in synced] == NAMES
    for cmd in synced:
        assert cmd["integration_types"] == [validate.GUILD_INSTALL, validate.USER_INSTALL], cmd["name"]
        assert cmd["contexts"] == [validate.GUILD, validate.BOT_DM, validate.PRIVATE_CHANNEL], cmd["name"]


def test_classify_in_the_bots_dm(live):
    emu = live.emu
    it = live.run(emu.invoke("classify", {"image": attach(emu, "cat", 4)}, context=validate.BOT_DM))
    live.run(emu.answered(it, 30), 40)
    payload = dispatched(emu, it)
    assert payload["context"] == 1 and "member" not in payload and "guild_id" not in payload
    assert payload["user"]["id"] and payload["authorizing_integration_owners"] == {"0": "0"}
    assert it.response_type == 5 and not it.answer.ephemeral and it.answer.embeds[0]["title"] == "A cat"


def test_user_installed_menus_in_a_dm_with_a_friend(live):
    """Context 2 (PRIVATE_CHANNEL) exists only for a user install: the message and its photo
    come in the interaction's resolved data, the photo from the CDN, the answer over the token."""
    emu = live.emu
    user = 777001
    message = emu.posted([attach(emu, "dog", 5, "rex.png")], author_id=user + 1)
    it = live.run(emu.invoke_message_menu("Fool me", message, user_id=user, context=validate.PRIVATE_CHANNEL))
    live.run(emu.answered(it, 60), 70)
    payload = dispatched(emu, it)
    assert payload["context"] == 2 and payload["authorizing_integration_owners"] == {"1": str(user)}
    assert "member" not in payload and "guild_id" not in payload and payload["channel"]["type"] == 1
    assert list(it.answer.files) == ["rex-as-cat.png"] and not it.answer.ephemeral
    forward = emu.forwarded(emu.posted([attach(emu, "cat", 4)]), author_id=user + 1)
    it = live.run(emu.invoke_message_menu("Classify photo", forward, user_id=user, context=validate.PRIVATE_CHANNEL))
    assert live.run(emu.answered(it, 30), 40).answer.embeds[0]["title"] == "A cat"


def test_user_installed_in_a_server_without_the_bot(live):
    emu = live.emu
    it = live.run(emu.invoke("classify", {"image": attach(emu, "dog", 3)}, user_id=777002,
                             install=validate.USER_INSTALL))
    live.run(emu.answered(it, 30), 40)
    payload = dispatched(emu, it)
    assert payload["context"] == 0 and "guild_id" in payload and payload["authorizing_integration_owners"] == {
        "1": "777002"}
    assert it.answer.embeds[0]["title"] == "A dog"


@pytest.mark.parametrize("field, value, words", [
    ("integration_types", [0, 2], "integration_types value 2"),
    ("contexts", [0, 3], "contexts value 3"),
    ("contexts", [], "non-empty list"),
    ("integration_types", [1, 1], "twice"),
])
def test_registration_with_bad_install_types_or_contexts_is_refused(live, field, value, words):
    emu = live.emu
    before, commands = len(emu.violations), dict(emu.commands)
    payload = [{"name": "probe", "description": "a probe", "type": 1, field: value}]
    with pytest.raises(discord.HTTPException) as err:
        live.run(live.bot.http.bulk_upsert_global_commands(APPLICATION_ID, payload))
    assert err.value.status == 400 and words in err.value.text
    found = emu.violations[before:]
    assert len(found) == 1 and words in found[0]
    del emu.violations[before:]  # expected: this test sent them on purpose
    assert emu.commands == commands  # nothing was registered


def test_a_command_is_offered_only_where_it_was_registered(live):
    """Registered for servers only (as a bot without allowed_installs / allowed_contexts would
    be after narrowing), a command cannot be invoked in a DM: the emulator says why."""
    emu = live.emu
    guild_only = [{"name": "about", "description": "about", "type": 1,
                   "integration_types": [validate.GUILD_INSTALL], "contexts": [validate.GUILD]}]
    live.run(live.bot.http.bulk_upsert_global_commands(APPLICATION_ID, guild_only))
    try:
        for context, install, words in ((validate.BOT_DM, None, "contexts is [0]"),
                                        (validate.PRIVATE_CHANNEL, None, "integration_types is [0]"),
                                        (validate.GUILD, validate.USER_INSTALL, "integration_types is [0]")):
            with pytest.raises(LookupError, match=words.replace("[", r"\[").replace("]", r"\]")):
                emu.command("about", context=context, install=install)
        assert emu.command("about")[0]["contexts"] == [0]
    finally:
        live.run(live.bot.tree.sync())  # put the bot's own commands back
    assert [c["name"] for c in emu.commands[None]] == NAMES
