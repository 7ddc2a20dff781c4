"""Bot fixtures: the tiny model as ONNX, bot settings over it, sample and hostile uploads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bot.config import BOT_LIMITS, Settings
from tests.bot.bot_uploads import hostile_uploads

FOOL_STEPS = 10  # enough for the tiny model; keeps the heavy tests fast


@pytest.fixture(scope="session")
def bot_onnx(request, tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint exported to ONNX (the shared ``tiny_onnx`` fixture when there is one)."""
    try:
        return Path(request.getfixturevalue("tiny_onnx"))
    except pytest.FixtureLookupError:
        from export.convert import export_onnx

        out = tmp_path_factory.mktemp("bot-onnx") / "tiny.onnx"
        export_onnx(tiny_checkpoint, out)
        return out


@pytest.fixture(scope="session")
def bot_settings(bot_onnx, tiny_checkpoint) -> Settings:
    """Settings over the tiny model, no cooldowns (tests that need them set their own)."""
    return Settings(model=bot_onnx, checkpoint=Path(tiny_checkpoint), limits=BOT_LIMITS,
                    cooldown_s=0.0, classify_cooldown_s=0.0, fool_steps=FOOL_STEPS, ideal_steps=20)


@pytest.fixture
def make_handlers(bot_settings):
    """Build :class:`~bot.handlers.Handlers` with setting overrides; closed after the test."""
    from bot.handlers import Handlers

    made = []

    def make(**overrides) -> Handlers:
        h = Handlers(replace(bot_settings, **overrides))
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> dict[str, tuple[Path, bytes, str]]:
    """The hostile uploads, also written to files for the console."""
    root = tmp_path_factory.mktemp("hostile")
    out = {}
    for kind, (name, data, expect) in hostile_uploads().items():
        path = root / name
        path.write_bytes(data)
        out[kind] = (path, data, expect)
    return out


@pytest.fixture(scope="session")
def emulated_handlers(bot_settings):
    """One set of handlers (models loaded once) shared by every bot that logs in to an emulator."""
    from bot.handlers import Handlers

    h = Handlers(bot_settings)
    yield h
    h.close()


@pytest.fixture(scope="module")
def live(emulated_handlers):
    """A real PetBot logged in to a fresh local Discord emulator, for one test module."""
    from tests.discord_emulator.harness import Harness

    with Harness(emulated_handlers, heartbeat_ms=1000, download_timeout_s=2.0) as h:
        yield h
