"""Stand-ins for the few Discord objects a slash-command callback touches.

They let the tests and :mod:`benchmarks.bot_load` drive the real command callbacks of
:class:`bot.client.PetBot` — real handlers, real models — without a Discord connection. They
record every call with a timestamp and enforce the rules Discord enforces (one initial
response per interaction, followups only after it), so a callback that breaks them fails.
"""

from __future__ import annotations

import io
import itertools
import struct
import time
import weakref
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from PIL import Image

_ids = itertools.count(1)
_by_url: weakref.WeakValueDictionary[str, FakeAttachment] = weakref.WeakValueDictionary()


class FakeAttachment:
    """``discord.Attachment``'s fields plus ``read()``; width/height are probed from the
    bytes the way Discord does for images it understands (``None`` otherwise)."""

    def __init__(self, data: bytes, filename: str, content_type: str | None = None,
                 width: int | None = None, height: int | None = None, size: int | None = None):
        self.data = data
        self.filename = filename
        self.content_type = content_type
        self.size = len(data) if size is None else size
        self.width, self.height = width, height
        self.reads = 0
        self.url = f"https://cdn.discordapp.com/attachments/1/{next(_ids)}/{filename}"
        _by_url[self.url] = self

    @classmethod
    def from_bytes(cls, data: bytes, filename: str, content_type: str | None = None) -> FakeAttachment:
        width = height = None
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                content_type = content_type or Image.MIME.get(img.format or "")
        except Image.DecompressionBombError:
            if data.startswith(b"\x89PNG\r\n\x1a\n"):  # Discord reads the header all the same
                width, height = struct.unpack(">II", data[16:24])
        except Exception:
            pass
        return cls(data, filename, content_type, width, height)

    async def read(self) -> bytes:
        self.reads += 1
        return self.data


class FakeDownloader:
    """Stands in for :class:`bot.download.Downloader` on a bot that never logs in: serves the
    bytes of the :class:`FakeAttachment` a URL belongs to. (The real downloader, with its
    CDN allow-list, time and size limits, is tested against the Discord emulator.)"""

    async def fetch(self, url: str, announced: int, name: str) -> bytes:
        att = _by_url[url]
        att.reads += 1
        return att.data


def offline_bot(handlers):
    """A :class:`bot.client.PetBot` whose command callbacks can be awaited with fakes."""
    from bot.client import PetBot

    bot = PetBot(handlers, handlers.settings)
    bot.downloader = FakeDownloader()
    return bot


@dataclass
class Sent:
    """One message the bot sent: where, when, and what."""

    kind: str  # "send_message", "followup", "edit_original"
    at: float
    content: str | None = None
    embed: Any = None
    files: list[tuple[str, bytes]] = field(default_factory=list)
    ephemeral: bool = False


def _files(kwargs: dict) -> list[tuple[str, bytes]]:
    files = list(kwargs.get("files") or ([kwargs["file"]] if kwargs.get("file") else []))
    return [(f.filename, f.fp.read()) for f in files]


class FakeResponse:
    def __init__(self, interaction: FakeInteraction):
        self._i = interaction
        self._done = False

    def is_done(self) -> bool:
        return self._done

    def _respond(self) -> None:
        if self._done:
            raise RuntimeError("InteractionResponded: this interaction has already been responded to")
        self._done = True
        self._i.acknowledged_at = time.perf_counter()

    async def defer(self, *, ephemeral: bool = False, thinking: bool = False) -> None:
        self._respond()
        self._i.deferred = SimpleNamespace(ephemeral=ephemeral, thinking=thinking)

    async def send_message(self, content: str | None = None, **kwargs: Any) -> None:
        self._respond()
        self._i.sent.append(Sent("send_message", time.perf_counter(), content, kwargs.get("embed"),
                                 _files(kwargs), kwargs.get("ephemeral", False)))


class FakeFollowup:
    def __init__(self, interaction: FakeInteraction):
        self._i = interaction

    async def send(self, content: str | None = None, **kwargs: Any) -> None:
        if not self._i.response.is_done():
            raise RuntimeError("followup before the interaction was acknowledged")
        # Discord's rule: the first followup after a defer takes the defer's visibility.
        ephemeral = kwargs.get("ephemeral", False)
        if self._i.deferred is not None and not self._i.placeholder_settled:
            ephemeral = self._i.deferred.ephemeral
            self._i.placeholder_settled = True
        self._i.sent.append(Sent("followup", time.perf_counter(), content, kwargs.get("embed"),
                                 _files(kwargs), ephemeral))


class FakeInteraction:
    """What a command callback sees: ``user.id``, ``response``, ``followup``, and the
    original-response helpers. ``created_at`` / ``acknowledged_at`` time the 3 s rule."""

    def __init__(self, user_id: int | None = None, command: str | None = None):
        self.id = next(_ids)
        self.user = SimpleNamespace(id=user_id if user_id is not None else self.id, name=f"user{self.id}")
        self.command = SimpleNamespace(name=command) if command else None
        self.created_at = time.perf_counter()
        self.acknowledged_at: float | None = None
        self.deferred: SimpleNamespace | None = None
        self.placeholder_settled = False
        self.deleted_original = False
        self.sent: list[Sent] = []
        self.response = FakeResponse(self)
        self.followup = FakeFollowup(self)

    async def edit_original_response(self, *, content: str | None = None, **kwargs: Any) -> None:
        if self.deferred is None and not self.sent:
            raise RuntimeError("no original response to edit")
        self.placeholder_settled = True
        self.sent.append(Sent("edit_original", time.perf_counter(), content, kwargs.get("embed"),
                              _files(kwargs), bool(self.deferred and self.deferred.ephemeral)))

    async def delete_original_response(self) -> None:
        self.deleted_original = True

    # --- what the user ends up seeing ------------------------------------------------------
    @property
    def answer(self) -> Sent:
        """The message that carries the result (the last one sent)."""
        if not self.sent:
            raise AssertionError("the interaction was never answered")
        return self.sent[-1]

    @property
    def text(self) -> str:
        a = self.answer
        return a.content or (a.embed.description if a.embed is not None else "")
