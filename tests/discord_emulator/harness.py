"""An emulator and a real :class:`bot.client.PetBot` logged in to it, in a background event loop.

pytest's tests are synchronous; the harness runs the emulator and the bot in one asyncio loop
on a thread, and :meth:`Harness.run` executes a coroutine there and returns its result. The
bot goes through the real network stack: aiohttp on both sides, TCP on 127.0.0.1.
:class:`EmulatorThread` runs the emulator alone, for a bot started as a process (``python -m bot``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

import discord
from discord.gateway import DiscordWebSocket

from .server import TOKEN, Emulator


class LogRecords(logging.Handler):
    """Keeps the bot's log records so tests can assert what was reported."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in self.records)


class EmulatorThread:
    """``with EmulatorThread() as et: et.run(et.emu.wait_for(...))``: an emulator in a background
    event loop, for a bot that runs elsewhere (a ``python -m bot`` subprocess)."""

    def __init__(self, **emulator: Any):
        self.emu = Emulator(**emulator)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="discord-emulator", daemon=True)

    def run(self, coro: Awaitable, timeout: float = 60.0):
        """Run ``coro`` in the emulator's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> EmulatorThread:
        self.thread.start()
        self.run(self.emu.start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.run(self.emu.stop(), timeout=30)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Harness(EmulatorThread):
    """``with Harness(handlers) as h: h.run(h.emu.invoke("about"))``.

    ``heartbeat_timeout``: discord.py's ``Client(heartbeat_timeout=)``, the seconds without any
    message from the gateway after which it declares the connection dead, closes it and
    resumes (60 by default; tests of a zombie connection shorten it)."""

    def __init__(self, handlers, *, shards: int = 1, heartbeat_ms: int = 41250, keep_files: bool = True,
                 heartbeat_timeout: float | None = None, **settings: Any):
        super().__init__(shards=shards, heartbeat_ms=heartbeat_ms, keep_files=keep_files)
        self.handlers = handlers
        self.settings_overrides = settings
        self.client_options = {} if heartbeat_timeout is None else {"heartbeat_timeout": heartbeat_timeout}
        self.bot = None
        self.task: asyncio.Task | None = None
        self.log = LogRecords()
        self._saved = (discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)

    def __enter__(self) -> Harness:
        from bot.client import PetBot, use_local_discord

        super().__enter__()
        use_local_discord(self.emu.base_url)
        settings = replace(self.handlers.settings, discord_url=self.emu.base_url, **self.settings_overrides)
        for name in ("petlens", "discord"):
            logging.getLogger(name).addHandler(self.log)
        logging.getLogger("petlens").setLevel(logging.INFO)

        async def login():
            self.bot = PetBot(self.handlers, settings, **self.client_options)
            self.task = asyncio.ensure_future(self.bot.start(TOKEN))
            await self.emu.wait_for(lambda: self.bot.is_ready() or self.task.done(), 60, "the bot to be ready")
            if self.task.done():
                self.task.result()  # raises the login error

        try:
            self.run(login(), timeout=90)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        async def shutdown():
            if self.bot is not None:
                await self.bot.close()
            if self.task is not None:
                await asyncio.gather(self.task, return_exceptions=True)
            await self.emu.stop()
            # discord.py leaves a few helper tasks (ready delays, queue readers) behind: end them
            # here rather than let the loop be closed under them.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(shutdown(), timeout=30)
        finally:
            self._stop_loop()
            discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved
            for name in ("petlens", "discord"):
                logging.getLogger(name).removeHandler(self.log)

    def ready_again(self, timeout: float = 30.0) -> None:
        """Wait until every shard is connected and the bot is ready."""
        self.run(self.emu.wait_for(
            lambda: all(self.emu.connected(i) for i in range(self.emu.shards)) and self.bot.is_ready(),
            timeout, "every shard to be connected"), timeout + 5)
