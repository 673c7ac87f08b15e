"""The kftune pipeline DAG, in a CPU and a GPU variant, for any number of search rounds.

    resolve-spec -> prepare-corpus -> lr-range-test
        -> round 0 .. R-1:  suggest -> ParallelFor(batches, parallelism=1)
                                         -> trial-batch: ParallelFor(batch) -> trial   (width = parallel_trials)
                                      -> Collected -> next round's suggest
        -> finalists round (same shape) -> select-best -> final-training -> evaluate -> report
        -> If(deploy): deploy (a KServe InferenceService serving final-training's model)

Why this shape (measured with kfp 2.17, docs/design/kfp.md):

- **Rounds are unrolled at compile time.** A KFP DAG is static, so the pipeline has a fixed number R
  of search rounds (suggest -> trials -> barrier) plus one finalists round. ``suggest`` sizes each
  round so that the search ends within R rounds (``max(parallel, ceil(remaining / rounds left))``
  requests: :meth:`kftune.core.search_policy.SearchPolicy.plan_round`, the rule ``kftune search`` plans
  with too), coarse-to-fine rounds and successive-halving rungs fall on round boundaries, and a round
  with nothing left to do runs one skip item. ``resolve-spec`` simulates the search with the same rule
  and refuses a spec that needs more than R rounds. ``kftune run``/``kftune submit`` compile the pipeline
  with as many rounds as the spec's search has (:func:`rounds_for`); the committed YAML, for upload in
  the KFP UI, has :data:`DEFAULT_SEARCH_ROUNDS`.
- **parallelTrialCount is a runtime parameter by batching.** ``ParallelFor``'s ``parallelism`` must be a
  compile-time integer (``iteratorPolicy.parallelismLimit`` is an int32 in the PipelineSpec), so
  ``suggest`` takes the ``parallel_trials`` pipeline parameter and returns the round's requests in
  batches of that width; an outer loop with ``parallelism=1`` runs the batches one after another and a
  nested pipeline (``trial-batch``) fans each batch out in full. The cost: a barrier per batch. A
  compile-time parallelism would leave the UI's "parallel trials" field without effect.
- The GPU variant requests ``nvidia.com/gpu`` (the ``trial_gpus``/``final_gpus`` parameters) on trial and
  final-training tasks, which run the CUDA image; node selector and tolerations are parameters
  (kfp-kubernetes' JSON forms). Store credentials come from the Kubernetes Secret :data:`S3_SECRET` as
  ``KFTUNE_S3_*`` environment variables on every task, never from parameters.
- Caching is on for corpus preparation only; trial tasks retry (infrastructure failures: a trial that
  fails in training is a result, not an error).
- **Deploying is off by default.** With ``deploy`` true, a ``dsl.If`` branch after the report runs
  ``deploy``, which creates or patches the InferenceService ``deploy_service_name`` (empty: the
  TuningJob's name) in ``deploy_namespace`` (empty: the run's namespace) to serve final-training's
  model from the store, in ``serving_image`` (empty: this release's ``kftune-serving`` image from the
  compile-time registry); the GPU variant gives it ``deploy_gpus`` GPUs and the trials' node selector
  and tolerations. ``kftune run`` leaves it off (a local store cannot be served by a cluster).
"""

import json
from typing import Any, Callable, List, Mapping

from kfp import dsl, kubernetes
from kfp.dsl import Artifact, Dataset, Input

from kftune import _image
from kftune.pipelines.components import Components, make_components

#: The variants: name -> image kind of the accelerated steps (trial, final training).
VARIANTS: Mapping[str, str] = {"cpu": "cpu", "gpu": "cuda"}
#: Search rounds of the committed pipelines (pipelines/compiled/): room for every spec in examples/ (the
#: largest, UD English POS, takes 9) and for up to 10 rounds of TPE.
DEFAULT_SEARCH_ROUNDS = 10
#: The Kubernetes Secret with the object-store settings, and its keys (each becomes that env var).
S3_SECRET = "kftune-s3"
S3_ENV = ("KFTUNE_S3_ENDPOINT", "KFTUNE_S3_ACCESS_KEY", "KFTUNE_S3_SECRET_KEY", "KFTUNE_S3_SECURE", "KFTUNE_S3_REGION")
#: Default store root of the compiled pipelines (the bucket the MinIO job creates).
DEFAULT_STORE = "s3://kftune/tuning"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_TOLERATIONS = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
TRIAL_RETRIES = 2

