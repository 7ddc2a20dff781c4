"""One module per demo tab: each lays out its tab and wires its events (``build(ctx)``), over
page handlers that take a Gradio payload and return Gradio values."""
