"""``kftune run SPEC.yaml``: run the whole pipeline on this machine with KFP's local runner.

The very pipeline function that ``kftune compile`` and ``kftune submit`` compile
(:func:`kftune.pipelines.pipeline.build_pipeline`, CPU variant, with as many search rounds as the
spec's search takes) runs through ``kfp.local.SubprocessRunner(use_venv=False)``
(:mod:`kftune.pipelines.local_runner`, where the KFP code lives): every task is a subprocess of this Python,
so the installed kftune is what runs.

1. The spec is validated and mapped to the pipeline's parameters (command-line overrides on top); the
   pipeline's first step (``resolve-spec``) is run in-process first, so a spec that cannot run prints
   one line and exits 2 before anything starts.
2. Progress: one line per task start and end on stdout (``[kftune] ...``); the runner's own output and
   the steps' logs go to ``<out>/run.log``.
3. Outputs: the KFP task outputs under ``<out>/kfp/`` (one folder per task), the trial journal,
   checkpoints, final model and report in the store (``--store``; default ``<out>/store``) under
   ``runs/<run-id>/``, and ``<out>/summary.json``. The runner's temporary files (the component
   sources it writes with ``mktemp``, its workspace) live in ``<out>/tmp`` and are removed at the end.
4. The summary: best parameters, the test score beside the baseline's (and whether tuning beat it)
   and where everything is.

Exit codes: 0 success; 1 a task failed (the line names it; details in run.log); 2 a spec or option
error (nothing started).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from kftune.core.errors import ConfigError
from kftune.io.lease import EXIT_BUSY
from kftune.steps._common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_common_arguments, run_main

log = logging.getLogger(__name__)

#: Pipeline parameters a command line may override (option name -> parameter).
OVERRIDES = {"corpus": "corpus", "downsample": "downsample", "max_trials": "max_trials",
             "parallel_trials": "parallel_trials", "max_epochs": "max_epochs", "seed": "seed"}


def _first_problem(exc: ConfigError) -> str:
    problems = exc.problems
    head = str(problems[0]) if problems else str(exc)
    more = f" (and {len(problems) - 1} more problem(s): kftune validate shows all)" if len(problems) > 1 else ""
    return head + more




def _summary_lines(summary: dict[str, Any], out: Path, seconds: float) -> list[str]:
    lines = [f"kftune run {summary.get('run_id')}: done in {seconds:.1f} s"]
    best = summary.get("best")
    metric = (summary.get("objective") or {}).get("metric", "objective")
    if best:
        params = ", ".join(f"{k}={_short(v)}" for k, v in (best.get("assignment") or {}).items())
        lines.append(f"  best trial:      {best.get('trial')} ({metric} {_short(best.get('objective'))})")
        lines.append(f"  best parameters: {params or '-'}")
    test = summary.get("test")
    if test:
        lines.append(f"  test score:      {_short(test.get('score'))} ({test.get('metric')}, {test.get('examples')} "
                     f"{test.get('split', 'test')} examples)")
        if test.get("baseline"):
            lines.append(f"  vs baseline:     {baseline_line(test)}")
    trials = summary.get("trials")
    if trials:
        lines.append(f"  trials:          {trials['total']} ({trials['completed']} completed, {trials['pruned']} "
                     f"pruned, {trials['failed']} failed)")
    final = summary.get("final_training") or {}
    model_uri = final.get("model_uri")
    if model_uri:
        with_dev = final.get("train_with_dev_epochs")
        lines.append(f"  model:           {model_uri}"
                     + (f" (then trained on train + dev for {with_dev} epochs: trainWithDev)" if with_dev else ""))
        lines.append(f"  use it:          kftune predict --model {model_uri} --text '...'  |  "
                     f"kftune serve --model {model_uri}")
    report = summary.get("report") or {}
    if report:
        lines.append(f"  report:          {report.get('html')}")
    lines.append(f"  store:           {summary.get('store')}/runs/{summary.get('run_id')}/ "
                 "(trial journal, checkpoints, final model, report)")
    lines.append(f"  run directory:   {out}/ (KFP task outputs in kfp/, log in run.log, summary.json)")
    return lines


_METRIC_WORDS = {"accuracy": "accuracy", "token_accuracy": "token accuracy", "span_f1_micro": "span F1"}


def baseline_line(test: dict[str, Any]) -> str:
    """``test accuracy 0.882 vs baseline 0.834 (tf-idf + logistic regression): +4.8 points, tuning beat the
    baseline`` from the summary's ``test`` entry (which has a ``baseline``)."""
    from kftune.nlp.baseline import verdict

    b = test["baseline"]
    metric = _METRIC_WORDS.get(str(test.get("metric")), str(test.get("metric")))
    return (f"{test.get('split', 'test')} {metric} {float(test['score']):.3f} vs baseline {float(b['score']):.3f} "
            f"({b.get('name') or b.get('method')}): {verdict(float(test['score']) - float(b['score']))}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune run",
        description="Run the kftune pipeline locally (KFP's local runner, one subprocess per task): corpus, LR range "
                    "test, search rounds, finalists, final training, evaluation and report.")
    p.add_argument("spec", metavar="SPEC.yaml", help="the TuningJob spec")
    p.add_argument("--out", help="run directory for the KFP task outputs and the log (default ./runs/<name>-<time>)")
    p.add_argument("--store", help="store root for the trial journal, checkpoints and report: a directory or "
                                   "s3://bucket/prefix (KFTUNE_S3_* set the endpoint and credentials); "
                                   "default $KFTUNE_STORE, else <out>/store")
    p.add_argument("--run-id", help="names the run in the store (runs/<run-id>/); default <name>-<time>")
    p.add_argument("--warm-start", action="store_true",
                   help="start the search around the best trials of earlier runs under the same store root")
    over = p.add_argument_group("overrides (pipeline parameters; default: the spec's values)")
    over.add_argument("--corpus", help="a registered corpus name or a corpus URI")
    over.add_argument("--downsample", type=float, help="fraction of train and dev to keep")
    over.add_argument("--max-trials", type=int)
    over.add_argument("--parallel-trials", type=int)
    over.add_argument("--max-epochs", type=int)
    over.add_argument("--seed", type=int, help="corpus split and training seed")
    over.add_argument("--no-baseline", dest="baseline", action="store_false",
                      help="skip the baseline scored beside the tuned model (sets spec.evaluation.baseline: false)")
    add_common_arguments(p)
    return p


