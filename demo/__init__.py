"""The public Gradio demo: Classify, Fool me, Ideal image, Inside the network.

An adapter over :mod:`service`: ``demo.app.build_demo(service)`` lays out one module per tab
(:mod:`demo.tabs`); ``demo.app.demo`` is the app on the shipped models (built on first access)
and ``python -m demo`` serves it. Importing this package imports nothing heavy.

May import: ``service``, ``export``, ``training`` (never ``bot``).
"""