#: The spec the compiled pipelines run when the UI user leaves the ``spec`` field as it is: TREC-6,
#: a small CNN, coarse-to-fine search of 8 trials with successive halving (a laptop-sized budget).
DEFAULT_SPEC: dict[str, Any] = {
    "apiVersion": "kftune.dev/v1alpha1",
    "kind": "TuningJob",
    "metadata": {"name": "trec6"},
    "spec": {
        "corpus": {"name": "TREC_6", "downsample": 1.0, "devFraction": 0.1, "seed": 1},
        "task": {"type": "text_classification", "labelType": "question_class"},
        "model": {"document_encoder": "cnn", "cnn_kernel_sizes": [3, 4, 5], "cnn_filters": 100,
                  "optimizer": "adamw", "mini_batch_size": 32, "scheduler": "plateau", "max_length": 64},
        "lrRangeTest": {"enabled": True, "applyTo": "learning_rate", "startLR": 1e-6, "endLR": 1.0,
                        "iterations": 100, "mode": "exponential", "smoothing": 0.98, "method": "valley"},
        "search": {
            "objective": {"type": "maximize", "objectiveMetricName": "dev_score"},
            "algorithm": {"algorithmName": "coarse-to-fine",
                          "algorithmSettings": [{"name": "rounds", "value": "2"}, {"name": "top_k", "value": "2"},
                                                {"name": "shrink", "value": "0.5"}]},
            "earlyStopping": {"algorithmName": "successive-halving",
                              "algorithmSettings": [{"name": "eta", "value": "2"}, {"name": "min_budget", "value": "2"},
                                                    {"name": "max_budget", "value": "6"}]},
            "parallelTrialCount": 2, "maxTrialCount": 8, "maxFailedTrialCount": 2,
            "finalists": 2, "finalistRuns": 2,
            "parameters": [
                {"name": "learning_rate", "parameterType": "double",
                 "feasibleSpace": {"min": "1e-4", "max": "1e-2", "distribution": "logUniform"}},
                {"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.6"}},
                {"name": "embedding_dim", "parameterType": "categorical", "feasibleSpace": {"list": ["64", "128"]}},
            ],
        },
        "train": {"maxEpochs": 6, "patience": 2, "seed": 1},
        "resources": {"trialGPU": 1, "finalGPU": 1},
    },
}

#: Pipeline parameters that every variant has, in the order ``kftune run``/``submit`` map a spec to them.
PARAMETERS = ("spec", "corpus", "downsample", "max_trials", "parallel_trials", "max_epochs", "seed", "store",
              "run_id", "warm_start", "lease_owner")
#: Parameters of the optional deploy step (every variant; left at their defaults, nothing is deployed).
DEPLOY_PARAMETERS = ("deploy", "deploy_service_name", "deploy_namespace", "serving_image", "deploy_timeout")
#: The GPU variant's extra parameters.
GPU_PARAMETERS = ("trial_gpus", "final_gpus", "node_selector", "tolerations", "deploy_gpus")
#: Seconds the deploy step waits for the InferenceService to be Ready (pull, model download, load).
DEFAULT_DEPLOY_TIMEOUT = 900


def pipeline_name(variant: str) -> str:
    """``kftune-cpu`` / ``kftune-gpu``: the pipeline's name in KFP."""
    return f"kftune-{variant}"


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown pipeline variant {variant!r}; use one of {sorted(VARIANTS)}")


def _store_env(task: Any) -> Any:
    """Store settings from the Secret, as env vars (optional: a run with a local store needs none)."""
    return kubernetes.use_secret_as_env(task, secret_name=S3_SECRET, secret_key_to_env={k: k for k in S3_ENV},
                                        optional=True)


