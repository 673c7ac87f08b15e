"""The pipeline's lightweight components: thin wrappers that call the kftune steps.

Each function below becomes a KFP component (:func:`make_components`) whose ``base_image`` is the
kftune image of this package version (:func:`kftune._image.image`) with ``install_kfp_package=False``
(the image has ``kfp`` installed). KFP embeds a component's source in the compiled YAML and runs it
in the image, or in a subprocess of the current interpreter under ``kftune run``; so each body is
self-contained: it imports ``kftune.steps.<step>`` (and what else it needs) *inside* the function,
calls the step's ``run()``, and logs the result to KFP's typed outputs. Compiling the pipeline imports
neither torch nor the steps. The first docstring line of a component is its description; the
``Args:`` entries become the descriptions of its inputs.

Data flow (see :mod:`kftune.pipelines.pipeline`):

- ``resolve-spec`` applies the run's parameters to the TuningJob spec, validates it, and decides the
  run id; its ``job_spec`` artifact (the effective spec as JSON) feeds every later step;
- ``prepare-corpus`` (the only cached task) writes the corpus as a ``Dataset`` directory;
- ``lr-range-test`` runs the LR range test, hands its range to the search space, narrows the space
  around earlier runs' best trials for a warm start, and writes it to the store
  (``runs/<run>/search/space.json``);
- per round, ``suggest`` plans the round (:func:`kftune.core.search_policy.SearchPolicy.plan`) and
  returns it in batches of ``parallel_trials``; ``trial`` trains one request
  (:func:`kftune.steps.trial.run`) and writes its record to the store; the last round re-trains the
  finalists;
- ``select-best`` names the winner (:func:`kftune.core.search_policy.select_best`),
  ``final-training`` trains it (and returns the model's URI in the store), ``evaluate`` scores it on
  the test split, ``report`` writes the report;
- ``deploy`` (only when the run's ``deploy`` parameter is true) creates or patches the KServe
  InferenceService that serves the final model (:func:`kftune.steps.deploy.run`).

Data inside a ``ParallelFor`` travels in the loop items and in artifacts only: KFP 2.17's local runner
replaces every task-output *parameter* that enters a loop by the loop item (see docs/design/kfp.md), so
a trial item carries its run id and store, and the spec reaches trials as an artifact.
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

# --------------------------------------------------------------------------------------------------
# The component functions. Nothing outside a function body is available when it runs.
# --------------------------------------------------------------------------------------------------


def resolve_spec(
    spec: str,
    corpus: str,
    downsample: float,
    max_trials: int,
    parallel_trials: int,
    max_epochs: int,
    seed: int,
    store: str,
    run_id: str,
    job_id: str,
    search_rounds: int,
    job_spec: Output[Artifact],
) -> NamedTuple("Resolved", [("spec", str), ("corpus_config", str), ("run_id", str), ("store", str),
                             ("search_rounds", int)]):
    """Apply the run's parameters to the TuningJob spec, validate it, and fix the run id.

    Parameters set to 0 (or -1 for seed, "" for corpus) keep the spec's value; a smaller max_epochs
    also lowers the halving rule's max_budget to it. The search must fit the pipeline's search rounds:
    it is simulated round by round with the same planning rule as the suggest step, and a spec that
    needs more rounds fails here, before any work. (With asha, whose promotions depend on the results,
    the rounds bound the search: promotions still pending after the last round are not run.)

    Args:
        spec: The TuningJob spec as JSON (kftune run and kftune submit fill it from the spec file).
        corpus: A registered corpus name (TREC_6, WNUT_17, UD_ENGLISH, ...) or a corpus URI; empty keeps
            the spec's corpus.
        downsample: Fraction of train and dev to keep, in (0, 1]; 0 keeps the spec's corpus.downsample.
        max_trials: The search's maxTrialCount; 0 keeps the spec's.
        parallel_trials: The search's parallelTrialCount (trials at once); 0 keeps the spec's.
        max_epochs: train.maxEpochs (per trial and for the final model); 0 keeps the spec's.
        seed: Seed of the corpus split and of training (corpus.seed and train.seed); -1 keeps the spec's.
        store: Store root for the trial journal and checkpoints (s3://bucket/prefix or a local path).
        run_id: Names the run's folder in the store (runs/<run_id>/); empty uses the KFP run id.
        job_id: The KFP run id (a placeholder the backend fills).
        search_rounds: Search rounds the pipeline was compiled with; 0 only computes how many the spec needs.
    """
    import collections
    import json
    import math
    import random
    import re

    from kftune.core.errors import ConfigError, Problem
    from kftune.core.search_policy import SearchPolicy
    from kftune.core.spec import job_to_dict, parse_spec
    from kftune.core.trials import Trial
    from kftune.io.specfile import model_hooks

    problems = []
    try:
        data = json.loads(spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError([Problem("parameter spec", f"not JSON ({exc}); pass the TuningJob as JSON "
                                                     "(kftune run and kftune submit do)")]) from None
    if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
        raise ConfigError([Problem("parameter spec", "not a TuningJob: a JSON object with apiVersion, kind, "
                                                     "metadata and spec")])
    body = data["spec"]

    def section(key):
        value = body.get(key)
        if value is None:
            value = body[key] = {}
        if not isinstance(value, dict):
            raise ConfigError([Problem(f"spec.{key}", "must be a mapping")])
        return value

    if not isinstance(corpus, str):
        problems.append(Problem("parameter corpus", f"{corpus!r} is not a string"))
    elif corpus.strip() and corpus.strip() not in (section("corpus").get("name"), section("corpus").get("uri")):
        # another corpus than the spec's (the spec's own keeps every setting: tokenizer, labelMap, ...)
        value = corpus.strip()
        block = section("corpus")
        keep = {k: block[k] for k in ("downsample", "devFraction", "seed") if k in block}
        if "://" in value or "/" in value or value.startswith("."):  # a URI or a path, not a registered name
            if block.get("name") is not None:  # a registered corpus has no format options to keep
                block = {}
            block.pop("name", None)
            block["uri"] = value
        else:
            block = {"name": value}
        block.update(keep)
        body["corpus"] = block
    if downsample < 0 or downsample > 1:
        problems.append(Problem("parameter downsample", f"{downsample} is not in (0, 1]; 0 keeps the spec's value"))
    elif downsample > 0:
        section("corpus")["downsample"] = float(downsample)
    for name, value, where, key in (("max_trials", max_trials, "search", "maxTrialCount"),
                                    ("parallel_trials", parallel_trials, "search", "parallelTrialCount"),
                                    ("max_epochs", max_epochs, "train", "maxEpochs")):
        if value < 0:
            problems.append(Problem(f"parameter {name}", f"{value} is negative; 0 keeps the spec's {where}.{key}"))
        elif value > 0:
            section(where)[key] = int(value)
    rule = section("search").get("earlyStopping")
    if max_epochs > 0 and isinstance(rule, dict) and isinstance(rule.get("algorithmSettings"), list):
        for setting in rule["algorithmSettings"]:  # fewer epochs: the last rung comes down with them
            if isinstance(setting, dict) and setting.get("name") == "max_budget":
                try:
                    if int(str(setting.get("value"))) > max_epochs:
                        setting["value"] = str(int(max_epochs))
                except ValueError:
                    pass  # the spec's own check reports it
    if seed < -1:
        problems.append(Problem("parameter seed", f"{seed} is below -1; -1 keeps the spec's seeds"))
    elif seed >= 0:
        section("corpus")["seed"] = int(seed)
        section("train")["seed"] = int(seed)
    store = (store or "").strip().rstrip("/")
    if not store:
        problems.append(Problem("parameter store", "empty: give the store root, e.g. s3://kftune/tuning"))
    elif "://" in store and not store.startswith(("s3://", "file://")):
        problems.append(Problem("parameter store", f"{store!r}: use s3://bucket/prefix or a local path"))
    run = (run_id or "").strip() or (job_id or "").strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", run):
        problems.append(Problem("parameter run_id", f"{run!r} cannot name a store folder: use letters, digits, "
                                                    "'.', '_' and '-'"))
    if problems:
        raise ConfigError(problems)

    validator, names = model_hooks()
    job = parse_spec(data, source="the spec with this run's parameters", model_validator=validator,
                     hyperparameter_names=names)
    policy = SearchPolicy.from_job(job)

    # Simulate the search: the same planning rule as the suggest step (a round's width is
    # max(parallel, ceil(remaining trials / rounds left))), with results that never reach the goal.
    def simulate(rounds):
        history, by_id = [], {}
        goal = job.spec.search.objective.goal
        sign = 1.0 if policy.objective_type == "maximize" else -1.0
        for r in range(rounds):
            remaining = max(0, policy.max_trials - len(history))
            width = max(policy.parallel, -(-remaining // max(1, rounds - r)))
            requests = policy.plan(history, r, width)
            if not requests:
                return True
            for q in requests:
                value = random.Random(q.index).uniform(0.2, 0.8)
                if goal is not None:
                    value = goal - sign * (1.0 + value)
                state = "completed" if q.budget >= policy.max_budget else "pruned"
                trial = Trial(id=q.trial_id, assignment=dict(q.assignment), state=state, objective=value,
                              intermediate=tuple((e, value) for e in range(1, q.budget + 1)), budget=q.budget,
                              extra={"index": q.index, "budget_asked": q.budget})
                if q.trial_id in by_id:
                    history[by_id[q.trial_id]] = trial
                else:
                    by_id[q.trial_id] = len(history)
                    history.append(trial)
        return not policy.plan(history, rounds, policy.parallel)

    limit = 256
    if search_rounds > 0:
        if not simulate(search_rounds):
            needed = next((r for r in range(search_rounds + 1, limit + 1) if simulate(r)), None)
            raise ConfigError([Problem(
                "spec.search", f"this search needs {needed or f'more than {limit}'} rounds, but the pipeline was "
                               f"compiled with {search_rounds} (one per suggest -> trials -> barrier): use `kftune "
                               "submit` or `kftune run`, which compile for the spec, or `kftune compile --rounds "
                               f"{needed or limit}`")])
        rounds = search_rounds
    else:
        # as many rounds as the local search uses (parallelTrialCount requests each), more when the
        # early-stopping rungs need them
        rounds = min(limit, math.ceil(policy.max_trials / policy.parallel))
        while not simulate(rounds):
            if rounds >= limit:
                raise ConfigError([Problem("spec.search", f"the search does not end within {limit} rounds")])
            rounds += 1
        rule = policy.halving
        if rule is not None and not rule.synchronous:
            # asha promotes as results arrive, so how many promotions remain depends on the results:
            # room for one more chain of promotions through every rung
            rounds = min(limit, rounds + len(rule.rungs()) - 1)

    effective = job_to_dict(job)
    with open(job_spec.path, "w", encoding="utf-8") as f:
        json.dump(effective, f, indent=2, sort_keys=True)
    job_spec.metadata.update({"name": job.name, "run_id": run})
    c, task = job.spec.corpus, job.spec.task
    text = c.text_column
    corpus_config = {
        "name": c.name, "uri": c.uri, "train": c.train, "dev": c.dev, "test": c.test, "format": c.format,
        "sha256": c.sha256,
        "text_columns": [str(t) for t in (text if isinstance(text, tuple) else (text,))] if text is not None else [],
        "label_column": None if c.label_column is None else str(c.label_column),
        "label_map": dict(c.label_map) if c.label_map is not None else None, "label_prefix": c.label_prefix,
        "token_column": c.token_column, "delimiter": c.delimiter, "header": c.header, "quoting": c.quoting,
        "encoding": c.encoding, "label_type": task.label_type, "tag_scheme": c.tag_scheme or "auto",
        "tokenizer": c.tokenizer.to_spec() if c.tokenizer is not None else None,
        "downsample": c.downsample, "dev_fraction": c.dev_fraction, "seed": c.seed,
        # a URI without a sha256 is taken as given: the spec names no checksum to verify it against
        "allow_unverified": c.uri is not None and c.sha256 is None,
    }
    out = collections.namedtuple("Resolved", ["spec", "corpus_config", "run_id", "store", "search_rounds"])
    return out(json.dumps(effective, sort_keys=True), json.dumps(corpus_config, sort_keys=True), run, store, rounds)


def prepare_corpus(corpus_config: str, corpus: Output[Dataset], card: Output[Markdown], metrics: Output[Metrics]):
    """Prepare the corpus: download and verify it, split and downsample it, write JSONL and a card.

    Args:
        corpus_config: The corpus step's settings as JSON (from resolve-spec; the cache key of this task).
    """
    import json
    import shutil
    from pathlib import Path

    from kftune.steps import corpus as step

    settings = json.loads(corpus_config)
    settings["text_columns"] = tuple(settings.get("text_columns") or ())
    result = step.run(step.CorpusConfig(out=corpus.path, **settings))
    shutil.copyfile(Path(corpus.path) / "card.md", card.path)
    for split, stats in result.splits.items():
        metrics.log_metric(f"{split}_examples", stats.examples)
        metrics.log_metric(f"{split}_tokens", stats.tokens)
    metrics.log_metric("labels", len(result.labels))
    corpus.metadata.update({"name": result.name, "task": result.task, "label_type": result.label_type,
                            "labels": len(result.labels)})


def lr_range_test(
    job_spec: Input[Artifact],
    corpus: Input[Dataset],
    run_id: str,
    store: str,
    warm_start: bool,
    lr_test: Output[Artifact],
    curve: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
) -> str:
    """Run the LR range test and set the search space: the learning-rate range from the test, then
    (warm start) narrowed around earlier runs' best trials.

    The space goes to the store as runs/<run_id>/search/space.json (the trials read it there) and is
    returned as JSON. With lrRangeTest.enabled false the test is skipped and the spec's space is used.

    Args:
        run_id: The run (resolve-spec's run_id).
        store: The store root (resolve-spec's store).
        warm_start: Narrow the space around the best trials that earlier runs under the same store root recorded.
    """
    import html
    import json
    import re
    import tempfile
    from pathlib import Path

    from kftune.core.lr_handoff import apply_lr_range
    from kftune.core.search_policy import search_prefix
    from kftune.core.space import SearchSpace, narrow
    from kftune.core.spec import parse_spec
    from kftune.core.trials import Trial, ranked
    from kftune.io.store import open_store, put_json

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    search = job.spec.search
    space = SearchSpace.from_parameters(search.parameters)
    lines = ["# Learning-rate range test", ""]
    cfg = job.spec.lr_range_test
    Path(lr_test.path).mkdir(parents=True, exist_ok=True)
    if cfg.enabled:
        from kftune.steps import lr_find

        with tempfile.TemporaryDirectory(prefix="kftune-lr-") as tmp:
            spec_file = Path(tmp) / "spec.json"
            spec_file.write_text(Path(job_spec.path).read_text(encoding="utf-8"), encoding="utf-8")
            result = lr_find.run(lr_find.LrFindConfig(corpus=corpus.path, out=lr_test.path, spec=str(spec_file)))
        params, note = apply_lr_range(space.to_parameters(), result.record, cfg.apply_to)
        space = SearchSpace(SearchSpace.from_parameters(params).parameters, space.notes + (note["reason"],))
        out = Path(lr_test.path)
        Path(curve.path).write_text((out / "summary.html").read_text(encoding="utf-8"), encoding="utf-8")
        lines = [(out / "summary.md").read_text(encoding="utf-8").rstrip(), ""]
        for name, value in result.metrics.items():
            metrics.log_metric(name, value)
    else:
        text = "The LR range test is off (spec.lrRangeTest.enabled: false): the search uses the spec's space."
        lines += [text, ""]
        Path(curve.path).write_text(f"<html><body><p>{html.escape(text)}</p></body></html>\n", encoding="utf-8")

    if warm_start:
        root = open_store(store)
        pattern = re.compile(r"runs/([^/]+)/search/trials/[^/]+\.json")
        earlier = []
        for key in root.list("runs"):
            m = pattern.fullmatch(key)
            if m is None or m.group(1) == run_id:
                continue
            try:
                record = json.loads(root.get_bytes(key).decode("utf-8"))
                t = Trial.from_dict(record)
            except Exception as exc:  # noqa: BLE001 - an unreadable record of another run is skipped
                print(f"warm start: skipping {root.uri_for(key)}: {exc}")
                continue
            if record.get("objective_metric", search.objective.objective_metric_name) == \
                    search.objective.objective_metric_name:
                earlier.append((m.group(1), t))
        settings = search.algorithm.settings()
        top_k = int(settings.get("top_k", 3))
        shrink = float(settings.get("shrink", 0.5))
        best = ranked([t for _, t in earlier], search.objective.type, ("completed", "pruned"))[:top_k]
        centers = {}
        for p in space:
            values = [t.assignment[p.name] for t in best if p.name in t.assignment and p.contains(t.assignment[p.name])]
            if values:
                centers[p.name] = values
        runs = sorted({r for r, t in earlier})
        if centers:
            space = narrow(space, centers, shrink, reason=f"warm start: the best {len(best)} of {len(earlier)} "
                                                          f"trials of earlier runs {', '.join(runs)}")
        else:
            space = SearchSpace(space.parameters, space.notes + (
                "warm start: no earlier trial with a result under this store root; the search starts cold",))

    document = {"parameters": space.to_katib(), "notes": list(space.notes)}
    put_json(open_store(store), f"{search_prefix(run_id)}/space.json", document)
    lines += ["## Search space", "", "| parameter | type | feasible space |", "| --- | --- | --- |"]
    for p in document["parameters"]:
        lines.append(f"| {p['name']} | {p['parameterType']} | `{json.dumps(p['feasibleSpace'], sort_keys=True)}` |")
    lines += [""] + [f"- {n}" for n in document["notes"]]
    Path(summary.path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json.dumps(document, sort_keys=True)


def suggest(
    job_spec: Input[Artifact],
    search_space: str,
    run_id: str,
    store: str,
    round_index: int,
    search_rounds: int,
    parallel_trials: int,
    finalists: bool,
    lease_owner: str,
    job_id: str,
    history: List[List[str]] = [],  # noqa: B006 - KFP reads the default; nothing mutates it
) -> List[List[str]]:
    """Plan one search round from the trial journal: new trials and promotions (or the finalists'
    extra runs), in batches of parallel_trials.

    A round is as wide as max(parallel_trials, ceil(remaining trials / rounds left)), so the search
    ends within the pipeline's rounds. The round's plan is written to the store
    (runs/<run_id>/search/rounds/). A round with nothing to do returns one "skip" item: a ParallelFor
    must not run over an empty list.

    Args:
        search_space: The search space as JSON (lr-range-test's output).
        round_index: This round's number (0-based).
        search_rounds: The pipeline's number of search rounds (the finalists' round comes after them).
        parallel_trials: Trials at once: the batch width (0: the spec's parallelTrialCount).
        finalists: Plan the finalists' extra runs instead of a search round.
        lease_owner: Who holds the run's lease (kftune run passes its own); empty: this KFP run.
        job_id: The KFP run id (a placeholder the backend fills).
        history: The previous round's trial results (the barrier; the journal in the store is what counts).
    """
    import json
    from pathlib import Path

    from kftune.core.search_policy import SearchPolicy, history_from_records, round_key, search_prefix
    from kftune.io.lease import hold_for_pipeline, pipeline_owner
    from kftune.core.space import SearchSpace
    from kftune.core.spec import parse_spec
    from kftune.io.store import get_json, open_store, put_json

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    document = json.loads(search_space)
    space = SearchSpace.from_katib(document["parameters"])
    root = open_store(store)
    hold_for_pipeline(root, run_id, pipeline_owner(lease_owner, job_id))  # one driver per run: or it fails here
    prefix = f"{search_prefix(run_id)}/trials"
    records = [get_json(root, key) for key in root.list(prefix) if key.endswith(".json")]
    trials = history_from_records(records)
    running = [t.id for t in trials if t.state == "running"]
    if running:  # every trial task of the previous round has ended (the barrier): someone else writes this run
        from kftune.core.errors import DataError

        raise DataError(
            f"trial record(s) {', '.join(running)} of run {run_id!r} say running, but every trial task of this "
            f"pipeline's earlier rounds has ended: another driver (a second pipeline run or `kftune search` with "
            f"the same run id) is writing this run, or a trial pod died without a result. Give this run its own "
            f"run_id, or delete those records to have them re-run ({root.uri_for(prefix)})")
    policy = SearchPolicy.from_job(job, space=space)
    width = parallel_trials if parallel_trials > 0 else policy.parallel
    if finalists:
        requests = [r.to_dict() for r in policy.finalist_requests(trials, round_index)]
        why = "no finalist re-runs (search.finalists is 0, finalistRuns adds no seed, or nothing completed)"
    else:
        remaining = max(0, policy.max_trials - len(trials))
        n = max(width, -(-remaining // max(1, search_rounds - round_index)))
        requests = [r.to_dict() for r in policy.plan(trials, round_index, n)]
        why = f"the search is over ({policy.end_reason(trials)})" if not requests else ""
    put_json(root, round_key(run_id, round_index), {
        "round": round_index, "kind": "finalists" if finalists else "search", "requests": requests,
        "history": len(trials), "previous_round": [json.loads(x) for batch in history for x in batch],
        "note": why or None})
    promotions = sum(r["promotion"] for r in requests)
    print(f"round {round_index}: {len(requests)} request(s) ({promotions} promotion(s)) from {len(trials)} trial(s)"
          + (f"; {why}" if why else ""))
    items = [json.dumps({"run_id": run_id, "store": store, "request": r}, sort_keys=True) for r in requests]
    if not items:
        items = [json.dumps({"skip": True, "round": round_index, "reason": why}, sort_keys=True)]
    return [items[i:i + width] for i in range(0, len(items), width)]


def trial(job_spec: Input[Artifact], corpus: Input[Dataset], item: str, metrics: Output[Metrics]) -> str:
    """Train one trial request (a new trial, a promotion resumed from its checkpoint, or a finalist's
    extra seed) and write its record to the store.

    A trial that fails in training is a result (state failed, with the reason), not a task failure;
    the search counts it against maxFailedTrialCount. Retries cover the infrastructure.

    Args:
        item: One request of the round as JSON (from suggest): run_id, store and the request; or a skip.
    """
    import json
    from pathlib import Path

    data = json.loads(item)
    if data.get("skip"):
        print(f"round {data.get('round')}: nothing to train ({data.get('reason')})")
        metrics.log_metric("skipped", 1)
        return json.dumps({"skip": True, "round": data.get("round")})

    from kftune.core.search_policy import TrialRequest, history_from_records, search_prefix
    from kftune.core.spec import parse_spec
    from kftune.io.store import get_json, open_store
    from kftune.steps import trial as step

    request = TrialRequest.from_dict(data["request"])
    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    root = open_store(data["store"])
    prefix = f"{search_prefix(data['run_id'])}/trials"
    judged = history_from_records(get_json(root, k) for k in root.list(prefix) if k.endswith(".json"))
    result = step.run(step.TrialConfig(
        corpus=corpus.path, store=data["store"], run_id=data["run_id"], trial_id=request.trial_id,
        assignment=request.assignment, budget=request.budget, resume=True, seeds=request.seeds,
        kind=request.kind, index=request.index, round=request.round, promotion=request.promotion,
        show_progress=False), job=job, store=root, stop_history=[t for t in judged if t.id != request.trial_id])
    record = result.record
    if record.get("objective") is not None:
        metrics.log_metric("objective", record["objective"])
    metrics.log_metric("epochs", record.get("budget") or 0)
    return json.dumps({"trial_id": request.trial_id, "kind": request.kind, "round": request.round,
                       "state": record["state"], "objective": record.get("objective"),
                       "budget": record.get("budget"), "reason": record.get("reason"), "record": result.uri},
                      sort_keys=True)


def select_best(
    job_spec: Input[Artifact],
    search_space: str,
    run_id: str,
    store: str,
    history: List[List[str]],
    table: Output[Markdown],
    plot: Output[HTML],
    metrics: Output[Metrics],
) -> str:
    """Name the winner: the finalist with the best mean objective over seeds (else the best trial),
    from the trial journal; write the trials table and plot.

    Args:
        search_space: The search space as JSON (lr-range-test's output).
        history: The last round's results (the barrier; the journal in the store is what counts).
    """
    import json
    from pathlib import Path

    from kftune.core.errors import DataError
    from kftune.core.search_policy import history_from_records
    from kftune.core.search_policy import select_best as choose
    from kftune.core.search_policy import search_prefix
    from kftune.core.space import SearchSpace
    from kftune.core.spec import parse_spec
    from kftune.io.store import get_json, open_store, put_json
    from kftune.steps.report import markdown_to_html, trials_markdown, trials_png

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    space = SearchSpace.from_katib(json.loads(search_space)["parameters"])
    root = open_store(store)
    prefix = search_prefix(run_id)
    records = [get_json(root, k) for k in root.list(f"{prefix}/trials") if k.endswith(".json")]
    finals = [get_json(root, k) for k in root.list(f"{prefix}/finalists") if k.endswith(".json")]
    trials = history_from_records(records)
    winner = choose(job, trials, finals, space=space)
    if winner is None:
        states = ", ".join(f"{t.id} {t.state}" + (f" ({t.reason})" if t.reason else "") for t in trials) or "none"
        raise DataError(f"no trial of run {run_id} has a result, so there is nothing to train: {states}")
    put_json(root, f"{prefix}/best.json", winner)
    objective = job.spec.search.objective
    lines = ["# Trials", "", f"Winner: **{winner['trial_id']}**, {objective.objective_metric_name} "
             f"{winner['objective']:.4f} ± {winner['spread']:.4f} over {len(winner['values'])} run(s) "
             f"(chosen on {winner['chosen_on']}): "
             + ", ".join(f"{k}={v}" for k, v in winner["assignment"].items()), ""]
    lines += trials_markdown(trials, winner["trial_id"])
    if winner["candidates"]:
        lines += ["", "## Finalists", "", "| trial | mean | spread | values | seeds |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['trial_id']} | {c['objective']:.4f} | {c['spread']:.4f} | "
                  f"{', '.join(f'{v:.4f}' for v in c['values'])} | {', '.join(map(str, c['seeds']))} |"
                  for c in winner["candidates"]]
    text = "\n".join(lines) + "\n"
    Path(table.path).write_text(text, encoding="utf-8")
    images = {"trials.png": trials_png(trials, objective.type, objective.objective_metric_name)} if trials else {}
    page = markdown_to_html(text + ("\n![trials](trials.png)\n" if images else ""), images, "kftune trials")
    Path(plot.path).write_text(page, encoding="utf-8")
    metrics.log_metric("best_objective", winner["objective"])
    metrics.log_metric("best_spread", winner["spread"])
    for state in ("completed", "pruned", "failed"):
        metrics.log_metric(f"trials_{state}", sum(t.state == state for t in trials))
    return json.dumps(winner, sort_keys=True)


def final_training(
    job_spec: Input[Artifact],
    corpus: Input[Dataset],
    best: str,
    run_id: str,
    store: str,
    model: Output[Model],
    curve: Output[HTML],
    metrics: Output[Metrics],
) -> str:
    """Train the final model with the winner's hyperparameters (spec.model plus the winner's
    assignment) for train.maxEpochs; returns the model's URI in the store (runs/<run_id>/final/model.pt).

    Checkpoints go to the store (runs/<run_id>/final/), so a retried task continues from the last
    epoch; the model directory holds model.pt, result.json, loss.tsv and training_curve.png.

    Args:
        best: The winner as JSON (select-best's output).
    """
    import base64
    import dataclasses
    import html
    import json
    from pathlib import Path

    from kftune.core.spec import parse_spec
    from kftune.io.store import open_store
    from kftune.nlp.config import Hyperparameters, TrainerConfig
    from kftune.steps import train as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    winner = json.loads(best)
    hp = Hyperparameters.from_mapping({**dict(job.spec.model), **winner["assignment"]}, job.spec.task.type,
                                      path="final.hyperparameters")
    trainer = TrainerConfig(**dataclasses.asdict(job.spec.train))
    out = f"{store}/runs/{run_id}/final"
    result = step.run(step.TrainConfig(corpus=corpus.path, out=out, hyperparameters=hp, trainer=trainer,
                                       task_type=job.spec.task.type, resume=True, run_id=run_id, trial="final",
                                       show_progress=False))
    source = open_store(out)
    target = Path(model.path)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "result.json", "loss.tsv", "training_curve.png"):
        if source.exists(name):
            source.get_file(name, target / name)
    model.metadata.update({"framework": "pytorch", "task": result.task, "dev_score": result.dev_score,
                           "epochs": result.epochs, "best_epoch": result.best_epoch, "trial": winner["trial_id"]})
    metrics.log_metric("dev_score", result.dev_score)
    metrics.log_metric("epochs", result.epochs)
    metrics.log_metric("best_epoch", result.best_epoch)
    image = ""
    if (target / "training_curve.png").is_file():
        data = base64.b64encode((target / "training_curve.png").read_bytes()).decode()
        image = f'<img alt="training curve" src="data:image/png;base64,{data}">'
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in sorted(result.hyperparameters.items()))
    Path(curve.path).write_text(
        f"<html><body><h1>Final training</h1><p>dev score {result.dev_score:.4f}, best epoch {result.best_epoch} "
        f"of {result.epochs} ({html.escape(result.status)})</p>{image}<h2>Hyperparameters</h2>"
        f"<table>{rows}</table></body></html>\n", encoding="utf-8")
    return result.model_uri or f"{out}/model.pt"


def evaluate(
    job_spec: Input[Artifact],
    corpus: Input[Dataset],
    model: Input[Model],
    evaluation: Output[Artifact],
    report: Output[Markdown],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> float:
    """Score the final model on the test split: metrics, a per-class report and the confusion matrix,
    and (spec.evaluation.baseline) the baseline trained on the same train split beside it; returns the
    main test score."""
    import json
    import shutil
    from pathlib import Path

    from kftune.core.spec import parse_spec
    from kftune.nlp.evaluation import to_kfp_confusion_matrix
    from kftune.steps import evaluate as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    result = step.run(step.EvaluateConfig(model=str(Path(model.path) / "model.pt"), corpus=corpus.path,
                                          out=evaluation.path, split="test", baseline=job.spec.evaluation.baseline))
    e = result.evaluation
    if e.has_confusion:
        categories, matrix = to_kfp_confusion_matrix(e)
        confusion.log_confusion_matrix(categories, matrix)
    for name, value in result.metrics.items():  # test_score, ..., baseline_test_score, delta_vs_baseline
        metrics.log_metric(name, value)
    shutil.copyfile(Path(evaluation.path) / "report.md", report.path)
    evaluation.metadata.update({"main_score_name": e.main_score_name, "main_score": e.main_score})
    if result.baseline is not None:
        evaluation.metadata.update({"baseline": result.baseline.method, "baseline_score": result.baseline.test_score,
                                    "delta_vs_baseline": result.delta_vs_baseline})
    return float(e.main_score)


def report(
    job_spec: Input[Artifact],
    corpus: Input[Dataset],
    lr_test: Input[Artifact],
    best: str,
    model: Input[Model],
    evaluation: Input[Artifact],
    run_id: str,
    store: str,
    lease_owner: str,
    job_id: str,
    markdown: Output[Markdown],
    page: Output[HTML],
) -> str:
    """Write the final report (corpus card, LR curve, trials, final training, evaluation) to the store
    and as Markdown and HTML; returns the summary as JSON.

    Args:
        best: The winner as JSON (select-best's output).
        run_id: The run; the report goes to runs/<run_id>/report/ in the store.
        store: The store root.
        lease_owner: Who holds the run's lease (suggest's); this last step releases it when the run's tasks hold it.
        job_id: The KFP run id (a placeholder the backend fills).
    """
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from kftune.steps import report as step

    with tempfile.TemporaryDirectory(prefix="kftune-report-") as tmp:
        spec_file, best_file = Path(tmp) / "spec.json", Path(tmp) / "best.json"
        shutil.copyfile(job_spec.path, spec_file)
        best_file.write_text(best, encoding="utf-8")
        lr = lr_test.path if (Path(lr_test.path) / "result.json").is_file() else None
        result = step.run(step.ReportConfig(
            out=f"{store}/runs/{run_id}/report", corpus=corpus.path, lr_find=lr,
            trials=f"{store}/runs/{run_id}/search/trials", best=str(best_file), train=model.path,
            evaluation=evaluation.path, spec=str(spec_file)))
        from kftune.io.store import open_store

        out = open_store(result.out)
        out.get_file(step.REPORT_MD, markdown.path)
        out.get_file(step.REPORT_HTML, page.path)
    from kftune.io.lease import pipeline_owner, release_for_pipeline

    release_for_pipeline(open_store(store), run_id, pipeline_owner(lease_owner, job_id))
    summary = dict(result.summary)
    summary["run_id"] = run_id
    summary["store"] = store
    return json.dumps(summary, sort_keys=True)


def deploy(
    job_spec: Input[Artifact],
    model_uri: str,
    service_name: str,
    namespace: str,
    image: str,
    registry: str,
    gpus: int,
    node_selector: dict,
    tolerations: list,
    timeout: int,
    service: Output[Markdown],
) -> str:
    """Serve the final model with KServe: create or patch its InferenceService (kftune deploy), then
    wait until KServe reports it Ready; returns the service (name, namespace, action, URL) as JSON.

    The run's ServiceAccount needs get, create and patch on inferenceservices.serving.kserve.io
    (manifests/base/rbac/deployer-role.yaml); the InferenceService's own ServiceAccount (kftune-serving)
    holds the store's credentials for KServe's storage initializer.

    Args:
        model_uri: The final model's URI in the store (final-training's output).
        service_name: The InferenceService's name; empty: made from the TuningJob's name.
        namespace: The InferenceService's namespace; empty: the run's own.
        image: The serving image; empty: this release's kftune-serving image (cpu, or cuda with GPUs).
        registry: Registry of the default serving image (set when the pipeline is compiled).
        gpus: GPUs of the model server; 0 serves on CPU.
        node_selector: Node labels the model server's pod must match (with GPUs only).
        tolerations: Tolerations of the model server's pod (with GPUs only; empty: the GPU nodes' taint).
        timeout: Seconds to wait until the InferenceService is Ready; 0 does not wait.
    """
    import json
    from pathlib import Path

    from kftune.steps import deploy as step

    job = json.loads(Path(job_spec.path).read_text(encoding="utf-8"))
    name = service_name.strip() or step.service_name_for(job["metadata"]["name"])
    result = step.run(step.DeployConfig(
        name=name, model=model_uri, namespace=namespace.strip(), image=image.strip() or None,
        registry=registry or None, gpus=gpus, node_selector=dict(node_selector) if gpus else {},
        tolerations=tuple(tolerations) if gpus and tolerations else None, wait=timeout > 0,
        timeout=float(timeout) if timeout > 0 else 600.0))
    state = {True: "Ready", False: "not ready yet", None: "not waited for"}[result.ready]
    lines = [f"# InferenceService {result.namespace}/{result.name}", "",
             f"{result.action.capitalize()}: serves `{result.model}` with `{result.image}` ({state}).", ""]
    if result.url:
        lines += [f"URL: {result.url}", "", f"- KServe V1: `POST {result.url}/v1/models/{result.name}:predict`",
                  f"- Open Inference Protocol (V2): `POST {result.url}/v2/models/{result.name}/infer`",
                  f"- plain: `POST {result.url}/predict`"]
    Path(service.path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json.dumps(result.to_dict(), sort_keys=True)


# --------------------------------------------------------------------------------------------------
# Making components with an image
# --------------------------------------------------------------------------------------------------

#: The component functions, in pipeline order. ``trial`` and ``final_training`` use the accelerator image.
FUNCTIONS = (resolve_spec, prepare_corpus, lr_range_test, suggest, trial, select_best, final_training, evaluate,
             report, deploy)
ACCELERATED = ("trial", "final_training")


class Components(NamedTuple):
    """The components of one pipeline variant (each a KFP ``PythonComponent``)."""

    resolve_spec: object
    prepare_corpus: object
    lr_range_test: object
    suggest: object
    trial: object
    select_best: object
    final_training: object
    evaluate: object
    report: object
    deploy: object


def make_components(image: str, accelerator_image: str | None = None) -> Components:
    """The components with ``base_image`` ``image`` (``accelerator_image`` for trial and final training)."""
    made = {}
    for func in FUNCTIONS:
        base = accelerator_image if accelerator_image and func.__name__ in ACCELERATED else image
        made[func.__name__] = dsl.component(func, base_image=base, install_kfp_package=False)
    return Components(**made)
