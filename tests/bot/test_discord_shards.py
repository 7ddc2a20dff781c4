"""Sharding: when GET /gateway/bot says 2 shards (Discord requires sharding from 2,500 servers),
the bot opens both and answers interactions arriving on either."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.bot.bot_uploads import photo_bytes

pytestmark = [pytest.mark.emulator, pytest.mark.slow]  # the second IDENTIFY waits 5 s (Discord's rate)


@pytest.fixture(scope="module")
def sharded(emulated_handlers):
    from tests.discord_emulator.harness import Harness

    with Harness(emulated_handlers, shards=2) as h:
        yield h


def test_both_shards_identify_and_answer(sharded):
    emu = sharded.emu
    assert sorted((shard, what) for _, shard, what in emu.gateway_log) == [(0, "identify"), (1, "identify")]
    assert sharded.bot.shard_count == 2 and sorted(sharded.bot.shards) == [0, 1]
    data = photo_bytes("cat", 2)
    w, h = Image.open(io.BytesIO(data)).size
    for shard in (0, 1):
        att = emu.add_attachment(f"cat{shard}.png", data, "image/png", width=w, height=h)
        it = sharded.run(emu.invoke("classify", {"image": att}, shard=shard))
        sharded.run(emu.answered(it, 30), 40)
        assert it.shard == shard and it.answer.embeds[0]["title"] == "A cat"
        about = sharded.run(emu.invoke_message_menu("Classify photo", emu.posted([att]), shard=shard))
        assert sharded.run(emu.answered(about, 30), 40).answer.embeds[0]["title"] == "A cat"
    assert emu.violations == []


def test_shards_flag_sets_the_count_and_refuses_nonsense():
    """--shards N (or PETLENS_SHARDS) fixes the count instead of Discord's recommendation."""
    from bot import __main__ as cli
    from bot.config import from_args

    args = cli.get_args_parser().parse_args(["--shards", "2"])
    assert from_args(args, token="x").shards == 2
    with pytest.raises(ValueError, match="--shards"):
        from_args(cli.get_args_parser().parse_args(["--shards", "0"]), token="x")