def _body(args: argparse.Namespace) -> int:
    from kftune.io.specfile import load_spec

    try:
        job = load_spec(args.spec)
    except ConfigError as exc:
        print(f"kftune run: {exc.source or args.spec}: {_first_problem(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    from kftune.pipelines.local_runner import PipelineFailed, run_pipeline
    from kftune.pipelines.pipeline import arguments_for_spec, build_pipeline, rounds_for

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = args.run_id or f"{job.name}-{stamp}"
    out = Path(args.out or Path("runs") / run_id).expanduser().resolve()
    store = args.store or os.environ.get("KFTUNE_STORE") or str(out / "store")
    if "://" not in store:
        store = str(Path(store).expanduser().resolve())
    try:
        arguments = arguments_for_spec(job, variant="cpu", store=store, run_id=run_id, warm_start=args.warm_start,
                                       cluster=False)
        for option, name in OVERRIDES.items():
            value = getattr(args, option)
            if value is not None:
                arguments[name] = value
        if not args.baseline:
            spec = json.loads(arguments["spec"])
            spec["spec"].setdefault("evaluation", {})["baseline"] = False
            arguments["spec"] = json.dumps(spec, sort_keys=True)
        rounds = rounds_for(arguments)
    except ConfigError as exc:
        print(f"kftune run: {args.spec}: cannot run: {_first_problem(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    pipeline = build_pipeline("cpu", search_rounds=rounds)
    lease = _take_lease(store, run_id)
    if lease is None:
        return EXIT_BUSY
    arguments["lease_owner"] = lease.owner  # the pipeline's tasks find the lease theirs; this process renews it
    print(f"kftune run {run_id}: {job.name}, {rounds} search round(s) + finalists; outputs in {out}", flush=True)
    started = time.monotonic()
    try:
        task = run_pipeline(pipeline, arguments, out, sys.stdout)
    except PipelineFailed as exc:
        print(f"kftune run {run_id}: {exc} (details: {out / 'run.log'})", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        lease.release()
    seconds = time.monotonic() - started
    summary = json.loads(task.output)
    summary["run_directory"] = str(out)
    summary["seconds"] = round(seconds, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print("\n".join(_summary_lines(summary, out, seconds)))
    return EXIT_OK


def _take_lease(store: str, run_id: str) -> Any:
    """The run's lease (one driver per run, :mod:`kftune.io.lease`), renewed in the background while the run
    lasts; ``None`` (after saying who holds it) when another process drives the run. A lease left by a
    ``kftune run`` or ``kftune search`` of this machine that was killed is taken over at once."""
    from kftune.io.journal import lease_key
    from kftune.io.lease import LeaseHeldError, RunLease
    from kftune.io.store import open_store

    logging.getLogger("kftune.io.lease").setLevel(logging.WARNING)  # kftune run prints its own lines
    lease = RunLease(open_store(store), lease_key(run_id), run_id=run_id, purpose="kftune run")
    try:
        lease.acquire()
    except LeaseHeldError as exc:
        holder = exc.holder.describe(time.time()) if exc.holder is not None else "another driver"
        print(f"kftune run {run_id}: this run is driven by another process: {holder}. Wait until it ends, or give "
              f"this one another --run-id; if that process is dead, delete {lease.uri}", file=sys.stderr)
        return None
    lease.start_heartbeat()
    return lease


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
