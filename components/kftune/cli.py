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
    "run": ("kftune.commands.run", "run the whole pipeline locally (KFP's local runner): corpus to report"),
    "validate": ("kftune.commands.validate", "check a TuningJob spec; every problem with its field path"),
    "corpus": ("kftune.steps.corpus", "download, verify, split and downsample a corpus to JSONL + a card"),
    "lr-find": ("kftune.steps.lr_find", "learning-rate range test: loss curve, suggested lr and range for the search"),
    "train": ("kftune.steps.train", "train a classifier or tagger, with per-epoch checkpoints and --resume"),
    "search": ("kftune.steps.search", "hyperparameter search: random, grid, TPE, coarse-to-fine, BOHB, with early stopping"),
    "trial": ("kftune.steps.trial", "train one assignment for a budget; writes one trial record (Katib trial entry point)"),
    "evaluate": ("kftune.steps.evaluate", "score a trained model on a split: metrics, report, confusion matrix"),
    "report": ("kftune.steps.report", "the final report: corpus card, LR curve, trials, training, evaluation"),
    "predict": ("kftune.commands.predict", "predict with a trained model: text, a file or stdin in, JSONL out"),
    "serve": ("kftune.serving.server", "serve a trained model over HTTP (KServe V1/V2 protocols and POST /predict)"),
    "deploy": ("kftune.steps.deploy", "create or patch a KServe InferenceService that serves a trained model"),
    "compile": ("kftune.commands.compile", "compile the pipelines to YAML (--check: fail if the committed YAML differs)"),
    "katib": ("kftune.commands.katib", "print a Katib Experiment for the spec (coarse/fine phases for coarse-to-fine)"),
    "submit": ("kftune.commands.submit", "create a run on a Kubeflow Pipelines host (--wait to follow it)"),
    "schedule": ("kftune.commands.schedule", "create a recurring run on a Kubeflow Pipelines host (cron)"),
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
