"""What every step's ``main(argv) -> int`` shares: logging set up once, errors mapped to exit codes.

Exit codes: 0 success; 1 a runtime failure (the message is logged); 2 a usage or config error
(every problem printed with its field path, nothing started); 130 interrupted by the user;
143 (128 + SIGTERM) training stopped by SIGTERM after writing a checkpoint (run again with --resume).
An error class may name its own code in ``exit_code``: 3 (:data:`kftune.io.lease.EXIT_BUSY`) the run is
driven by another process (its lease is held, or this driver lost it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from kftune.core.errors import ConfigError, KftuneError, Problem, TrainingInterrupted

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

log = logging.getLogger("kftune")


class CheckedConfig:
    """Base of step configs: ``problems()`` lists everything wrong (field path, value, fix);
    ``validate()`` raises them all at once as one :class:`ConfigError`."""

    def problems(self) -> list[Problem]:
        return []

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem, if any."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (pytest and notebooks swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores it
        pass


def setup_logging(verbose: int = 0) -> None:
    """Configure the root logger once (idempotent; the level can be raised by ``-v`` or ``KFTUNE_LOG_LEVEL``)."""
    level_name = os.environ.get("KFTUNE_LOG_LEVEL")
    level = getattr(logging, level_name.upper(), logging.INFO) if level_name else (
        logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger()
    if not any(getattr(h, "_kftune", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._kftune = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")


def run_main(body: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None) -> int:
    """Parse ``argv``, set up logging, call ``body(args)`` and map exceptions to exit codes."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    setup_logging(getattr(args, "verbose", 0))
    try:
        code = body(args)
        return EXIT_OK if code is None else int(code)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingInterrupted as exc:
        log.warning("%s", exc)
        return EXIT_TERMINATED
    except KftuneError as exc:
        log.error("%s", exc)
        return int(getattr(exc, "exit_code", EXIT_FAILURE))
