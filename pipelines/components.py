"""The pipeline's lightweight components: thin wrappers that call the kftune steps.

Each function below becomes a KFP component (:func:`make_components`) whose ``base_image`` is the
kftune image of this package version (:func:`kftune._image.image`) with ``install_kfp_package=False``
(the image has ``kfp`` installed). KFP embeds a component's source in the compiled YAML and runs it
in the image, or in a subprocess of the current interpreter under ``kftune run``; so each body is
self-contained: it imports ``kftune.steps.<step>`` (and what else it needs) *inside* the function,
calls the step's ``run()``, and logs the result to KFP's typed outputs. Compiling the pipeline imports
neither torch nor the steps. The first docstring line of a component is its description; the
``Args:`` entries become the descriptions of its inputs.

Each body parses its inputs (the effective spec from the ``job_spec`` artifact, once, into a
:class:`~kftune.core.spec.TuningJob`; JSON parameters), calls one function of one step (its ``run`` or a
``run_*`` variant for the pipeline) with the parsed objects, and logs the result to KFP's outputs; the logic
lives in the steps, which are tested without KFP (``tests/pipelines/test_components.py`` holds every body to
that: one step call, at most :data:`MAX_BODY_STATEMENTS` statements). Data flow
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
  batches of ``parallel_trials``; ``trial`` (:func:`kftune.steps.trial.run_item`, which hands a request to
  :func:`~kftune.steps.trial.run_planned`) trains one request and writes its record to the journal; the
  last round re-trains the finalists;
- ``select-best`` (:func:`kftune.steps.select_best.run`) names the winner and writes ``best.json`` (the
  schema ``kftune search`` writes), ``final-training`` (:func:`kftune.steps.train.run_final`) trains it (and
  returns the model's URI in the store), ``evaluate`` (:func:`kftune.steps.evaluate.run`) scores it on the
  test split, ``report`` (:func:`kftune.steps.report.run_pipeline`) writes the report and releases the
  run's lease;
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

#: The most statements a component body may have (imports included, the docstring not).
MAX_BODY_STATEMENTS = 15

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
    import shutil
    from pathlib import Path

    from kftune.steps import corpus as step

    result = step.run(step.CorpusConfig.from_settings(corpus_config, out=corpus.path))
    shutil.copyfile(Path(corpus.path) / "card.md", card.path)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    corpus.metadata.update(result.summary)


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

    from kftune.core.spec import parse_spec
    from kftune.steps import trial as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    result = step.run_item(item, corpus=corpus.path, job=job)
    if result.note:
        print(result.note)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    return json.dumps(result.summary, sort_keys=True)


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
    train.writeWeights, weights.tsv and weights.png). With train.trainWithDev the best run then trains again
    on train + dev for its best held-out epochs: that is model.pt, its epochs in loss_with_dev.tsv.

    Args:
        best: The winner as JSON (select-best's output).
    """
    import json
    from pathlib import Path

    from kftune.core.spec import parse_spec
    from kftune.steps import train as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    result = step.run_final(step.FinalConfig(corpus=corpus.path, store=store, run_id=run_id, best=json.loads(best),
                                             model_dir=model.path), job=job)
    model.metadata.update(result.metadata)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    Path(curve.path).write_text(result.html, encoding="utf-8")
    return result.model_uri


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
    from pathlib import Path

    from kftune.core.spec import parse_spec
    from kftune.steps import evaluate as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    result = step.run(step.EvaluateConfig(model=str(Path(model.path) / "model.pt"), corpus=corpus.path,
                                          out=evaluation.path, split="test", baseline=job.spec.evaluation.baseline))
    if result.confusion is not None:
        confusion.log_confusion_matrix(*result.confusion)
    for name, value in result.metrics.items():  # test_score, ..., baseline_test_score, delta_vs_baseline
        metrics.log_metric(name, value)
    Path(report.path).write_text(result.markdown, encoding="utf-8")
    evaluation.metadata.update(result.metadata)
    return float(result.main_score)


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
    from pathlib import Path

    from kftune.core.spec import parse_spec
    from kftune.steps import report as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    result = step.run_pipeline(step.RunReportConfig(store=store, run_id=run_id, corpus=corpus.path,
                                                    lr_find=lr_test.path, train=model.path, evaluation=evaluation.path,
                                                    lease_owner=lease_owner, job_id=job_id),
                               job=job, best=json.loads(best))
    Path(markdown.path).write_text(result.markdown, encoding="utf-8")
    Path(page.path).write_text(result.html, encoding="utf-8")
    return json.dumps(result.summary, sort_keys=True)


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

    from kftune.core.spec import parse_spec
    from kftune.steps import deploy as step

    job = parse_spec(json.loads(Path(job_spec.path).read_text(encoding="utf-8")))
    result = step.run(step.DeployConfig.from_pipeline(
        job, service_name=service_name, model=model_uri, namespace=namespace, image=image, registry=registry,
        gpus=gpus, node_selector=node_selector, tolerations=tolerations, timeout=timeout))
    Path(service.path).write_text(result.markdown(), encoding="utf-8")
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
