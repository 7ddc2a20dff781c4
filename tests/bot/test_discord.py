"""The real bot on Discord's protocol: PetBot (unmodified discord.py underneath) logs in to the local
Discord emulator, syncs its commands and answers every slash command and context menu, with
payloads that pass the emulator's validation of Discord's limits."""

from __future__ import annotations

import io

import pytest
from aiohttp import web
from PIL import Image

from tests.bot.bot_uploads import photo_bytes
from tests.discord_emulator import validate

pytestmark = pytest.mark.emulator


@pytest.fixture(autouse=True)
def no_violations(live):
    """Every request of every test obeys Discord's documented rules."""
    before = len(live.emu.violations)
    yield
    assert live.emu.violations[before:] == []


def attach(emu, label: str, seed: int = 1, name: str | None = None, **kw) -> dict:
    data = photo_bytes(label, seed)
    w, h = Image.open(io.BytesIO(data)).size
    return emu.add_attachment(name or f"{label}{seed}.png", data, "image/png", width=w, height=h, **kw)


def ask(live, name: str, options: dict | None = None, **kw):
    it = live.run(live.emu.invoke(name, options, **kw))
    return live.run(live.emu.answered(it, 60), 70)


def menu(live, name: str, message: dict, **kw):
    it = live.run(live.emu.invoke_message_menu(name, message, **kw))
    return live.run(live.emu.answered(it, 60), 70)


def judged(live, png: bytes) -> str:
    """The label the bot's own ONNX model gives the PNG it sent."""
    from export.runtime import Classifier

    return Classifier.load(live.handlers.model_path).predict(png, top_k=1)[0][0]


def test_login_syncs_every_command_with_valid_payloads(live):
    emu = live.emu
    (synced,) = emu.commands.values()  # one global sync
    assert [(c["name"], c["type"]) for c in synced] == [
        ("classify", 1), ("fool-me", 1), ("ideal", 1), ("explain", 1), ("about", 1),
        ("Classify photo", 3), ("Fool me", 3), ("Explain", 3)]
    assert validate.command_problems(synced) == []
    assert [what for _, _, what in emu.gateway_log] == ["identify"]
    assert emu.heartbeats >= 1  # discord.py heartbeats at once after HELLO, then every interval
    paths = [r.path for r in emu.requests if r.path.startswith("/api")]
    assert paths[:2] == ["/api/v10/users/@me", "/api/v10/oauth2/applications/@me"]


def test_classify_defers_within_3s_then_answers_publicly(live):
    it = ask(live, "classify", {"image": attach(live.emu, "dog", 3)})
    assert it.response_type == 5 and it.acked_at - it.dispatched_at < validate.ACK_WINDOW_S
    (answer,) = it.messages
    assert answer.kind == "followup" and not answer.ephemeral
    assert answer.embeds[0]["title"] == "A dog"


def test_fool_me_sends_a_png_the_onnx_model_calls_a_cat(live):
    photo = attach(live.emu, "dog", 5, "rex.png")
    it = ask(live, "fool-me", {"image": photo, "target": "cat"})
    answer = it.answer
    assert list(answer.files) == ["rex-as-cat.png"], answer.content
    assert answer.embeds[0]["image"]["url"] == "attachment://rex-as-cat.png"
    png = answer.files["rex-as-cat.png"]
    assert Image.open(io.BytesIO(png)).size == (photo["width"], photo["height"])
    assert judged(live, png) == "cat"


def test_ideal_and_explain_send_their_pictures(live):
    it = ask(live, "ideal", {"label": "dog"})
    assert list(it.answer.files) == ["ideal-dog-seed0.png"] and it.answer.embeds[0]["title"] == "The ideal dog"
    it = ask(live, "explain", {"image": attach(live.emu, "cat", 9, "tom.png")})
    assert list(it.answer.files) == ["tom-gradcam.png"] and it.answer.embeds[0]["title"] == "Why cat?"


def test_about_answers_at_once_without_deferring(live):
    it = ask(live, "about")
    assert it.response_type == 4 and not it.answer.ephemeral
    assert "cat, dog" in it.answer.embeds[0]["description"]


def test_classify_photo_menu_uses_the_first_image_of_a_posted_message(live):
    emu = live.emu
    notes = emu.add_attachment("notes.txt", b"not a photo", "text/plain")
    msg = emu.posted([notes, attach(emu, "cat", 4), attach(emu, "dog", 4)], content="look at my cat")
    it = menu(live, "Classify photo", msg)
    assert it.response_type == 5 and it.answer.embeds[0]["title"] == "A cat"
    assert [f.requests for f in list(emu.cdn.values())[-3:]] == [0, 1, 0]  # only the first image


def test_fool_me_menu_makes_the_other_label(live):
    msg = live.emu.posted([attach(live.emu, "dog", 5, "buddy.png")])
    it = menu(live, "Fool me", msg)
    assert list(it.answer.files) == ["buddy-as-cat.png"], it.answer.content
    assert judged(live, it.answer.files["buddy-as-cat.png"]) == "cat"
    assert "more than 2/255" in it.answer.embeds[0]["description"]  # normal strength


def test_explain_menu_sends_an_overlay(live):
    msg = live.emu.posted([attach(live.emu, "cat", 7, "tom.png")])
    it = menu(live, "Explain", msg)
    assert list(it.answer.files) == ["tom-gradcam.png"]


