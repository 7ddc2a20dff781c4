"""Discord's documented limits, as pure functions: each returns the list of rules a payload breaks.

Sources: the Discord developer documentation, "Application Commands" (naming, lengths, option
order, choices, the 4000-character total, context menus, ``integration_types`` and ``contexts``)
and "Receiving and Responding" (response types, the 3 s and 15 min windows, the 5 follow-ups of a
user-installed app), "Message Resource" / "Embed Limits" (content, embeds, attachments, flags),
"Uploading Files" (``attachment://`` references).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

CHAT_INPUT, USER, MESSAGE = 1, 2, 3
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
# A chat-input name: 1-32 word characters or dashes, lower case where the letter has a case.
CHAT_NAME = re.compile(r"^[-_\w]{1,32}$")
MAX_COMMANDS = {CHAT_INPUT: 100, USER: 5, MESSAGE: 5}
MAX_COMMAND_CHARS = 4000
MAX_OPTIONS = 25
MAX_CHOICES = 25

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TITLE = 256
MAX_EMBED_DESCRIPTION = 4096
MAX_EMBED_FIELDS = 25
MAX_EMBED_FOOTER = 2048
MAX_EMBED_AUTHOR = 256
MAX_EMBED_TOTAL = 6000
MAX_ATTACHMENTS = 10
MAX_FILE_BYTES = 10 * 1024 * 1024
EPHEMERAL = 1 << 6
SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
MESSAGE_FLAGS = EPHEMERAL | SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS  # what a bot may set

# Where a command may be installed (integration_types) and used (contexts).
GUILD_INSTALL, USER_INSTALL = 0, 1
INSTALL_TYPES = {GUILD_INSTALL: "GUILD_INSTALL", USER_INSTALL: "USER_INSTALL"}
GUILD, BOT_DM, PRIVATE_CHANNEL = 0, 1, 2
CONTEXTS = {GUILD: "GUILD", BOT_DM: "BOT_DM", PRIVATE_CHANNEL: "PRIVATE_CHANNEL"}
MAX_USER_INSTALL_FOLLOWUPS = 5  # per interaction, for an app that only the user installed

ACK_WINDOW_S = 3.0  # the first response to an interaction
TOKEN_WINDOW_S = 15 * 60.0  # follow-ups and edits with the interaction token
COMMAND_RESPONSE_TYPES = {4: "CHANNEL_MESSAGE_WITH_SOURCE", 5: "DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE",
                          9: "MODAL"}


def _chat_name_problems(where: str, name: Any) -> list[str]:
    if not isinstance(name, str) or not CHAT_NAME.match(name):
        return [f"{where}: name {name!r} must be 1-32 letters, digits, '-' or '_'"]
    if name != name.lower():
        return [f"{where}: name {name!r} must be lower case"]
    return []


def _description_problems(where: str, description: Any) -> list[str]:
    if not isinstance(description, str) or not 1 <= len(description) <= 100:
        return [f"{where}: description must be 1-100 characters, got {description!r}"]
    return []


def _option_problems(where: str, options: list[dict]) -> list[str]:
    problems = []
    if len(options) > MAX_OPTIONS:
        problems.append(f"{where}: {len(options)} options, at most {MAX_OPTIONS}")
    seen_optional = False
    names = set()
    for opt in options:
        at = f"{where} option {opt.get('name')!r}"
        problems += _chat_name_problems(at, opt.get("name"))
        problems += _description_problems(at, opt.get("description"))
        if opt.get("name") in names:
            problems.append(f"{at}: duplicate option name")
        names.add(opt.get("name"))
        if not isinstance(opt.get("type"), int) or not 1 <= opt["type"] <= 11:
            problems.append(f"{at}: unknown option type {opt.get('type')!r}")
        if opt.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP):
            problems += _option_problems(at, opt.get("options") or [])
            continue
        if opt.get("required"):
            if seen_optional:
                problems.append(f"{at}: required options must come before optional ones")
        else:
            seen_optional = True
        choices = opt.get("choices") or []
        if len(choices) > MAX_CHOICES:
            problems.append(f"{at}: {len(choices)} choices, at most {MAX_CHOICES}")
        if choices and opt.get("autocomplete"):
            problems.append(f"{at}: choices and autocomplete are mutually exclusive")
        for choice in choices:
            if not isinstance(choice.get("name"), str) or not 1 <= len(choice["name"]) <= 100:
                problems.append(f"{at}: choice name must be 1-100 characters, got {choice.get('name')!r}")
            value = choice.get("value")
            if isinstance(value, str) and not 1 <= len(value) <= 100:
                problems.append(f"{at}: choice value must be 1-100 characters, got {value!r}")
    return problems


def _chars(command: dict) -> int:
    """Discord's per-command total: every name, description and choice name/value."""
    def walk(options: Iterable[dict]) -> int:
        n = 0
        for opt in options:
            n += len(opt.get("name", "")) + len(opt.get("description", ""))
            for choice in opt.get("choices") or []:
                n += len(str(choice.get("name", ""))) + len(str(choice.get("value", "")))
            n += walk(opt.get("options") or [])
        return n

    return len(command.get("name", "")) + len(command.get("description", "") or "") + walk(command.get("options") or [])


