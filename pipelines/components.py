"""The pipeline's lightweight components: thin wrappers that call the kftune steps.

Each function below becomes a KFP component (:func:`make_components`) whose ``base_image`` is the
kftune image of this package version (:func:`kftune._image.image`) with ``install_kfp_package=False``
(the image has ``kfp`` installed). KFP embeds a component's source in the compiled YAML and runs it
in the image, or in a subprocess of the current interpreter under ``kftune run``; so each body is
self-contained: it imports ``kftune.steps.<step>`` (and what else it needs) *inside* the function,
calls the step's ``run()``, and logs the result to KFP's typed outputs. Compiling the pipeline imports
neither torch nor the steps. The first docstring line of a component is its description; the
``Args:`` entries become the descriptions of its inputs.

Each body parses its inputs (the effective spec from the ``job_spec`` artifact, JSON parameters), calls
one step, and logs the result; the logic lives in the steps, which are tested without KFP. Data flow
(see :mod:`kftune.pipelines.pipeline`):

- ``resolve-spec`` (:func:`kftune.steps.resolve.run`) applies the run's parameters to the TuningJob spec,
  validates it, sizes the search in rounds and decides the run id; its ``job_spec`` artifact (the
  effective spec as JSON) feeds every later step;
- ``prepare-corpus`` (:func:`kftune.steps.corpus.run`, the only cached task) writes the corpus as a
  ``Dataset`` directory;
- ``lr-range-test`` (:func:`kftune.steps.search_space.run`) runs the LR range test, hands its range to the
  search space, narrows the space around earlier runs' best trials for a warm start, and writes it to
  the run's journal (``runs/<run>/search/space.json``);
- per round, ``suggest`` (:func:`kftune.steps.suggest.run`) plans the round with the planner rule that
  ``kftune search`` uses (:meth:`kftune.core.search_policy.SearchPolicy.plan_round`) and returns it in
  batches of ``parallel_trials``; ``trial`` (:func:`kftune.steps.trial.run_planned`) trains one request
  and writes its record to the journal; the last round re-trains the finalists;
- ``select-best`` (:func:`kftune.steps.select_best.run`) names the winner and writes ``best.json`` (the
  schema ``kftune search`` writes), ``final-training`` (:func:`kftune.steps.train.run`) trains it (and
  returns the model's URI in the store), ``evaluate`` scores it on the test split, ``report`` writes the
  report;
- ``deploy`` (only when the run's ``deploy`` parameter is true) creates or patches the KServe
  InferenceService that serves the final model (:func:`kftune.steps.deploy.run`).

Every ``runs/<run>/...`` object is reached through :class:`kftune.io.journal.RunJournal`.

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
            the spec's corpus (or corpora); another replaces them.
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

    from kftune.steps import resolve as step

    r = step.run(step.ResolveConfig(spec=spec, corpus=corpus, downsample=downsample, max_trials=max_trials,
                                    parallel_trials=parallel_trials, max_epochs=max_epochs, seed=seed, store=store,
                                    run_id=run_id, job_id=job_id, search_rounds=search_rounds))
    with open(job_spec.path, "w", encoding="utf-8") as f:
        json.dump(r.spec, f, indent=2, sort_keys=True)
    job_spec.metadata.update({"name": r.job.name, "run_id": r.run_id})
    out = collections.namedtuple("Resolved", ["spec", "corpus_config", "run_id", "store", "search_rounds"])
    return out(r.spec_json, r.corpus_config_json, r.run_id, r.store, r.search_rounds)


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
    import json
    from pathlib import Path

    from kftune.core.spec import parse_spec
    from kftune.steps import search_space as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    Path(lr_test.path).mkdir(parents=True, exist_ok=True)
    result = step.run(step.SearchSpaceConfig(corpus=corpus.path, store=store, run_id=run_id, lr_out=lr_test.path,
                                             warm_start=warm_start), job=job)
    Path(curve.path).write_text(result.html, encoding="utf-8")
    Path(summary.path).write_text(result.markdown, encoding="utf-8")
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    return json.dumps(result.document, sort_keys=True)


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

    The planner rule is kftune search's (kftune.core.search_policy.SearchPolicy.plan_round): a round is as
    wide as max(parallelTrialCount, ceil(remaining trials / rounds left)), so the search ends within the
    pipeline's rounds. The round's plan is written to the store (runs/<run_id>/search/rounds/). A round
    with nothing to do returns one "skip" item: a ParallelFor must not run over an empty list.

    Args:
        search_space: The search space as JSON (lr-range-test's output; the journal's space.json is read).
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

    from kftune.core.spec import parse_spec
    from kftune.steps import suggest as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    result = step.run(step.SuggestConfig(store=store, run_id=run_id, round_index=round_index,
                                         search_rounds=search_rounds, finalists=finalists, lease_owner=lease_owner,
                                         job_id=job_id), job=job)
    print(f"round {round_index}: {len(result.requests)} request(s) "
          f"({sum(r.promotion for r in result.requests)} promotion(s)) from {result.history} trial(s)"
          + (f"; {result.note}" if result.note else ""))
    return result.batches(parallel_trials if parallel_trials > 0 else job.spec.search.parallel_trial_count,
                          run_id, store)


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

    from kftune.core.search_policy import TrialRequest
    from kftune.core.spec import parse_spec
    from kftune.steps import trial as step

    request = TrialRequest.from_dict(data["request"])
    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    result = step.run_planned(request, corpus=corpus.path, store=data["store"], run_id=data["run_id"], job=job)
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
    from the trial journal; write best.json (the schema kftune search writes), the trials table and plot.

    Args:
        search_space: The search space as JSON (lr-range-test's output; the journal's space.json is read).
        history: The last round's results (the barrier; the journal in the store is what counts).
    """
    import json
    from pathlib import Path

    from kftune.core.spec import parse_spec
    from kftune.steps import select_best as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    result = step.run(step.SelectBestConfig(store=store, run_id=run_id), job=job)
    Path(table.path).write_text(result.markdown, encoding="utf-8")
    Path(plot.path).write_text(result.html, encoding="utf-8")
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    return json.dumps(result.best, sort_keys=True)


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
    epoch; the model directory holds model.pt, result.json, loss.tsv and training_curve.png (and, with
    train.writeWeights, weights.tsv and weights.png).

    Args:
        best: The winner as JSON (select-best's output).
    """
    import base64
    import dataclasses
    import html
    import json
    from pathlib import Path

    from kftune.core.spec import parse_spec
    from kftune.io.journal import RunJournal
    from kftune.io.store import open_store
    from kftune.nlp.config import Hyperparameters, TrainerConfig
    from kftune.steps import train as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    winner = json.loads(best)
    hp = Hyperparameters.from_mapping({**dict(job.spec.model), **winner["assignment"]}, job.spec.task.type,
                                      path="final.hyperparameters")
    trainer = TrainerConfig(**dataclasses.asdict(job.spec.train))
    out = RunJournal.open(store, run_id).run_uri("final")
    result = step.run(step.TrainConfig(corpus=corpus.path, out=out, hyperparameters=hp, trainer=trainer,
                                       task_type=job.spec.task.type, resume=True, run_id=run_id, trial="final",
                                       show_progress=False))
    source = open_store(out)
    target = Path(model.path)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "result.json", "loss.tsv", "training_curve.png", "weights.tsv", "weights.png"):
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

    from kftune.io.journal import RunJournal
    from kftune.steps import report as step

    journal = RunJournal.open(store, run_id)
    with tempfile.TemporaryDirectory(prefix="kftune-report-") as tmp:
        spec_file, best_file = Path(tmp) / "spec.json", Path(tmp) / "best.json"
        shutil.copyfile(job_spec.path, spec_file)
        best_file.write_text(best, encoding="utf-8")
        lr = lr_test.path if (Path(lr_test.path) / "result.json").is_file() else None
        result = step.run(step.ReportConfig(
            out=journal.run_uri("report"), corpus=corpus.path, lr_find=lr,
            trials=journal.run_uri("search/trials"), best=str(best_file), train=model.path,
            evaluation=evaluation.path, spec=str(spec_file)))
        from kftune.io.store import open_store

        out = open_store(result.out)
        out.get_file(step.REPORT_MD, markdown.path)
        out.get_file(step.REPORT_HTML, page.path)
    from kftune.io.lease import pipeline_owner, release_for_pipeline

    release_for_pipeline(journal.store, run_id, pipeline_owner(lease_owner, job_id))
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
