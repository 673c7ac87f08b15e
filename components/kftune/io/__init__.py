"""The outside world, each edge behind a small Protocol: artifact stores, metrics sinks, corpus sources."""