def _enum_list_problems(where: str, field: str, value: Any, allowed: dict[int, str]) -> list[str]:
    """``integration_types`` / ``contexts``: absent or null (Discord's default), else a list of
    distinct values from ``allowed``. An empty list is refused too: the command could be used
    nowhere, which is never what a bot means."""
    if value is None:
        return []
    names = ", ".join(f"{k} {v}" for k, v in allowed.items())
    if not isinstance(value, list) or not value:
        return [f"{where}: {field} must be a non-empty list of {names}; got {value!r}"]
    problems = [f"{where}: {field} value {v!r} is not one of {names}"
                for v in value if isinstance(v, bool) or v not in allowed]
    if len(set(map(repr, value))) != len(value):
        problems.append(f"{where}: {field} lists a value twice: {value!r}")
    return problems


def command_problems(commands: Any) -> list[str]:
    """Rules a bulk-overwrite payload (``PUT /applications/{id}/commands``) breaks."""
    if not isinstance(commands, list):
        return ["the command list must be a JSON array"]
    problems = []
    counts: dict[int, int] = {}
    seen: set[tuple[int, str]] = set()
    for cmd in commands:
        kind = cmd.get("type", CHAT_INPUT)
        name = cmd.get("name")
        where = f"command {name!r} (type {kind})"
        counts[kind] = counts.get(kind, 0) + 1
        if (kind, name) in seen:
            problems.append(f"{where}: duplicate name for this type")
        seen.add((kind, name))
        if kind == CHAT_INPUT:
            problems += _chat_name_problems(where, name)
            problems += _description_problems(where, cmd.get("description"))
            problems += _option_problems(where, cmd.get("options") or [])
        elif kind in (USER, MESSAGE):
            if not isinstance(name, str) or not 1 <= len(name) <= 32:
                problems.append(f"{where}: context-menu name must be 1-32 characters")
            if cmd.get("description"):
                problems.append(f"{where}: context menus take no description (got {cmd['description']!r})")
            if cmd.get("options"):
                problems.append(f"{where}: context menus take no options")
        else:
            problems.append(f"{where}: unknown command type")
        problems += _enum_list_problems(where, "integration_types", cmd.get("integration_types"), INSTALL_TYPES)
        problems += _enum_list_problems(where, "contexts", cmd.get("contexts"), CONTEXTS)
        if (n := _chars(cmd)) > MAX_COMMAND_CHARS:
            problems.append(f"{where}: {n} characters in names, descriptions and choices, at most {MAX_COMMAND_CHARS}")
    for kind, n in counts.items():
        if n > MAX_COMMANDS.get(kind, 0):
            problems.append(f"{n} commands of type {kind}, at most {MAX_COMMANDS.get(kind, 0)}")
    return problems


def _embed_urls(embed: dict) -> list[str]:
    urls = [(embed.get(k) or {}).get("url") for k in ("image", "thumbnail")]
    urls += [(embed.get(k) or {}).get("icon_url") for k in ("author", "footer")]
    return [u for u in urls if u]


def message_problems(data: Any, files: list[tuple[str, int]], *, size_limit: int = MAX_FILE_BYTES,
                     new: bool = True) -> list[str]:
    """Rules a message payload (``data`` of a type-4 response, a follow-up or, with
    ``new=False``, an edit) with the uploaded ``files`` (``(filename, bytes)``) breaks."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return ["the message payload must be a JSON object"]
    problems = []
    content = data.get("content")
    if content is not None and (not isinstance(content, str) or len(content) > MAX_CONTENT):
        problems.append(f"content is {len(content) if isinstance(content, str) else type(content).__name__} "
                        f"characters, at most {MAX_CONTENT}")
    embeds = data.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        problems.append(f"{len(embeds)} embeds, at most {MAX_EMBEDS}")
    total = 0
    names = {name for name, _ in files} | {a.get("filename") for a in data.get("attachments") or [] if "filename" in a}
    for i, embed in enumerate(embeds):
        title, description = embed.get("title") or "", embed.get("description") or ""
        footer, author = (embed.get("footer") or {}).get("text") or "", (embed.get("author") or {}).get("name") or ""
        fields = embed.get("fields") or []
        for what, text, limit in (("title", title, MAX_EMBED_TITLE), ("description", description, MAX_EMBED_DESCRIPTION),
                                  ("footer", footer, MAX_EMBED_FOOTER), ("author", author, MAX_EMBED_AUTHOR)):
            if len(text) > limit:
                problems.append(f"embed {i} {what} is {len(text)} characters, at most {limit}")
        if len(fields) > MAX_EMBED_FIELDS:
            problems.append(f"embed {i} has {len(fields)} fields, at most {MAX_EMBED_FIELDS}")
        total += len(title) + len(description) + len(footer) + len(author)
        total += sum(len(f.get("name", "")) + len(f.get("value", "")) for f in fields)
        for url in _embed_urls(embed):
            if url.startswith("attachment://") and url[len("attachment://"):] not in names:
                problems.append(f"embed {i} refers to {url} but no file of that name was uploaded")
    if total > MAX_EMBED_TOTAL:
        problems.append(f"embeds total {total} characters, at most {MAX_EMBED_TOTAL}")
    if len(files) > MAX_ATTACHMENTS:
        problems.append(f"{len(files)} files, at most {MAX_ATTACHMENTS}")
    for name, size in files:
        if size > size_limit:
            problems.append(f"file {name!r} is {size} bytes, at most {size_limit}")
    if new and not (content or embeds or files):
        problems.append("a new message needs content, an embed or a file (Discord: 'Cannot send an empty message')")
    flags = data.get("flags") or 0
    if not isinstance(flags, int) or flags & ~MESSAGE_FLAGS:
        problems.append(f"flags {flags!r}: a bot may only set EPHEMERAL (64), SUPPRESS_EMBEDS (4), "
                        "SUPPRESS_NOTIFICATIONS (4096)")
    return problems
