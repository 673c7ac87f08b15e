"""The exceptions every layer shares.

Input problems are ``ValueError``-derived and name the field, the value and the constraint,
so the CLI can print them and exit with code 2 before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


class KftuneError(Exception):
    """Base class of every error kftune raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (a dotted field path) and what (with the fix)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(KftuneError, ValueError):
    """A spec, config or command line that cannot be used. Carries every problem found."""

    def __init__(self, problems: Iterable[Problem] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems: list[Problem] = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            text = f"{head}{self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            text = f"{head}{len(self.problems)} problems:\n{lines}"
        super().__init__(text)


class DataError(KftuneError, ValueError):
    """Input data (a corpus file, a model file) that cannot be read as what it claims to be."""


class ChecksumError(DataError):
    """A downloaded or cached file whose sha256 differs from the expected one."""

    def __init__(self, name: str, expected: str, actual: str):
        self.name, self.expected, self.actual = name, expected, actual
        super().__init__(
            f"checksum mismatch for {name}: expected sha256 {expected}, got {actual}; "
            "the file was not used (a corrupted download or a changed upstream file)"
        )


class ArtifactNotFoundError(KftuneError, FileNotFoundError):
    """An object that is not in the artifact store (local or S3). Raised ``from`` the cause."""

    def __init__(self, uri: str):
        self.uri = uri
        super().__init__(f"no such artifact: {uri}")


class TrainingInterrupted(KftuneError):
    """Training stopped on a signal (SIGTERM: pod eviction) after writing a checkpoint to resume from.
    ``main()`` maps it to exit code 143 (128 + SIGTERM)."""

    def __init__(self, checkpoint_uri: str | None, epoch: int, batch: int):
        self.checkpoint_uri, self.epoch, self.batch = checkpoint_uri, epoch, batch
        where = f"checkpoint {checkpoint_uri}" if checkpoint_uri else "no checkpoint store configured"
        super().__init__(f"training interrupted in epoch {epoch} after batch {batch}; {where}; "
                         "run again with --resume to continue")


class TrialFailedError(KftuneError, RuntimeError):
    """A trial that could not produce an objective (crash, out of memory, NaN loss)."""
