"""The Discord side: a ``discord.AutoShardedClient`` owning an ``app_commands.CommandTree``.

Each slash command and message context menu is a few lines: wrap the attachment in an
:class:`~bot.handlers.Upload` (its bytes come through :class:`~bot.download.Downloader`, from
Discord's CDN only), call the handler with ``acknowledge=defer`` and send the
:class:`~bot.handlers.Reply`. Everything else — limits, the worker pools, error messages —
lives in :mod:`bot.handlers`, which the console runs too.

The commands work wherever Discord offers them: in servers that installed the bot, in its DMs,
and — installed to a user's account — in that user's other DMs and group DMs. Nothing they do
needs a server: the photo arrives in the interaction and the answer goes back over its token.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from .config import LOOPBACK, STRENGTHS, Settings
from .download import Downloader
from .handlers import Handlers, Reply, Upload, first_image, no_image_reply

log = logging.getLogger("petlens.bot")

# What the invite asks for: View Channels, Send Messages, Embed Links, Attach Files
# (1024 + 2048 + 16384 + 32768). Nothing else: no message content, no moderation.
PERMISSIONS = discord.Permissions(view_channel=True, send_messages=True, embed_links=True, attach_files=True)
SCOPES = ("bot", "applications.commands")

# Where the commands may be installed and used (integration_types and contexts on every
# command): a server or a user's account; servers, the bot's DM and other DMs / group DMs.
INSTALLS = app_commands.AppInstallationType(guild=True, user=True)
CONTEXTS = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True)

OK_COLOUR = discord.Colour.green()
ERROR_COLOUR = discord.Colour.orange()

# Answers sent with the interaction token are retried after a 429 that discord.py gave up on
# (Cloudflare's, without a Via header) while the token lives, with this margin left.
TOKEN_MARGIN_S = 5.0
MAX_BACKOFF_S = 60.0

T = TypeVar("T")


def use_local_discord(base_url: str) -> None:
    """Test-only hook: send discord.py's REST calls and gateway connections to a local Discord
    emulator at ``base_url`` (``http://127.0.0.1:PORT``) instead of discord.com.

    It sets the two places discord.py takes Discord's address from, and nothing else:
    ``discord.http.Route.BASE`` (every REST route, webhooks and interaction callbacks included)
    and ``DiscordWebSocket.DEFAULT_GATEWAY`` (the gateway a client connects to unless
    ``GET /gateway/bot`` names one, e.g. after op 9 INVALID_SESSION). ``python -m bot`` calls it
    when ``PETLENS_DISCORD_URL`` is set; only loopback addresses are accepted.
    """
    url = yarl.URL(base_url)
    if url.scheme != "http" or url.host not in LOOPBACK:
        raise ValueError(f"a local Discord emulator runs on http://127.0.0.1:PORT, not {base_url!r}")
    discord.http.Route.BASE = str(url.with_path("/api/v10"))
    DiscordWebSocket.DEFAULT_GATEWAY = url.with_scheme("ws").with_path("/gateway")


def message_kwargs(reply: Reply) -> dict:
    """``send_message`` / ``followup.send`` keyword arguments for a reply."""
    if not reply.ok:
        return {"content": f"⚠️ {reply.text}"[:2000]}
    embed = discord.Embed(title=reply.title or None, description=reply.text[:4096], colour=OK_COLOUR)
    kwargs: dict = {"embed": embed}
    if reply.files:
        kwargs["files"] = [discord.File(io.BytesIO(f.data), filename=f.name) for f in reply.files]
        embed.set_image(url=f"attachment://{reply.files[0].name}")
    return kwargs


def _retry_after(exc: discord.HTTPException) -> float | None:
    """The seconds a 429 asks to wait (its ``Retry-After`` header), if it says."""
    try:
        return max(0.0, float(exc.response.headers["Retry-After"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


async def with_token(interaction: discord.Interaction, send: Callable[[], Awaitable[T]], what: str) -> T:
    """``await send()`` — a request made with the interaction token — again after a 429 that
    reached us, for as long as the token is valid (15 minutes from the interaction).

    discord.py retries Discord's own 429s (they carry a ``Via`` header) but raises at once on
    one without it: Cloudflare's answer to an IP that made too many requests, which a bot on a
    shared address can get. Throwing away a finished result for that would be a pity. The wait
    is the ``Retry-After`` header if present, else 1, 2, 4 … s (at most a minute). ``send`` must
    build its message afresh on each call (discord.py closes the files it sent)."""
    backoff = 1.0
    while True:
        try:
            return await send()
        except discord.HTTPException as exc:
            if exc.status != 429:
                raise
            wait = _retry_after(exc)
            wait = backoff if wait is None else wait
            left = (interaction.expires_at - discord.utils.utcnow()).total_seconds() - TOKEN_MARGIN_S
            if wait > left:
                log.error("%s: Discord answered 429 and the interaction token expires in %.0f s, before the "
                          "%.0f s wait it asks for; giving up", what, left + TOKEN_MARGIN_S, wait)
                raise
            log.warning("%s: Discord answered 429%s; sending again in %.1f s", what,
                        "" if exc.response.headers.get("Via") else " without a Via header (Cloudflare's edge)",
                        wait)
            await asyncio.sleep(wait)
            backoff = min(2 * backoff, MAX_BACKOFF_S)


async def send_reply(interaction: discord.Interaction, reply: Reply) -> None:
    """Answer the interaction, honouring ``reply.ephemeral`` whether or not it was deferred."""
    if not interaction.response.is_done():  # refused before deferring: a private answer
        await interaction.response.send_message(**message_kwargs(reply), ephemeral=reply.ephemeral)
    elif not reply.ephemeral:
        # Replaces the public "thinking…" message.
        await with_token(interaction, lambda: interaction.followup.send(**message_kwargs(reply)), "follow-up")
    else:
        # Discord gives the first followup after a defer the defer's visibility (public here),
        # so a private error takes three steps: settle the public placeholder with a neutral
        # note, send the details privately, then remove the note.
        await with_token(interaction, lambda: interaction.edit_original_response(
            content="That did not work; I sent you the details privately."), "edit")
        await with_token(interaction, lambda: interaction.followup.send(**message_kwargs(reply), ephemeral=True),
                         "private follow-up")
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            pass


async def run_handler(interaction: discord.Interaction,
                      call: Callable[[Callable[[], Awaitable[object]]], Awaitable[Reply]]) -> None:
    """Run one handler with ``defer(thinking=True)`` as its acknowledgement, then reply."""
    async def acknowledge() -> None:
        await interaction.response.defer(thinking=True)

    await send_reply(interaction, await call(acknowledge))


def add_commands(tree: app_commands.CommandTree, handlers: Handlers,
                 upload: Callable[[Any], Upload] = Upload.from_attachment) -> None:
    """Register /classify, /fool-me, /ideal, /explain and /about, and the message context menus
    "Classify photo", "Fool me" and "Explain", on ``tree``; ``upload`` wraps an attachment."""
    labels = handlers.labels

    async def complete_label(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=name, value=name)
                for name in labels if current.lower() in name.lower()][:25]

    def label_options(param: str):
        # Discord allows 25 fixed choices; a model with more labels gets autocomplete instead.
        if len(labels) <= 25:
            return app_commands.choices(**{param: [app_commands.Choice(name=n, value=n) for n in labels]})
        return app_commands.autocomplete(**{param: complete_label})

    strength_choices = [app_commands.Choice(name=f"{name} ({levels}/255 per pixel)", value=name)
                        for name, levels in STRENGTHS.items()]

    @tree.command(name="classify")
    @app_commands.describe(image="a photo of your pet (JPEG, PNG, WebP, GIF...)")
    async def classify(interaction: discord.Interaction, image: discord.Attachment) -> None:
        """Which pet is this? The network's top-3 guesses with their confidence."""
        await run_handler(interaction, lambda ack: handlers.classify(
            upload(image), user=interaction.user.id, acknowledge=ack))

    @tree.command(name="fool-me")
    @app_commands.describe(image="a photo of your pet",
                           target="what the network should see (default: the other label)",
                           strength="how far each pixel may move (default: normal)")
    @label_options("target")
    @app_commands.choices(strength=strength_choices)
    async def fool_me(interaction: discord.Interaction, image: discord.Attachment,
                      target: str | None = None, strength: str | None = None) -> None:
        """Change your photo invisibly until the network swears it is something else."""
        await run_handler(interaction, lambda ack: handlers.fool_me(
            upload(image), target=target, strength=strength or "normal",
            user=interaction.user.id, acknowledge=ack))

    @tree.command(name="ideal")
    @app_commands.describe(label="which class to dream up")
    @label_options("label")
    async def ideal(interaction: discord.Interaction, label: str) -> None:
        """The image the network finds the most cat-like (or dog-like, ...)."""
        await run_handler(interaction, lambda ack: handlers.ideal(
            label, user=interaction.user.id, acknowledge=ack))

    @tree.command(name="explain")
    @app_commands.describe(image="a photo of your pet")
    async def explain(interaction: discord.Interaction, image: discord.Attachment) -> None:
        """Where did the network look? A Grad-CAM heat map over your photo."""
        await run_handler(interaction, lambda ack: handlers.explain(
            upload(image), user=interaction.user.id, acknowledge=ack))

    @tree.command(name="about")
    async def about(interaction: discord.Interaction) -> None:
        """What this bot is, how accurate it is and how it works."""
        await send_reply(interaction, handlers.about())

    # Message context menus (right-click a message > Apps): the same handlers, limits and pools
    # as the slash commands, on the message's first image attachment; one table, one callback.
    for name, (slash, call) in MENUS.items():
        tree.add_command(app_commands.ContextMenu(name=name, callback=_menu(handlers, upload, name, slash, call)))


# Each message context menu: the slash command it stands for, and its handler call on the
# posted photo (no options in a context menu: fool-me aims at the other label, normal strength).
MENUS: dict[str, tuple[str, Callable[..., Awaitable[Reply]]]] = {
    "Classify photo": ("classify", lambda h, image, **who: h.classify(image, **who)),
    "Fool me": ("fool-me", lambda h, image, **who: h.fool_me(image, target=None, strength="normal", **who)),
    "Explain": ("explain", lambda h, image, **who: h.explain(image, **who)),
}


def _menu(handlers: Handlers, upload: Callable[[Any], Upload], name: str, slash: str, call):
    """The callback of the context menu ``name`` (see :data:`MENUS`)."""
    async def on_message(interaction: discord.Interaction, message: discord.Message) -> None:
        image = first_image([upload(a) for a in message_attachments(message)])
        if image is None:
            return await send_reply(interaction, no_image_reply(name, slash))
        await run_handler(interaction, lambda ack: call(handlers, image, user=interaction.user.id, acknowledge=ack))

    return on_message


def message_attachments(message: discord.Message) -> list[discord.Attachment]:
    """A message's attachments; for a forwarded message (which has none of its own), those of
    the message it forwards (``message_snapshots``)."""
    if message.attachments:
        return list(message.attachments)
    return [a for snapshot in getattr(message, "message_snapshots", ()) for a in snapshot.attachments]


class PetTree(app_commands.CommandTree):
    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Last line of defence: log it, tell the user in private, never show a traceback."""
        command = interaction.command
        name = command.name if command else "?"
        shown = name if isinstance(command, app_commands.ContextMenu) else f"/{name}"
        log.error("%s raised", shown, exc_info=error)
        reply = Reply(False, f"Sorry, {shown} failed on my side. Please try again in a moment.", ephemeral=True)
        try:  # send_reply keeps it private even after a public defer
            await send_reply(interaction, reply)
        except discord.HTTPException:
            pass  # the interaction expired or Discord is unreachable: nothing more to do


class PetBot(discord.AutoShardedClient):
    """The bot: its handlers arrive through the constructor, commands sync in setup_hook.

    Sharded automatically: it opens as many gateway shards as ``GET /gateway/bot`` recommends
    (one for a small bot; Discord requires sharding from 2,500 servers), or ``settings.shards``.
    Interactions arrive on whichever shard owns their server and are answered over REST.
    """

    def __init__(self, handlers: Handlers, settings: Settings, *, heartbeat_timeout: float = 60.0):
        """``heartbeat_timeout``: seconds without any message from the gateway (not even a
        heartbeat ACK) after which discord.py declares the connection a zombie, closes it and
        resumes; its default, 60, outlasts Discord's ~41 s heartbeat interval."""
        # This bot never joins voice: spare operators the "PyNaCl is not installed" warnings.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        # Slash commands and context menus need no privileged intent (not even message
        # content: a context menu's target message arrives inside the interaction).
        super().__init__(intents=discord.Intents.default(), shard_count=settings.shards,
                         heartbeat_timeout=heartbeat_timeout)
        self.handlers = handlers
        self.settings = settings
        self.downloader: Downloader | None = None
        self.tree = PetTree(self, allowed_installs=INSTALLS, allowed_contexts=CONTEXTS)
        add_commands(self.tree, handlers, self.upload)

    def upload(self, att: discord.Attachment) -> Upload:
        """An attachment whose bytes come from Discord's CDN through :attr:`downloader`."""
        async def read() -> bytes:
            return await self.downloader.fetch(att.url, att.size, att.filename)

        # Interactions only arrive after setup_hook made the downloader; before that (the
        # callbacks driven directly, as tests/bot/fakes.py does) the attachment reads itself.
        return Upload.from_attachment(att, read if self.downloader is not None else None)

    async def setup_hook(self) -> None:
        s = self.settings
        self.downloader = Downloader(aiohttp.ClientSession(), allowed=s.attachment_origins(),
                                     timeout_s=s.download_timeout_s, max_bytes=s.limits.max_bytes)
        await self.handlers.warm_up()  # load the models in every worker before users arrive
        if not self.settings.sync:
            return
        if self.settings.guild_id:
            # A guild's commands update instantly; global ones can take a while to appear.
            guild = discord.Object(id=self.settings.guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s: %s", len(synced), self.settings.guild_id,
                     ", ".join(c.name for c in synced))
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands: %s", len(synced), ", ".join(c.name for c in synced))

    async def close(self) -> None:
        await super().close()
        if self.downloader is not None:
            await self.downloader.session.close()

    async def on_ready(self) -> None:
        log.info("logged in as %s (id %s) on %d shard(s); labels %s", self.user, getattr(self.user, "id", "?"),
                 self.shard_count or 1, self.handlers.labels)
        if self.application_id:
            log.info("invite link: %s", discord.utils.oauth_url(self.application_id, permissions=PERMISSIONS,
                                                                 scopes=SCOPES))
