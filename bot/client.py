"""The Discord side: a ``discord.Client`` owning an ``app_commands.CommandTree``.

Each slash command is a few lines: wrap the attachment in an :class:`~bot.handlers.Upload`,
call the handler with ``acknowledge=defer`` and send the :class:`~bot.handlers.Reply`.
Everything else — limits, the worker pools, error messages — lives in :mod:`bot.handlers`,
which the console runs too.
"""

from __future__ import annotations

import io
import logging
from typing import Awaitable, Callable, Optional

import discord
from discord import app_commands

from .config import STRENGTHS, Settings
from .handlers import Handlers, Reply, Upload

log = logging.getLogger("petlens.bot")

# What the invite asks for: View Channels, Send Messages, Embed Links, Attach Files
# (1024 + 2048 + 16384 + 32768). Nothing else: no message content, no moderation.
PERMISSIONS = discord.Permissions(view_channel=True, send_messages=True, embed_links=True, attach_files=True)
SCOPES = ("bot", "applications.commands")

OK_COLOUR = discord.Colour.green()
ERROR_COLOUR = discord.Colour.orange()


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


async def send_reply(interaction: discord.Interaction, reply: Reply) -> None:
    """Answer the interaction, honouring ``reply.ephemeral`` whether or not it was deferred."""
    kwargs = message_kwargs(reply)
    if not interaction.response.is_done():  # refused before deferring: a private answer
        await interaction.response.send_message(**kwargs, ephemeral=reply.ephemeral)
    elif not reply.ephemeral:
        await interaction.followup.send(**kwargs)  # replaces the public "thinking…" message
    else:
        # Discord gives the first followup after a defer the defer's visibility (public here),
        # so a private error takes three steps: settle the public placeholder with a neutral
        # note, send the details privately, then remove the note.
        await interaction.edit_original_response(content="That did not work; I sent you the details privately.")
        await interaction.followup.send(**kwargs, ephemeral=True)
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


def add_commands(tree: app_commands.CommandTree, handlers: Handlers) -> None:
    """Register /classify, /fool-me, /ideal, /explain and /about on ``tree``."""
    labels = handlers.labels

    async def complete_label(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=name, value=name)
                for name in labels if current.lower() in name.lower()][:25]

    def label_options(param: str):
        # Discord allows 25 fixed choices; a model with more labels gets autocomplete instead.
        if len(labels) <= 25:
            return app_commands.choices(**{param: [app_commands.Choice(name=n, value=n) for n in labels]})
        return app_commands.autocomplete(**{param: complete_label})

    strength_choices = [app_commands.Choice(name=f"{name} ({round(eps * 255)}/255 per pixel)", value=name)
                        for name, eps in STRENGTHS.items()]

    @tree.command(name="classify")
    @app_commands.describe(image="a photo of your pet (JPEG, PNG, WebP, GIF...)")
    async def classify(interaction: discord.Interaction, image: discord.Attachment) -> None:
        """Which pet is this? The network's top-3 guesses with their confidence."""
        await run_handler(interaction, lambda ack: handlers.classify(
            Upload.from_attachment(image), user=interaction.user.id, acknowledge=ack))

    @tree.command(name="fool-me")
    @app_commands.describe(image="a photo of your pet",
                           target="what the network should see (default: the other label)",
                           strength="how far each pixel may move (default: normal)")
    @label_options("target")
    @app_commands.choices(strength=strength_choices)
    async def fool_me(interaction: discord.Interaction, image: discord.Attachment,
                      target: Optional[str] = None, strength: Optional[str] = None) -> None:
        """Change your photo invisibly until the network swears it is something else."""
        await run_handler(interaction, lambda ack: handlers.fool_me(
            Upload.from_attachment(image), target=target, strength=strength or "normal",
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
            Upload.from_attachment(image), user=interaction.user.id, acknowledge=ack))

    @tree.command(name="about")
    async def about(interaction: discord.Interaction) -> None:
        """What this bot is, how accurate it is and how it works."""
        await send_reply(interaction, handlers.about())


class PetTree(app_commands.CommandTree):
    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Last line of defence: log it, tell the user in private, never show a traceback."""
        name = interaction.command.name if interaction.command else "?"
        log.error("/%s raised", name, exc_info=error)
        text = f"⚠️ Sorry, /{name} failed on my side. Please try again in a moment."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            pass  # the interaction expired or Discord is unreachable: nothing more to do


class PetBot(discord.Client):
    """The bot: its handlers arrive through the constructor, commands sync in setup_hook."""

    def __init__(self, handlers: Handlers, settings: Settings):
        # This bot never joins voice: spare operators the "PyNaCl is not installed" warnings.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        # Slash commands need no privileged intent (not even message content).
        super().__init__(intents=discord.Intents.default())
        self.handlers = handlers
        self.settings = settings
        self.tree = PetTree(self)
        add_commands(self.tree, handlers)

    async def setup_hook(self) -> None:
        await self.handlers.warm_up()  # load the models in every worker before users arrive
        if not self.settings.sync:
            return
        if self.settings.guild_id:
            # A guild's commands update instantly; global ones can take a while to appear.
            guild = discord.Object(id=self.settings.guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s", len(synced), self.settings.guild_id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands", len(synced))

    async def on_ready(self) -> None:
        log.info("logged in as %s (id %s); labels %s", self.user, getattr(self.user, "id", "?"),
                 self.handlers.labels)
        if self.application_id:
            log.info("invite link: %s", discord.utils.oauth_url(self.application_id, permissions=PERMISSIONS,
                                                                 scopes=SCOPES))
