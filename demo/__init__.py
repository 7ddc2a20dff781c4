"""The public Gradio demo: Classify, Fool me, Ideal image, Inside the network.

``demo.app.build_demo(classifier, model, labels)`` builds the app around models loaded
once; ``demo.app.demo`` is the app on the shipped models (built on first access) and
``python -m demo`` serves it. Importing this package imports nothing heavy.
"""
