"""The Discord bot: an adapter over :mod:`service` that lays its answers out for Discord.

- :mod:`bot.config`   settings from the environment and the command line
- :mod:`bot.work`     the jobs that run in the worker pools: one ``Service`` per process
- :mod:`bot.handlers` the medium-independent handlers: limits, deferral hook, replies
- :mod:`bot.client`   the discord.py client, its slash commands and context menus (one table)
- :mod:`bot.console`  the same handlers from a terminal, one JSON line per call

May import: ``service``, ``export``, ``training`` (never ``demo``).
"""
