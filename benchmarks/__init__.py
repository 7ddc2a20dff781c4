"""Figure-producing scripts (``python -m benchmarks.X``), kept out of the product packages."""
