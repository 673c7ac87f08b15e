"""``kftune schedule SPEC.yaml --host URL --cron "0 0 3 * * *"``: a recurring run of the pipeline on KFP.

The same checks as ``kftune submit`` (the spec maps onto the pipeline, the host answers and accepts
the credentials) come first; then the experiment is created if needed and a recurring run
(``POST /apis/v2beta1/recurringruns``) with the pipeline compiled for the spec, ``max_concurrency`` 1
(a run never overlaps the previous one) and ``no_catchup`` (runs missed while paused are not made up).

The cron expression has KFP's six fields, seconds first: ``"0 0 3 * * *"`` is every day at 03:00.

Warm start (on by default, ``--no-warm-start`` turns it off): every run keeps its trials under the
same store root (``runs/<KFP run id>/search/``), and each run's search space is narrowed around the
best trials earlier runs recorded there (the ``warm_start`` pipeline parameter, applied by the
``lr-range-test`` step), so a nightly run refines where the last ones did best instead of starting
cold.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from kftune.commands.submit import (RemoteError, add_remote_arguments, api_message, compiled_package, config_failure,
                                    connect, prepare_from_args, quiet)
from kftune.core.errors import ConfigError, Problem
from kftune.steps._common import EXIT_FAILURE, EXIT_OK, run_main

_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")


def check_cron(expression: str) -> str:
    """``expression`` if it has KFP's six cron fields (seconds first), else :class:`ConfigError`."""
    fields = expression.split()
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        hint = f" (five fields: prefix a seconds field, e.g. '0 {expression.strip()}')" if len(fields) == 5 else ""
        raise ConfigError([Problem("--cron", f"{expression!r} is not a 6-field cron expression, seconds first, "
                                             f"e.g. '0 0 3 * * *' for 03:00 daily{hint}")])
    return " ".join(fields)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune schedule",
        description="Create a recurring run of the kftune pipeline on a Kubeflow Pipelines host: max concurrency 1, "
                    "no catch-up, warm-started from earlier runs' trials under the same store root.")
    add_remote_arguments(p)
    p.add_argument("--cron", required=True, help="6-field cron expression, seconds first, e.g. '0 0 3 * * *'")
    p.add_argument("--name", help="the recurring run's display name (default '<spec name> (<cron>)')")
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="every run starts its search cold")
    p.add_argument("--disabled", action="store_true", help="create the recurring run paused")
    return p


def _body(args: argparse.Namespace) -> int:
    try:
        cron = check_cron(args.cron)
        remote, prepared = prepare_from_args(args)
    except ConfigError as exc:
        return config_failure("kftune schedule", args, exc)
    job = prepared.job
    experiment_name = args.experiment or job.name
    name = args.name or f"{job.name} ({cron})"
    try:
        client = connect(remote)
        with compiled_package(prepared, args.registry) as package, quiet():
            try:
                experiment = client.create_experiment(experiment_name, namespace=remote.namespace)
                recurring = client.create_recurring_run(
                    experiment_id=experiment.experiment_id, job_name=name, cron_expression=cron, max_concurrency=1,
                    no_catchup=True, params=prepared.arguments, pipeline_package_path=package,
                    enabled=not args.disabled)
            except Exception as exc:  # noqa: BLE001 - ApiException, urllib3 errors: one line
                raise RemoteError(f"KFP at {remote.host} did not create the recurring run: "
                                  f"{api_message(exc)}") from None
    except RemoteError as exc:
        print(f"kftune schedule: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"kftune schedule: created recurring run {recurring.recurring_run_id} ({name!r}, cron {cron!r}, "
          f"max concurrency 1, no catch-up, warm start {'on' if args.warm_start else 'off'}, pipeline "
          f"kftune-{prepared.variant}, experiment {experiment_name!r}): "
          f"{remote.host}/#/recurringrun/details/{recurring.recurring_run_id}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
