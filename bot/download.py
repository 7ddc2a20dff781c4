"""Fetching attachments: only from Discord's CDN, bounded in time and in size.

A message's attachments point at Discord's CDN; anything else a message carries (links in its
text, embed images) can point anywhere, so the bot never fetches it: an allow-list of
origins (https on ``cdn.discordapp.com`` / ``media.discordapp.net``, plus the local emulator's
origin in tests) is checked before any connection, redirects are not followed, and the body is
cut off at the size Discord announced.

Attachment URLs are signed and expire (``ex``, a hex unix time, beside ``is`` and ``hm``); past
it the CDN answers 404, and the user is told the link expired rather than that the file is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import yarl

from service import UserError

log = logging.getLogger("petlens.bot")

DISCORD_CDN = (("https", "cdn.discordapp.com", 443), ("https", "media.discordapp.net", 443))


class DownloadError(UserError):
    """An attachment that could not be fetched; ``str(err)`` is meant for the user."""


def origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an absolute http(s) URL without credentials, else ``None``."""
    try:
        u = yarl.URL(url)
    except (TypeError, ValueError):
        return None
    if u.scheme not in ("http", "https") or not u.host or u.user or u.password:
        return None
    return u.scheme, u.host.lower(), u.port or (443 if u.scheme == "https" else 80)


def is_allowed(url: str, allowed: tuple[tuple[str, str, int], ...] = DISCORD_CDN) -> bool:
    """Whether ``url`` is on one of the ``allowed`` origins (an exact match, no subdomains)."""
    return origin(url) in allowed


def link_expired(url: str, now: float | None = None) -> bool:
    """Whether a signed attachment URL's ``ex`` (hex unix seconds) is past; ``False`` when the
    URL carries no readable ``ex``."""
    try:
        expires = int(yarl.URL(url).query.get("ex", ""), 16)
    except (TypeError, ValueError):
        return False
    return expires <= (time.time() if now is None else now)


class Downloader:
    """Fetches attachment bytes over one ``aiohttp`` session."""

    def __init__(self, session: aiohttp.ClientSession, *, allowed: tuple[tuple[str, str, int], ...] = DISCORD_CDN,
                 timeout_s: float = 20.0, max_bytes: int = 10 * 1024 * 1024):
        self.session = session
        self.allowed = allowed
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes

    async def fetch(self, url: str, announced: int, name: str) -> bytes:
        """The attachment's bytes; raises :class:`DownloadError` with a readable message."""
        name = name or "your file"
        if not is_allowed(url, self.allowed):
            log.warning("refused to fetch %r: not a Discord attachment URL", url[:200])
            raise DownloadError(f"{name} is not a file attached on Discord, so I will not download it. "
                                "Attach the photo to a message (drag it in) and try again.")
        limit = min(announced, self.max_bytes) if announced > 0 else self.max_bytes
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.session.get(url, allow_redirects=False) as resp:
                    if resp.status in (403, 404, 410) and link_expired(url):
                        raise DownloadError(f"I could not download {name}: its link expired (Discord's links to "
                                            "attachments only work for a while). Send the photo again.")
                    if resp.status in (403, 404, 410):
                        raise DownloadError(f"{name} is no longer on Discord (the message or the file was deleted, "
                                            "or its link expired). Send the photo again.")
                    if resp.status != 200:
                        raise DownloadError(f"Discord's file server answered {resp.status} for {name}; "
                                            "try again in a moment.")
                    if resp.content_length is not None and resp.content_length > limit:
                        raise _too_big(name, announced)
                    data = bytearray()
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        data += chunk
                        if len(data) > limit:
                            raise _too_big(name, announced)
                    return bytes(data)
        except TimeoutError as exc:
            raise DownloadError(f"Downloading {name} from Discord took more than {self.timeout_s:.0f} s, so I "
                                "gave up. Try again in a moment, or send a smaller photo.") from exc
        except aiohttp.ClientError as exc:
            log.warning("download of %r failed: %r", name, exc)
            raise DownloadError(f"I could not download {name} from Discord ({exc.__class__.__name__}); "
                                "please send it again.") from exc


def _too_big(name: str, announced: int) -> DownloadError:
    return DownloadError(f"{name} turned out larger than Discord announced ({announced} bytes), so I did not "
                         "use it. Send the photo again.")
