"""A local Discord for the bot's tests: REST, gateway and CDN on 127.0.0.1.

The real, unmodified discord.py client talks to it once the test calls
``bot.client.use_local_discord(emulator.base_url)`` (or runs ``python -m bot`` with
``PETLENS_DISCORD_URL`` set): that points discord.py's API base and default gateway at the
emulator; nothing else in discord.py is touched.

- :mod:`.server`   the aiohttp app: routes, gateway sessions, fault injection, the record
- :mod:`.validate` Discord's documented limits as pure functions
- :mod:`.payloads` the JSON objects Discord sends (users, messages, interactions, READY)
- :mod:`.harness`  a bot and an emulator running in a background event loop, for pytest
"""

from .server import TOKEN, Emulator, Interaction, Message

__all__ = ["TOKEN", "Emulator", "Interaction", "Message"]