@pytest.mark.parametrize("name, answer", [
    ("Classify photo", lambda it: it.answer.embeds[0]["title"] == "A cat"),
    ("Fool me", lambda it: list(it.answer.files) == ["tom-as-dog.png"]),
    ("Explain", lambda it: list(it.answer.files) == ["tom-gradcam.png"]),
])
def test_menus_use_the_photo_inside_a_forwarded_message(live, name, answer):
    """A forward carries no attachments of its own: the photo is in message_snapshots."""
    emu = live.emu
    photo = attach(emu, "cat", 6, "tom.png")
    forward = emu.forwarded(emu.posted([photo], content="my cat"))
    assert forward["attachments"] == [] and forward["message_reference"]["type"] == 1
    assert forward["message_snapshots"][0]["message"]["attachments"] == [photo]
    it = menu(live, name, forward)
    assert it.response_type == 5 and not it.answer.ephemeral and answer(it), (it.answer.content, it.answer.embeds)
    assert list(emu.cdn.values())[-1].requests == 1  # the forwarded photo, fetched once


def test_a_forwarded_message_without_a_photo_gets_the_no_image_answer(live):
    emu = live.emu
    forward = emu.forwarded(emu.posted([emu.add_attachment("notes.txt", b"not a photo", "text/plain")]))
    it = menu(live, "Classify photo", forward)
    assert it.answer.ephemeral and "no image attached" in it.answer.content


@pytest.fixture
def elsewhere(live):
    """Another web server on 127.0.0.1 (a stand-in for any internal host); counts its hits."""
    hits = []

    async def handler(request):
        hits.append(request.path)
        return web.Response(body=photo_bytes("dog", 1), content_type="image/png")

    async def start():
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    runner, port = live.run(start())
    yield f"http://127.0.0.1:{port}", hits
    live.run(runner.cleanup())


@pytest.mark.parametrize("name", ["Classify photo", "Fool me", "Explain"])
def test_menus_on_a_message_without_an_image_answer_privately_and_fetch_nothing(live, elsewhere, name):
    url, hits = elsewhere
    msg = live.emu.posted([live.emu.add_attachment("notes.pdf", b"%PDF-1.4", "application/pdf")],
                          content=f"my dog: {url}/dog.png", embeds=[{"type": "image", "url": f"{url}/dog.png",
                                                                     "image": {"url": f"{url}/dog.png"}}])
    it = menu(live, name, msg)
    assert it.response_type == 4 and it.answer.ephemeral  # flag 64, no "thinking…" first
    assert "no image attached" in it.answer.content and f"Apps > {name}" in it.answer.content
    assert hits == []


def test_an_attachment_url_off_discords_cdn_is_never_fetched(live, elsewhere):
    """A forged payload (or a bug) naming an internal URL as an attachment: refused, no request."""
    url, hits = elsewhere
    fake = {"id": "1", "filename": "dog.png", "size": 2000, "url": f"{url}/internal/dog.png",
            "proxy_url": f"{url}/internal/dog.png", "content_type": "image/png", "width": 160, "height": 128}
    it = ask(live, "classify", {"image": fake})
    assert it.answer.ephemeral and "not a file attached on Discord" in it.answer.content
    assert hits == []


def test_a_broken_upload_is_answered_privately_after_the_public_defer(live):
    bad = live.emu.add_attachment("notes.png", b"these are my shopping notes\n" * 20, "image/png")
    it = ask(live, "classify", {"image": bad})
    live.run(live.emu.wait_for(lambda: it.original.deleted, 10))  # the placeholder goes right after
    (answer,) = it.messages  # the public placeholder is gone
    assert answer.ephemeral and "not an image" in answer.content


def console(capsys, monkeypatch, live, command: str, message: dict, tmp_path, *extra: str) -> dict:
    """``python -m bot.console COMMAND --message-json FILE`` (in this process), with the
    emulator's CDN allowed as ``python -m bot`` allows it under PETLENS_DISCORD_URL."""
    import json

    from bot import console as cli

    path = tmp_path / "message.json"
    path.write_text(json.dumps(message))
    monkeypatch.setenv("PETLENS_DISCORD_URL", live.emu.base_url)
    s = live.handlers.settings
    args = cli.get_args_parser().parse_args([
        command, "--message-json", str(path), "--model", str(s.model), "--checkpoint", str(s.checkpoint),
        "--fool-steps", str(s.fool_steps), "--out", str(tmp_path), *extra])
    assert cli.main(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_console_fool_me_on_a_posted_message(capsys, monkeypatch, live, tmp_path):
    msg = live.emu.posted([attach(live.emu, "dog", 5, "rex.png")])
    out = console(capsys, monkeypatch, live, "fool-me", msg, tmp_path)
    assert out["ok"], out["text"]
    (png,) = out["files"]
    assert png.endswith("rex-as-cat.png") and judged(live, open(png, "rb").read()) == "cat"


def test_console_refuses_messages_without_a_cdn_image(capsys, monkeypatch, live, tmp_path, elsewhere):
    url, hits = elsewhere
    out = console(capsys, monkeypatch, live, "classify", live.emu.posted(content=f"{url}/dog.png"), tmp_path)
    assert not out["ok"] and "no image attached" in out["text"] and "Classify photo" in out["text"]
    forged = live.emu.posted([{"id": "1", "filename": "dog.png", "size": 100, "url": f"{url}/dog.png",
                               "content_type": "image/png"}])
    out = console(capsys, monkeypatch, live, "explain", forged, tmp_path)
    assert not out["ok"] and "not a file attached on Discord" in out["text"]
    assert hits == []
