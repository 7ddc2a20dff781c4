"""The JSON objects Discord sends: users, attachments, messages, interactions, READY.

Only the fields discord.py reads, with realistic values; snowflakes come from one counter.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timezone
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
APPLICATION_ID = 1100000000000000001
BOT_USER = {"id": str(APPLICATION_ID), "username": "petlens", "discriminator": "0", "global_name": None,
            "avatar": None, "bot": True, "flags": 0, "verified": True, "mfa_enabled": False}
_counter = itertools.count(1)


def snowflake(shard_hint: int = 0) -> int:
    """A fresh snowflake: timestamp bits above, a counter below."""
    ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
    return (ms << 22) | ((next(_counter) + shard_hint) & 0x3FFFFF)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def user(user_id: int) -> dict:
    return {"id": str(user_id), "username": f"user{user_id}", "discriminator": "0", "global_name": None,
            "avatar": None, "bot": False, "public_flags": 0}


def attachment(att_id: int, filename: str, url: str, size: int, content_type: str | None,
               width: int | None = None, height: int | None = None) -> dict:
    out: dict[str, Any] = {"id": str(att_id), "filename": filename, "size": size, "url": url, "proxy_url": url}
    if content_type:
        out["content_type"] = content_type
    if width and height:
        out["width"], out["height"] = width, height
    return out


# Message flags and reference types the emulator sends.
HAS_SNAPSHOT = 1 << 14  # a forwarded message: its content lives in message_snapshots
DEFAULT_REFERENCE, FORWARD_REFERENCE = 0, 1

# app_permissions Discord reports in DMs (ATTACH_FILES | EMBED_LINKS | MENTION_EVERYONE, plus
# USE_EXTERNAL_EMOJIS in the bot's own DM), per the interaction object's documentation.
DM_PERMISSIONS = str((1 << 15) | (1 << 14) | (1 << 17))
BOT_DM_PERMISSIONS = str(int(DM_PERMISSIONS) | (1 << 18))
GUILD_PERMISSIONS = "2248473465835073"


def message(msg_id: int, channel_id: int, author: dict, *, content: str = "", attachments: list | None = None,
            embeds: list | None = None, flags: int = 0, guild_id: int | None = None, kind: int = 0,
            application_id: int | None = None) -> dict:
    out = {"id": str(msg_id), "channel_id": str(channel_id), "author": author, "content": content,
           "timestamp": now_iso(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
           "mentions": [], "mention_roles": [], "attachments": attachments or [], "embeds": embeds or [],
           "pinned": False, "type": kind, "flags": flags, "components": []}
    if guild_id is not None:
        out["guild_id"] = str(guild_id)
    if application_id is not None:
        out["application_id"] = str(application_id)
        out["webhook_id"] = str(application_id)
    return out


def forwarded(msg_id: int, channel_id: int, author: dict, original: dict) -> dict:
    """A forward of ``original``: a message of its own with no content or attachments, a
    ``message_reference`` of type FORWARD, and a copy of the original in ``message_snapshots``
    (Discord's "Message Snapshot Object": a partial message, without author or ids)."""
    out = message(msg_id, channel_id, author, flags=HAS_SNAPSHOT)
    out["message_reference"] = {"type": FORWARD_REFERENCE, "message_id": original["id"],
                                "channel_id": original["channel_id"]}
    if "guild_id" in original:
        out["message_reference"]["guild_id"] = original["guild_id"]
    snapshot = {k: original[k] for k in ("type", "content", "embeds", "attachments", "timestamp",
                                          "edited_timestamp", "flags", "mentions", "mention_roles", "components")}
    out["message_snapshots"] = [{"message": snapshot}]
    return out


def dm_channel(channel_id: int, recipient: dict) -> dict:
    """The ``channel`` of an interaction in a DM (type 1), as seen by the invoking user."""
    return {"id": str(channel_id), "type": 1, "last_message_id": None, "flags": 0, "recipients": [recipient]}


def interaction(iid: int, token: str, data: dict, *, user_id: int, guild_id: int | None, channel_id: int,
                size_limit: int, context: int = 0, install: int = 0) -> dict:
    """An INTERACTION_CREATE payload for an application command.

    ``context`` 0 GUILD: a guild text channel, the invoker as ``member``; 1 BOT_DM: the DM with the
    bot; 2 PRIVATE_CHANNEL: a DM between the invoker and a friend. Outside a guild there is no
    ``guild_id`` and no ``member``, only ``user``. ``install`` 0 GUILD_INSTALL or 1 USER_INSTALL
    sets ``authorizing_integration_owners``: the guild's id (``"0"`` in the bot's DM) or the user's.
    """
    out = {"id": str(iid), "application_id": str(APPLICATION_ID), "type": 2, "token": token, "version": 1,
           "data": data, "channel_id": str(channel_id), "locale": "en-US", "entitlements": [],
           "context": context, "attachment_size_limit": size_limit}
    if context == 0:
        out["guild_id"] = str(guild_id)
        out["guild_locale"] = "en-US"
        out["channel"] = {"id": str(channel_id), "type": 0, "guild_id": str(guild_id), "name": "pets",
                          "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None,
                          "topic": None, "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}
        out["member"] = {"user": user(user_id), "roles": [], "joined_at": now_iso(), "deaf": False, "mute": False,
                         "permissions": GUILD_PERMISSIONS, "flags": 0, "nick": None, "avatar": None}
        out["app_permissions"] = GUILD_PERMISSIONS
    else:
        out["user"] = user(user_id)
        out["channel"] = dm_channel(channel_id, BOT_USER if context == 1 else user(user_id + 1))
        out["app_permissions"] = BOT_DM_PERMISSIONS if context == 1 else DM_PERMISSIONS
    if install == 1:
        out["authorizing_integration_owners"] = {"1": str(user_id)}
    else:
        out["authorizing_integration_owners"] = {"0": str(guild_id) if context == 0 else "0"}
    return out


def ready(session_id: str, resume_url: str, shard: list[int] | None) -> dict:
    out = {"v": 10, "user": BOT_USER, "guilds": [], "session_id": session_id, "resume_gateway_url": resume_url,
           "application": {"id": str(APPLICATION_ID), "flags": 0}, "private_channels": [], "presences": [],
           "relationships": [], "user_settings": {}, "geo_ordered_rtc_regions": [], "session_type": "normal"}
    if shard is not None:
        out["shard"] = shard
    return out


def application() -> dict:
    """``GET /oauth2/applications/@me``."""
    return {"id": str(APPLICATION_ID), "name": "petlens", "icon": None, "description": "", "bot_public": True,
            "bot_require_code_grant": False, "verify_key": "0" * 64, "flags": 0, "summary": "",
            "owner": user(1), "team": None, "rpc_origins": [], "interactions_endpoint_url": None,
            "redirect_uris": [], "tags": []}
