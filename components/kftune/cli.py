"""``kftune <command> ...``: one console script, one module per command, imported only when run.

``kftune --help`` imports neither torch nor kfp: the table below names modules, and a module is
imported only when its command is invoked. Each module exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from kftune._version import __version__

# command -> (module with main(argv) -> int, one-line help). Order is the order of a run.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("kftune.commands.validate", "check a TuningJob spec; every problem with its field path"),
    "corpus": ("kftune.steps.corpus", "download, verify, split and downsample a corpus to JSONL + a card"),
    "train": ("kftune.steps.train", "train a classifier or tagger, with per-epoch checkpoints and --resume"),
    "evaluate": ("kftune.steps.evaluate", "score a trained model on a split: metrics, report, confusion matrix"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"kftune {__version__}: tune PyTorch NLP models as Kubeflow Pipelines",
        "",
        "usage: kftune <command> [options]     (kftune <command> --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Each step also runs as `python -m kftune.steps.<step>`."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if args else 2
    if args[0] in {"-V", "--version"}:
        print(f"kftune {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"kftune: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