def build_pipeline(variant: str = "cpu", search_rounds: int = DEFAULT_SEARCH_ROUNDS,
                   registry: str | None = None) -> Callable[..., Any]:
    """The pipeline function of ``variant`` (``cpu`` or ``gpu``) with ``search_rounds`` search rounds.

    ``registry``: where the kftune images are (default: :func:`kftune._image.image_registry`). The same
    function is compiled to YAML (``kftune compile``/``submit``) and run by KFP's local runner
    (``kftune run``).
    """
    _check_variant(variant)
    if isinstance(search_rounds, bool) or not isinstance(search_rounds, int) or search_rounds < 1:
        raise ValueError(f"search_rounds must be a positive integer, got {search_rounds!r}")
    gpu = variant == "gpu"
    c: Components = make_components(_image.image("cpu", registry),
                                    _image.image(VARIANTS[variant], registry) if gpu else None)

    if gpu:
        @dsl.pipeline(name="trial-batch", description="One batch of trials, all at once (GPU).")
        def trial_batch(batch: List[str], job_spec: Input[Artifact], corpus: Input[Dataset], trial_gpus: int,
                        node_selector: dict, tolerations: list) -> List[str]:
            with dsl.ParallelFor(items=batch) as item:
                t = c.trial(job_spec=job_spec, corpus=corpus, item=item)
                t.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(trial_gpus)
                kubernetes.add_node_selector_json(t, node_selector_json=node_selector)
                kubernetes.add_toleration_json(t, toleration_json=tolerations)
                _trial_options(t)
            return dsl.Collected(t.outputs["Output"])
    else:
        @dsl.pipeline(name="trial-batch", description="One batch of trials, all at once.")
        def trial_batch(batch: List[str], job_spec: Input[Artifact], corpus: Input[Dataset]) -> List[str]:
            with dsl.ParallelFor(items=batch) as item:
                t = c.trial(job_spec=job_spec, corpus=corpus, item=item)
                _trial_options(t)
            return dsl.Collected(t.outputs["Output"])

    def body(spec: str, corpus: str, downsample: float, max_trials: int, parallel_trials: int, max_epochs: int,
             seed: int, store: str, run_id: str, warm_start: bool, gpu_args: dict[str, Any], deploy: Any,
             deploy_args: dict[str, Any], final_gpus: Any = None, lease_owner: Any = "") -> Any:
        resolved = c.resolve_spec(spec=spec, corpus=corpus, downsample=downsample, max_trials=max_trials,
                                  parallel_trials=parallel_trials, max_epochs=max_epochs, seed=seed, store=store,
                                  run_id=run_id, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, search_rounds=search_rounds)
        _plain(resolved)
        job_spec = resolved.outputs["job_spec"]
        the_run, the_store = resolved.outputs["run_id"], resolved.outputs["store"]
        prepared = c.prepare_corpus(corpus_config=resolved.outputs["corpus_config"])
        prepared.set_caching_options(True)
        _store_env(prepared)
        corpus_data = prepared.outputs["corpus"]
        lr = c.lr_range_test(job_spec=job_spec, corpus=corpus_data, run_id=the_run, store=the_store,
                             warm_start=warm_start)
        _plain(lr)
        _store_env(lr)
        space = lr.outputs["Output"]
        previous = None
        for r in range(search_rounds + 1):
            finalists = r == search_rounds
            label = "finalists" if finalists else f"round {r + 1}"
            extra = {} if previous is None else {"history": previous}
            s = c.suggest(job_spec=job_spec, search_space=space, run_id=the_run, store=the_store, round_index=r,
                          search_rounds=search_rounds, parallel_trials=parallel_trials, finalists=finalists,
                          lease_owner=lease_owner, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **extra)
            s.set_display_name(f"suggest ({label})")
            _plain(s)
            _store_env(s)
            with dsl.ParallelFor(items=s.output, parallelism=1) as batch:
                b = trial_batch(batch=batch, job_spec=job_spec, corpus=corpus_data, **gpu_args)
                b.set_display_name(f"trials ({label})")
            previous = dsl.Collected(b.output)
        best = c.select_best(job_spec=job_spec, search_space=space, run_id=the_run, store=the_store,
                             history=previous)
        _plain(best)
        _store_env(best)
        final = c.final_training(job_spec=job_spec, corpus=corpus_data, best=best.outputs["Output"], run_id=the_run,
                                 store=the_store)
        _plain(final)
        _store_env(final)
        if gpu:
            final.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(final_gpus)
            kubernetes.add_node_selector_json(final, node_selector_json=gpu_args["node_selector"])
            kubernetes.add_toleration_json(final, toleration_json=gpu_args["tolerations"])
        scored = c.evaluate(job_spec=job_spec, corpus=corpus_data, model=final.outputs["model"])
        _plain(scored)
        _store_env(scored)
        done = c.report(job_spec=job_spec, corpus=corpus_data, lr_test=lr.outputs["lr_test"],
                        best=best.outputs["Output"], model=final.outputs["model"],
                        evaluation=scored.outputs["evaluation"], run_id=the_run, store=the_store,
                        lease_owner=lease_owner, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        _plain(done)
        _store_env(done)
        with dsl.If(deploy == True, name="if-deploy"):  # noqa: E712 - a KFP condition on the parameter, not a bool
            served = c.deploy(job_spec=job_spec, model_uri=final.outputs["Output"], registry=serving_registry,
                              **deploy_args)
            served.after(done)
            _plain(served)  # it reads no store: no credentials
        return done.outputs["Output"]

    name = pipeline_name(variant)
    spec_default = json.dumps(DEFAULT_SPEC, sort_keys=True)
    serving_registry = _image.image_registry(registry)
    if gpu:
        @dsl.pipeline(name=name, description=_DESCRIPTION.format(variant="GPU", rounds=search_rounds))
        def kftune_pipeline(spec: str = spec_default, corpus: str = "", downsample: float = 0.0, max_trials: int = 0,
                            parallel_trials: int = 0, max_epochs: int = 0, seed: int = -1, store: str = DEFAULT_STORE,
                            run_id: str = "", warm_start: bool = False, lease_owner: str = "", trial_gpus: int = 1,
                            final_gpus: int = 1,
                            node_selector: dict = {},  # noqa: B006 - KFP reads the default; nothing mutates it
                            tolerations: list = DEFAULT_TOLERATIONS, deploy: bool = False,
                            deploy_service_name: str = "", deploy_namespace: str = "", serving_image: str = "",
                            deploy_timeout: int = DEFAULT_DEPLOY_TIMEOUT, deploy_gpus: int = 1) -> str:
            """Tune a PyTorch text classifier or sequence tagger (GPU trials).

            Args:
                spec: The TuningJob spec as JSON (kftune run and kftune submit fill it from a spec file; see
                    docs/spec.md).
                corpus: A registered corpus name (TREC_6, TREC_50, WNUT_17, UD_ENGLISH, ...) or a corpus URI;
                    empty keeps the spec's corpus.
                downsample: Fraction of train and dev to keep, in (0, 1]; 0 keeps the spec's corpus.downsample.
                max_trials: Trials the search may create (maxTrialCount); 0 keeps the spec's.
                parallel_trials: Trials at once (parallelTrialCount); 0 keeps the spec's.
                max_epochs: Epochs per trial and for the final model (train.maxEpochs); 0 keeps the spec's.
                seed: Seed of the corpus split and of training; -1 keeps the spec's seeds.
                store: Store root for the trial journal, checkpoints and the report (s3://bucket/prefix);
                    credentials come from the kftune-s3 Secret.
                run_id: Names the run's folder in the store (runs/<run_id>/); empty uses the KFP run id.
                lease_owner: Who holds the run's lease (one driver per run): empty, this KFP run's tasks take
                    it (another driver of the same run_id is refused); kftune run passes its own token.
                warm_start: Start the search around the best trials of earlier runs under the same store root.
                trial_gpus: GPUs per trial.
                final_gpus: GPUs for the final training.
                node_selector: Node labels the trial and final-training pods must match, e.g.
                    {"nvidia.com/gpu.present": "true"}.
                tolerations: Tolerations of the trial and final-training pods (Kubernetes toleration objects).
                deploy: Serve the final model with KServe: create or patch an InferenceService after the report.
                deploy_service_name: The InferenceService's name; empty: made from the TuningJob's name.
                deploy_namespace: The InferenceService's namespace; empty: the run's own.
                serving_image: The model server's image; empty: this release's kftune-serving image (cuda with
                    GPUs, else cpu).
                deploy_timeout: Seconds to wait until the InferenceService is Ready; 0 does not wait.
                deploy_gpus: GPUs of the model server (with the node selector and tolerations above); 0 serves
                    on CPU.
            """
            return body(spec, corpus, downsample, max_trials, parallel_trials, max_epochs, seed, store, run_id,
                        warm_start, {"trial_gpus": trial_gpus, "node_selector": node_selector,
                                     "tolerations": tolerations}, deploy,
                        {"service_name": deploy_service_name, "namespace": deploy_namespace,
                         "image": serving_image, "timeout": deploy_timeout, "gpus": deploy_gpus,
                         "node_selector": node_selector, "tolerations": tolerations}, final_gpus, lease_owner)
    else:
        @dsl.pipeline(name=name, description=_DESCRIPTION.format(variant="CPU", rounds=search_rounds))
        def kftune_pipeline(spec: str = spec_default, corpus: str = "", downsample: float = 0.0, max_trials: int = 0,
                            parallel_trials: int = 0, max_epochs: int = 0, seed: int = -1, store: str = DEFAULT_STORE,
                            run_id: str = "", warm_start: bool = False, lease_owner: str = "", deploy: bool = False,
                            deploy_service_name: str = "", deploy_namespace: str = "", serving_image: str = "",
                            deploy_timeout: int = DEFAULT_DEPLOY_TIMEOUT) -> str:
            """Tune a PyTorch text classifier or sequence tagger (CPU).

            Args:
                spec: The TuningJob spec as JSON (kftune run and kftune submit fill it from a spec file; see
                    docs/spec.md).
                corpus: A registered corpus name (TREC_6, TREC_50, WNUT_17, UD_ENGLISH, ...) or a corpus URI;
                    empty keeps the spec's corpus.
                downsample: Fraction of train and dev to keep, in (0, 1]; 0 keeps the spec's corpus.downsample.
                max_trials: Trials the search may create (maxTrialCount); 0 keeps the spec's.
                parallel_trials: Trials at once (parallelTrialCount); 0 keeps the spec's.
                max_epochs: Epochs per trial and for the final model (train.maxEpochs); 0 keeps the spec's.
                seed: Seed of the corpus split and of training; -1 keeps the spec's seeds.
                store: Store root for the trial journal, checkpoints and the report (s3://bucket/prefix or a
                    local path); credentials come from the kftune-s3 Secret.
                run_id: Names the run's folder in the store (runs/<run_id>/); empty uses the KFP run id.
                lease_owner: Who holds the run's lease (one driver per run): empty, this KFP run's tasks take
                    it (another driver of the same run_id is refused); kftune run passes its own token.
                warm_start: Start the search around the best trials of earlier runs under the same store root.
                deploy: Serve the final model with KServe: create or patch an InferenceService after the report
                    (needs an s3:// store).
                deploy_service_name: The InferenceService's name; empty: made from the TuningJob's name.
                deploy_namespace: The InferenceService's namespace; empty: the run's own.
                serving_image: The model server's image; empty: this release's kftune-serving CPU image.
                deploy_timeout: Seconds to wait until the InferenceService is Ready; 0 does not wait.
            """
            return body(spec, corpus, downsample, max_trials, parallel_trials, max_epochs, seed, store, run_id,
                        warm_start, {}, deploy,
                        {"service_name": deploy_service_name, "namespace": deploy_namespace,
                         "image": serving_image, "timeout": deploy_timeout, "gpus": 0, "node_selector": {},
                         "tolerations": []}, lease_owner=lease_owner)

    return kftune_pipeline


_DESCRIPTION = ("kftune ({variant}): prepare corpus, LR range test, {rounds} search rounds of parallel trials with "
                "early stopping, finalists, final training, evaluation and report, from one TuningJob spec.")


def _plain(task: Any) -> Any:
    """No caching: suggest, trials and training must run again in every run (recurring runs above all)."""
    return task.set_caching_options(False)


def _trial_options(task: Any) -> Any:
    """Trial tasks: retried after infrastructure failures, never cached, store credentials."""
    _plain(task)
    task.set_retry(num_retries=TRIAL_RETRIES, backoff_duration="30s", backoff_factor=2.0)
    _store_env(task)
    return task


def rounds_for(arguments: Mapping[str, Any]) -> int:
    """The search rounds a pipeline needs for these pipeline ``arguments`` (the spec and its
    parameters): what ``resolve-spec`` computes when compiled with 0 rounds. Raises
    :class:`~kftune.core.errors.ConfigError` when the spec and parameters do not make a valid run."""
    import tempfile

    values = {"spec": json.dumps(DEFAULT_SPEC), "corpus": "", "downsample": 0.0, "max_trials": 0,
              "parallel_trials": 0, "max_epochs": 0, "seed": -1, "store": DEFAULT_STORE, "run_id": "check"}
    values.update({k: v for k, v in arguments.items() if k in values})
    with tempfile.TemporaryDirectory(prefix="kftune-resolve-") as tmp:
        out = resolve(values, search_rounds=0, job_spec_path=f"{tmp}/job_spec.json")
    return int(out.search_rounds)


def resolve(arguments: Mapping[str, Any], search_rounds: int, job_spec_path: str) -> Any:
    """Run ``resolve-spec``'s function in this process (no KFP): the effective spec, corpus settings,
    run id, store and rounds, or the :class:`~kftune.core.errors.ConfigError` the pipeline would fail with."""
    from kftune.pipelines.components import resolve_spec

    values = {k: arguments[k] for k in ("spec", "corpus", "downsample", "max_trials", "parallel_trials", "max_epochs",
                                        "seed", "store", "run_id")}
    return resolve_spec(**values, job_id="preflight-check", search_rounds=search_rounds,
                        job_spec=dsl.Artifact(name="job_spec", uri=job_spec_path))


def arguments_for_spec(job: Any, *, variant: str = "cpu", store: str = DEFAULT_STORE, run_id: str = "",
                       warm_start: bool = False, cluster: bool = True) -> dict[str, Any]:
    """The pipeline arguments that run ``job`` (a :class:`kftune.core.spec.TuningJob`) on ``variant``.

    The spec travels whole as JSON; the per-run parameters carry its values too (so the KFP UI shows
    them), except ``seed`` when the spec's corpus and training seeds differ (-1: keep both). For a
    ``cluster`` run, raises :class:`~kftune.core.errors.ConfigError` when ``spec.resources`` asks for
    what the variant cannot do: GPUs of another resource name or no GPU in the GPU variant, CPU or
    memory requests (the pipelines carry no such parameters). A local run ignores ``spec.resources``.
    """
    from kftune.core.errors import ConfigError, Problem
    from kftune.core.spec import job_to_dict

    _check_variant(variant)
    spec = job.spec
    problems = []
    res = spec.resources
    for attr, key in (("trial_cpu", "trialCPU"), ("final_cpu", "finalCPU"), ("trial_memory", "trialMemory"),
                      ("final_memory", "finalMemory")):
        if cluster and getattr(res, attr) is not None:
            problems.append(Problem(f"spec.resources.{key}", "the pipeline has no CPU or memory parameters; remove "
                                                            "it (pods take the namespace's defaults)"))
    if cluster and variant == "gpu":
        if res.gpu_resource != GPU_RESOURCE:
            problems.append(Problem("spec.resources.gpuResource",
                                    f"{res.gpu_resource!r}: the GPU pipeline requests {GPU_RESOURCE}"))
        for attr, key in (("trial_gpu", "trialGPU"), ("final_gpu", "finalGPU")):
            if getattr(res, attr) < 1:
                problems.append(Problem(f"spec.resources.{key}", "0, but the GPU pipeline requests at least one "
                                                                "GPU per trial and for the final training; use "
                                                                "the CPU pipeline (--variant cpu)"))
    if problems:
        raise ConfigError(problems)
    seed = spec.train.seed if spec.train.seed == spec.corpus.seed else -1
    arguments: dict[str, Any] = {
        "spec": json.dumps(job_to_dict(job), sort_keys=True), "corpus": spec.corpus.name or spec.corpus.uri or "",
        "downsample": float(spec.corpus.downsample), "max_trials": spec.search.max_trial_count,
        "parallel_trials": spec.search.parallel_trial_count, "max_epochs": spec.train.max_epochs, "seed": seed,
        "store": store, "run_id": run_id, "warm_start": bool(warm_start)}
    if variant == "gpu":
        tolerations = [{k: v for k, v in (("key", t.key), ("operator", t.operator), ("value", t.value),
                                          ("effect", t.effect)) if v is not None} for t in res.tolerations]
        arguments.update({"trial_gpus": res.trial_gpu, "final_gpus": res.final_gpu,
                          "node_selector": dict(res.node_selector),
                          "tolerations": tolerations or list(DEFAULT_TOLERATIONS)})
    return arguments
