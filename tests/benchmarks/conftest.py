"""The benchmarks' tests reuse the bot's fixtures (models, settings, handlers)."""

from tests.bot.conftest import bot_onnx, bot_settings, make_handlers  # noqa: F401  (pytest fixtures)
