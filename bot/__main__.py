"""Run the Discord bot: ``python -m bot`` (or ``petlens-bot``).

The token comes from ``DISCORD_TOKEN`` only; everything else has a flag and a ``PETLENS_*``
environment default (see ``--help``). A missing, malformed or rejected token stops the bot
with one readable line and a non-zero exit status, never a traceback — at login, or later,
when Discord ends the session with a close code that forbids reconnecting (a reset token).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys

from training.cli import make_parser, run

from . import config

EPILOG = """\
environment:
  DISCORD_TOKEN            the bot token (Developer Portal > your app > Bot > Reset Token); required,
                           never logged. Keep it in a file only you can read, e.g. a systemd
                           EnvironmentFile.
  DISCORD_GUILD_ID         same as --guild-id
  PETLENS_DISCORD_URL      tests only: talk to a local Discord emulator at http://127.0.0.1:PORT
                           (REST, gateway and attachment downloads); loopback addresses only
  PETLENS_*                defaults for the flags above, named after them (PETLENS_MAX_HEAVY, ...)

exit status:
  0 stopped, 1 Discord unreachable (retry), 2 configuration error, 3 token, intents or shard
  count rejected by Discord (at login or later, e.g. gateway close 4004 after a token reset)

example:
  DISCORD_TOKEN=... python -m bot --guild-id 123456789012345678
"""

# Bot tokens are three base64url parts joined by dots (~70 characters). The check is loose on
# purpose (Discord may change lengths); it catches copy-paste slips: quotes, a "Bot " prefix,
# a client secret or an application id pasted instead.
TOKEN_SHAPE = re.compile(r"^[^.\s'\"]{10,}\.[^.\s'\"]+\.[^.\s'\"]{10,}$")

# Distinct statuses so a service manager restarts only what a restart can fix.
EXIT_NETWORK = 1  # Discord could not be reached: worth retrying
EXIT_CONFIG = 2  # the operator must fix the configuration (token missing, model, flags)
EXIT_REJECTED = 3  # Discord refused the token or the intents: retrying will not help

TOKEN_REJECTED = ("Discord rejected DISCORD_TOKEN (it was reset or is wrong). Reset it in the Developer Portal "
                  "(Bot > Reset Token) and set the new one.")
INTENTS_REFUSED = ("Discord refused the gateway intents; this bot needs none of the privileged ones, so check "
                   "the application's settings.")


def gateway_closed(code: int | None, settings: config.Settings) -> tuple[int, str]:
    """Exit status and message for a gateway close that discord.py does not reconnect after
    (4004, 4010-4014). These all need the operator: automatic restarts would only repeat the
    refusal and spend the daily IDENTIFY budget, which Discord answers by resetting the token."""
    if code == 4004:
        return EXIT_REJECTED, f"{TOKEN_REJECTED} (gateway close 4004)"
    if code in (4010, 4011):
        fix = (f"raise --shards (now {settings.shards})" if settings.shards else
               "start the bot again: it asks Discord for the recommended number of shards when it starts")
        return EXIT_REJECTED, (f"Discord requires more gateway shards for this bot's servers (gateway close {code}); "
                               f"{fix}.")
    if code in (4013, 4014):
        return EXIT_REJECTED, f"{INTENTS_REFUSED} (gateway close {code})"
    return EXIT_REJECTED, (f"Discord closed the gateway connection with code {code} and does not allow reconnecting; "
                           "update discord.py and check the application's settings.")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = make_parser(
        "petlens-bot", "The petlens Discord bot (also: python -m bot): /classify, /fool-me, /ideal, /explain "
        "and /about, and the message context menus Classify photo, Fool me and Explain.",
        add_help=add_help, epilog=EPILOG,
    )
    config.add_model_arguments(parser)
    config.add_service_arguments(parser)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="logging verbosity (default %(default)s)")
    return parser


def check_token(token: str) -> str | None:
    """Why ``token`` cannot be a bot token, or ``None``. Never echoes the token itself."""
    if not token:
        return ("DISCORD_TOKEN is not set. Create a bot in the Discord Developer Portal, copy its "
                "token and run: DISCORD_TOKEN=<token> python -m bot")
    if not TOKEN_SHAPE.match(token):
        return ("DISCORD_TOKEN does not look like a bot token (three dot-separated parts). Copy it "
                "again from the Developer Portal (Bot > Reset Token), without quotes or 'Bot ' prefix.")
    return None


async def serve(settings: config.Settings) -> None:
    """Load the models, log in and serve until interrupted."""
    from .client import PetBot, use_local_discord
    from .handlers import Handlers

    if settings.discord_url:
        use_local_discord(settings.discord_url)
        logging.getLogger(__name__).warning("PETLENS_DISCORD_URL is set: talking to the local Discord emulator at %s",
                                            settings.discord_url)
    handlers = Handlers(settings)
    try:
        async with PetBot(handlers, settings) as bot:
            try:  # `systemctl stop` sends SIGTERM: log out cleanly instead of dying mid-reply
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(bot.close()))
            except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
                logging.getLogger(__name__).info(
                    "SIGTERM handler not available here (platform or thread); SIGTERM will stop the bot without logging out")
            await bot.start(settings.token)
    finally:
        handlers.close()


def main(args: argparse.Namespace) -> int:
    """Start the bot; returns the process exit status."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = config.from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if (problem := check_token(settings.token)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG

    import aiohttp
    import discord

    from .handlers import ConfigError

    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except discord.LoginFailure:
        print(f"error: {TOKEN_REJECTED}", file=sys.stderr)
        return EXIT_REJECTED
    except discord.PrivilegedIntentsRequired:
        print(f"error: {INTENTS_REFUSED}", file=sys.stderr)
        return EXIT_REJECTED
    except discord.ConnectionClosed as exc:  # mid-session: token reset (4004), sharding required (4011), ...
        status, message = gateway_closed(exc.code, settings)
        print(f"error: {message}", file=sys.stderr)
        return status
    except (aiohttp.ClientError, OSError, discord.GatewayNotFound, discord.HTTPException) as exc:
        print(f"error: cannot talk to Discord ({exc.__class__.__name__}: {exc}). Check the network "
              "and try again.", file=sys.stderr)
        return EXIT_NETWORK
    except KeyboardInterrupt:
        pass
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry (``petlens-bot``). Exit statuses: 1 Discord unreachable (retry),
    2 configuration (the operator's to fix, one ``error:`` line), 3 token, intents or shard
    count refused by Discord (at login or when it ends the session)."""
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
