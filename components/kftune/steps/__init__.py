"""One module per pipeline step: a frozen config, a typed ``run(config) -> Result`` and ``main(argv) -> int``."""
