"""The Discord bot: a thin adapter over the ONNX ``Classifier`` and the torch-side
fool / ideal / explain functions.

- :mod:`bot.config`   settings from the environment and the command line
- :mod:`bot.work`     the compute that runs in the worker pools (no Discord, no asyncio)
- :mod:`bot.handlers` the medium-independent handlers: limits, deferral hook, replies
- :mod:`bot.client`   the discord.py client and its slash commands
- :mod:`bot.console`  the same handlers from a terminal, one JSON line per call
"""
