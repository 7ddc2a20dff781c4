"""The benchmarks' tests reuse the fixtures of the code they measure (the bot's models,
settings and handlers; the int8 model of the export tests)."""

from tests.bot.conftest import bot_onnx, bot_settings, make_handlers  # noqa: F401  (pytest fixtures)
from tests.export.conftest import tiny_int8  # noqa: F401
