"""``kftune validate SPEC.yaml [SPEC.yaml ...]``: check TuningJob specs before any work starts.

Prints (on stdout, the command's report) ``SPEC: ok (...)`` with a one-line summary for each valid
spec, and every problem of each invalid one with its field path and line. Exit 0 when all are
valid, 2 when any is not.
``--print`` also writes each valid spec back with every default spelled out.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from kftune.core.errors import ConfigError
from kftune.core.spec import TuningJob
from kftune.steps._common import EXIT_CONFIG, EXIT_OK, add_common_arguments, run_main


def summary(job: TuningJob) -> str:
    """One line about what a valid job will do."""
    spec = job.spec
    search = spec.search
    corpus = spec.corpus.describe()
    parts = [
        f"TuningJob {job.name}: {spec.task.type} on {corpus}",
        f"{len(search.parameters)} parameter{'s' if len(search.parameters) != 1 else ''}",
        f"algorithm {search.algorithm.algorithm_name}",
    ]
    if search.early_stopping is not None:
        parts.append(f"early stopping {search.early_stopping.algorithm_name}")
    parts.append(f"{search.objective.type} {search.objective.objective_metric_name}")
    parts.append(f"max {search.max_trial_count} trials, {search.parallel_trial_count} in parallel")
    parts.append(f"max {spec.train.max_epochs} epochs")
    parts.append(f"LR range test {'on ' + spec.lr_range_test.apply_to if spec.lr_range_test.enabled else 'off'}")
    return ", ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kftune validate",
        description="Check TuningJob spec files; report every problem with its field path. "
                    "Exit 0 if all are valid, 2 otherwise.")
    parser.add_argument("specs", nargs="+", metavar="SPEC.yaml", help="spec file(s) to check")
    parser.add_argument("--print", dest="print_spec", action="store_true",
                        help="print each valid spec with every default filled in")
    add_common_arguments(parser)
    return parser


def _body(args: argparse.Namespace) -> int:
    from kftune.io.specfile import dump_spec, load_spec

    failed = 0
    for path in args.specs:
        try:
            job = load_spec(path)
        except ConfigError as exc:
            failed += 1
            where = exc.source or path
            count = len(exc.problems)
            print(f"{where}: {count} problem{'s' if count != 1 else ''}")
            for problem in exc.problems:
                print(f"  - {problem}")
            continue
        print(f"{path}: ok ({summary(job)})")
        if args.print_spec:
            print("---")
            print(dump_spec(job), end="")
    return EXIT_CONFIG if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
