"""A TuningJob as Katib ``Experiment`` objects (``kubeflow.org/v1beta1``): the pure mapping, no I/O.

``kftune katib SPEC.yaml`` (:mod:`kftune.commands.katib`) reads the spec, calls :func:`export_experiment`
and prints the result as YAML. What maps, and how:

``search`` block
    1:1 (:func:`kftune.core.spec.search_to_katib`): objective (type, objectiveMetricName, goal,
    additionalMetricNames, metricStrategies), parallelTrialCount, maxTrialCount, maxFailedTrialCount,
    parameters (names, types, feasibleSpace strings verbatim). kftune's ``finalists`` re-runs have no
    Katib counterpart and are left out (with a note).
``algorithm``
    ``random``, ``tpe`` and ``grid`` keep Katib's own names and settings. A grid double without
    ``step`` (kftune's ``default_points`` setting, which Katib refuses) becomes a ``discrete``
    parameter listing exactly the values kftune's grid would try.
    ``coarse-to-fine`` becomes one Experiment per round: the *coarse* one (``random`` over the whole
    space, ``maxTrialCount`` = round 0's share of the trials) and then a *fine* one per later round,
    whose feasibleSpace is the previous round's narrowed around the top-k trials of all earlier
    rounds, with :func:`kftune.core.space.narrow` and the sampler's settings
    (:class:`~kftune.core.samplers.coarse_to_fine.CoarseToFineConfig`), exactly as
    :meth:`CoarseToFineSampler.round_spaces <kftune.core.samplers.coarse_to_fine.CoarseToFineSampler.round_spaces>`
    narrows a local search.
``earlyStopping``
    ``medianstop`` maps to Katib's ``medianstop`` with the same settings (``min_trials_required``,
    ``start_step``). ``successive-halving``, ``asha`` and ``hyperband`` map to Katib's ``hyperband``
    *algorithm* where they can (random sampling; see :func:`hyperband_plan`); Katib's hyperband is a
    search algorithm of its own, so with ``tpe`` or ``grid`` the Experiment keeps the algorithm and runs
    without early stopping. kftune's ``hyperband`` maps as its first (``s = s_max``) bracket only: Katib
    sizes its brackets by ``parallelTrialCount``, so the later brackets are not exported (a note says so).
    ``bohb`` has no Katib counterpart (:func:`bohb_algorithm`): with ``successive-halving``, ``asha`` or
    ``hyperband`` the Experiment runs Katib's ``hyperband`` as above, the brackets without BOHB's model
    (configurations drawn at random: plain Hyperband); otherwise, or when no hyperband bracket can be
    made, Katib's ``tpe`` (BOHB at one budget is a TPE-style density-ratio search) with ``n_EI_candidates``
    = ``num_samples`` and ``n_startup_jobs`` = the trials BOHB needs before its first model.
    Every place where the mapping is not exact is said in the returned :attr:`KatibExperiment.notes` (the
    command prints them on stderr and as YAML comments, and they are kept in the ``kftune.dev/notes``
    annotation).
Trial template
    A ``batch/v1`` Job running ``kftune trial`` in kftune's image (:class:`TrialPodConfig`), each search
    parameter wired in as ``--param name=${trialParameters.name}``, the spec mounted from a ConfigMap,
    S3 credentials from a Secret (``envFrom``), GPU limits from ``spec.resources.trialGPU`` (none
    for the CPU image), the spec's node selector and tolerations. Metrics: Katib's StdOut collector
    (kftune trials print ``<timestamp> name=value`` lines, :mod:`kftune.io.katib_stdout`).

Facts about Katib this relies on (kubeflow/katib ``pkg/suggestion/v1beta1/hyperband/service.py`` and
``parsing_util.py``): hyperband's settings are ``r_l`` (the largest budget, required),
``resource_name`` (a parameter of the Experiment, required) and ``eta`` (default 3); it also reads the
state settings it writes back, among them ``s_max`` (default ``int(log(r_l) / log(eta))``); the first
rung's budget is ``int(r_l * eta**-s_max)`` and rung ``i``'s ``int(r_l * eta**-s_max * eta**i)``; it
needs ``parallelTrialCount >= eta**int(log(r_l)/log(eta))`` and draws the first rung's configurations in
one request, so a bracket has ``parallelTrialCount`` configurations; each promotion is a new Trial with
the resource parameter set to the rung's budget; every numeric parameter is drawn uniformly from
``[min, max]`` (``distribution`` and ``step`` are ignored, ints rounded, discrete lists parsed with
``int()``), categoricals by a uniform choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from kftune.core.early_stopping import Hyperband, get_early_stopping
from kftune.core.errors import ConfigError, DataError, Problem
from kftune.core.lr_handoff import apply_lr_range
from kftune.core.samplers.bohb import BOHBSampler
from kftune.core.samplers.coarse_to_fine import CoarseToFineConfig, CoarseToFineSampler, top_trials
from kftune.core.parameters import FeasibleSpace, ParameterSpec, to_katib_parameters
from kftune.core.space import SearchSpace, narrow
from kftune.core.spec import Setting, TuningJob, search_to_katib
from kftune.core.trials import Objective, Trial

#: Katib's API group/version and kind.
API_VERSION = "kubeflow.org/v1beta1"
KIND = "Experiment"
#: The name of the Experiment parameter that carries a hyperband rung's budget (epochs).
BUDGET_PARAMETER = "budget"
#: The trial parameter that carries the Katib Trial's name (``${trialSpec.Name}``) into the pod.
TRIAL_NAME_PARAMETER = "trialName"
#: The training container of the trial Job (Katib's ``primaryContainerName``).
CONTAINER_NAME = "training"
#: Where the spec ConfigMap is mounted in the trial pod, and the file name in it.
SPEC_MOUNT_DIR = "/etc/kftune"
SPEC_FILE = "spec.yaml"
#: The artifact store root, the same as the compiled pipelines' default (``kftune.pipelines.pipeline.DEFAULT_STORE``).
DEFAULT_STORE = "s3://kftune/tuning"
#: The Secret with ``KFTUNE_S3_*`` variables (manifests/base/storage makes it).
DEFAULT_S3_SECRET = "kftune-s3"
NOTES_ANNOTATION = "kftune.dev/notes"
JOB_LABEL = "kftune.dev/tuning-job"
PHASE_LABEL = "kftune.dev/phase"

Phase = Literal["single", "coarse", "fine"]
_PATH = "spec.search"


def spec_configmap_name(job_name: str) -> str:
    """The ConfigMap that holds a job's spec file: ``kftune-spec-<name>``."""
    return f"kftune-spec-{job_name}"


@dataclass(frozen=True, kw_only=True)
class TrialPodConfig:
    """How the trial pods of the Experiment run.

    ``image``: the full image reference (``kftune._image.image(kind)``); ``gpu``: whether it is the CUDA
    image, which gets ``spec.resources.trialGPU`` GPUs as a limit (the CPU image gets none).
    ``run_id``: where the trials write their records (``<store>/runs/<run_id>/search/trials/``);
    ``None``: the job's name, shared by the coarse and fine Experiments of a coarse-to-fine search.
    ``corpus``: the prepared corpus the trials read (``kftune corpus``'s output); ``None``:
    ``<store>/runs/<run_id>/corpus``. ``spec_configmap``: ``None``: :func:`spec_configmap_name`.
    """

    image: str
    gpu: bool
    store: str = DEFAULT_STORE
    run_id: str | None = None
    corpus: str | None = None
    spec_configmap: str | None = None
    s3_secret: str = DEFAULT_S3_SECRET
    namespace: str | None = None


@dataclass(frozen=True)
class KatibExperiment:
    """One Experiment: its ``body`` (a YAML-ready dict) and the notes on what did not map exactly.

    ``phase``: ``single`` (one Experiment for the whole search), ``coarse`` (round 0 of coarse-to-fine)
    or ``fine`` (round ``round`` >= 1).
    """

    name: str
    phase: Phase
    round: int
    body: dict[str, Any]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class HyperbandPlan:
    """One Katib hyperband bracket standing in for kftune's successive halving.

    ``rungs``: the budgets (epochs) Katib trains at, ``sizes``: the configurations at each rung as
    Katib computes them when a whole rung is requested at once (``ceil(n_{i-1} / eta)``),
    ``trials``: their sum (Katib creates a Trial per rung of a configuration).
    """

    eta: int
    r_l: int
    s_max: int
    rungs: tuple[int, ...]
    sizes: tuple[int, ...]
    min_parallel: int

    @property
    def configurations(self) -> int:
        return self.sizes[0]

    @property
    def trials(self) -> int:
        return sum(self.sizes)

    def settings(self) -> list[dict[str, str]]:
        """Katib ``algorithmSettings`` for this bracket."""
        return [{"name": "resource_name", "value": BUDGET_PARAMETER}, {"name": "r_l", "value": str(self.r_l)},
                {"name": "eta", "value": str(self.eta)}, {"name": "s_max", "value": str(self.s_max)}]


def _hyperband_brackets_note(rule: Hyperband, max_trials: int) -> str:
    """What of kftune's Hyperband the Experiment leaves out: every bracket after the first."""
    brackets = "; ".join(f"s={b.s}: {b.n} at {b.rungs[0]} epoch(s)" for b in rule.brackets())
    return (f"hyperband: kftune runs the brackets one after another ({brackets}; maxTrialCount {max_trials} in all), "
            f"each a synchronous successive halving; the Katib Experiment runs only the first, most exploratory "
            f"bracket (s={rule.s_max}) and ends there. The other brackets are not exported: Katib's hyperband sizes "
            "a bracket by parallelTrialCount, not by Hyperband's n, so it cannot run kftune's brackets; run them "
            "with `kftune search` or the pipeline")


def bohb_algorithm(space: SearchSpace, settings: Mapping[str, str], *, brackets: bool) -> tuple[dict[str, Any], str]:
    """Katib's nearest algorithm to kftune's ``bohb`` (Katib has none), and the note that says so.

    ``brackets``: the Experiment runs Katib's hyperband (kftune's halving rule maps to it): its algorithm
    is then ``random``, which the early-stopping mapping turns into ``hyperband``. Otherwise ``tpe``:
    ``num_samples`` becomes ``n_EI_candidates`` (candidates drawn from the good density), and
    ``n_startup_jobs`` the trials BOHB needs at one budget before its first model; ``random_state`` is kept.
    """
    cfg = BOHBSampler().config(space, settings)
    seed = [{"name": "random_state", "value": settings["random_state"]}] if "random_state" in settings else []
    if brackets:
        dropped = sorted(k for k in settings if k != "random_state")
        return ({"algorithmName": "random", **({"algorithmSettings": seed} if seed else {})},
                "bohb: Katib has no BOHB. The Experiment runs Katib's hyperband, the nearest: the same kind of "
                "brackets, but every configuration is drawn at random (plain Hyperband, which BOHB is before it has "
                "enough results for a model); BOHB's density model, which proposes configurations like the good "
                "ones at the largest budget with enough results, is not run"
                + (f"; its settings {dropped} are left out" if dropped else "")
                + ". For BOHB itself run `kftune search` or the pipeline")
    startup = cfg.points_for_model(len(space))
    algorithm = {"algorithmName": "tpe", "algorithmSettings": [
        {"name": "n_EI_candidates", "value": str(cfg.num_samples)},
        {"name": "n_startup_jobs", "value": str(startup)}, *seed]}
    dropped = sorted(k for k in settings if k in ("top_n_percent", "random_fraction", "bandwidth_factor",
                                                  "min_bandwidth"))
    return (algorithm,
            f"bohb: Katib has no BOHB. Without Hyperband's budgets BOHB is a model-based search at the full budget, "
            f"so the Experiment runs Katib's tpe, the nearest: n_EI_candidates {cfg.num_samples} (BOHB's num_samples) "
            f"and n_startup_jobs {startup} (the trials BOHB needs before its first model, min_points_in_model "
            f"{cfg.min_points_in_model}, top_n_percent {cfg.top_n_percent}). TPE is not BOHB: hyperopt's Parzen "
            "estimators split the trials at ceil(gamma * sqrt(n)), not at a percentage, and propose no random "
            "share; " + (f"the settings {dropped} have no Katib counterpart and are left out; " if dropped else "")
            + "the trials differ from a kftune bohb search")


def katib_rungs(r_l: int, eta: int, s_max: int) -> tuple[int, ...]:
    """Katib hyperband's rung budgets for the bracket ``s_max``, with its own float arithmetic."""
    r = float(r_l) * float(eta) ** (-s_max)
    return tuple(int(r * float(eta) ** i) for i in range(s_max + 1))


def hyperband_plan(eta: int, min_budget: int, max_budget: int, configurations: int) -> HyperbandPlan | None:
    """The Katib hyperband bracket closest to successive halving over ``configurations`` trials with
    rungs ``min_budget * eta**k`` (then ``max_budget``), or ``None`` when Katib cannot run one
    (its first rung would train for less than one epoch).

    ``r_l = max_budget``; ``s_max`` = kftune's number of rungs - 1 (so the rung count matches; the
    budgets match when ``max_budget == min_budget * eta**k``); the bracket has at least
    ``eta**int(log(r_l)/log(eta))`` configurations, the smallest ``parallelTrialCount`` Katib accepts.
    """
    ours = [min_budget]
    while ours[-1] * eta < max_budget:
        ours.append(ours[-1] * eta)
    s_max = len(ours)  # kftune's rungs: ours + [max_budget]
    rungs = katib_rungs(max_budget, eta, s_max)
    while s_max > 0 and rungs[0] < 1:
        s_max -= 1
        rungs = katib_rungs(max_budget, eta, s_max)
    if s_max == 0:
        return None
    min_parallel = int(math.ceil(eta ** int(math.log(float(max_budget)) / math.log(eta))))
    n = max(configurations, min_parallel)
    sizes = [n]
    for _ in range(s_max):
        sizes.append(int(math.ceil(sizes[-1] / eta)))
    return HyperbandPlan(eta=eta, r_l=max_budget, s_max=s_max, rungs=rungs, sizes=tuple(sizes),
                         min_parallel=min_parallel)


# --------------------------------------------------------------------------------------------------
# Coarse-to-fine rounds
# --------------------------------------------------------------------------------------------------

def coarse_to_fine_config(job: TuningJob) -> CoarseToFineConfig:
    """The coarse-to-fine sampler's validated settings for ``job`` (round size resolved)."""
    search = job.spec.search
    space = SearchSpace.from_parameters(search.parameters)
    return CoarseToFineSampler().config(space, search.algorithm.settings(), max_trials=search.max_trial_count)


def round_share(config: CoarseToFineConfig, max_trials: int, r: int) -> int:
    """Trials of round ``r``: the round size, the last round taking what is left of ``max_trials``."""
    start = config.round_start(r)
    if r == config.rounds - 1:
        return max_trials - start
    return min(config.round_size, max_trials - start)


def fine_space(space: SearchSpace, earlier_rounds: Sequence[Sequence[Trial]], config: CoarseToFineConfig,
               objective: Objective) -> SearchSpace:
    """The space of round ``len(earlier_rounds)``: each round's space is the previous one narrowed
    around the top-k trials of every round before it (the sampler's ``round_spaces``, with the
    rounds given explicitly rather than cut out of one history by the round size).

    Raises :class:`DataError` when no trial of the earlier rounds has an objective: a fine round
    would then search the same space again.
    """
    current = space
    for r in range(1, len(earlier_rounds) + 1):
        earlier = [t for group in earlier_rounds[:r] for t in group]
        top = top_trials(earlier, objective, config.top_k)
        if not top:
            raise DataError(
                f"coarse-to-fine round {r}: none of the {len(earlier)} trials of the earlier round(s) has an "
                "objective (completed or early-stopped with a finite value), so there is nothing to narrow "
                "around; check the coarse Experiment's trials (kubectl get trials -l "
                "katib.kubeflow.org/experiment=<name>)")
        centre = {p.name: [t.assignment[p.name] for t in top if p.name in t.assignment] for p in space}
        current = narrow(current, centre, config.shrink,
                         reason=f"round {r}: top {len(top)} of {len(earlier)} trials ({', '.join(t.id for t in top)})")
    return current


# --------------------------------------------------------------------------------------------------
# Reading Katib Trials back (for the fine round)
# --------------------------------------------------------------------------------------------------

_STATE_OF_CONDITION = {"Succeeded": "completed", "EarlyStopped": "pruned", "Failed": "failed",
                       "MetricsUnavailable": "failed", "Killed": "failed"}


def _trial_state(obj: Mapping[str, Any]) -> str:
    conditions = (obj.get("status") or {}).get("conditions") or []
    true = {c.get("type") for c in conditions if isinstance(c, Mapping) and str(c.get("status")) == "True"}
    for kind in ("Succeeded", "EarlyStopped", "Failed", "MetricsUnavailable", "Killed"):
        if kind in true:
            return _STATE_OF_CONDITION[kind]
    return "running"


def _number(text: Any) -> float | None:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def trials_from_katib(objects: Sequence[Mapping[str, Any]], space: SearchSpace, objective: Objective,
                      objective_metric: str, strategy: str | None = None) -> list[Trial]:
    """Katib ``Trial`` objects (``kubectl get trials -o json``'s ``items``) as kftune trials, oldest first.

    The assignment is read with the space's types (the ``budget`` parameter of a hyperband Experiment
    becomes the trial's budget); the state from the conditions (Succeeded -> completed, EarlyStopped ->
    pruned, Failed/MetricsUnavailable/Killed -> failed, else running); the objective from
    ``status.observation.metrics`` with ``strategy`` (``min``/``max``/``latest``; default ``max`` when
    maximizing, ``min`` when minimizing, as Katib's controller does). Raises :class:`DataError` naming the
    Trial whose assignment does not fit the space.
    """
    strategy = strategy or ("max" if objective == "maximize" else "min")
    rows = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, Mapping) or obj.get("kind", "Trial") != "Trial":
            raise DataError(f"item {i} is not a Katib Trial (kind {obj.get('kind') if isinstance(obj, Mapping) else obj!r})")
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or f"trial-{i}")
        items = (obj.get("spec") or {}).get("parameterAssignments") or []
        raw = {a.get("name"): a.get("value") for a in items if isinstance(a, Mapping)}
        budget_text = raw.pop(BUDGET_PARAMETER, None)
        try:
            assignment = space.assignment_from_katib({k: v for k, v in raw.items() if k in space.names},
                                                     path=f"trial {name}")
        except ConfigError as exc:
            raise DataError(f"Katib trial {name}: its parameterAssignments do not fit the spec's search space: "
                            f"{'; '.join(str(p) for p in exc.problems)}") from exc
        value = None
        for m in ((obj.get("status") or {}).get("observation") or {}).get("metrics") or []:
            if isinstance(m, Mapping) and m.get("name") == objective_metric:
                value = _number(m.get(strategy))
        state = _trial_state(obj)
        budget = int(float(budget_text)) if _number(budget_text) is not None else None
        rows.append((str(meta.get("creationTimestamp") or ""), i, Trial(
            id=name, assignment=assignment, state=state,  # type: ignore[arg-type]
            objective=value if state in ("completed", "pruned") else None, budget=budget)))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [t for _, _, t in rows]


# --------------------------------------------------------------------------------------------------
# The Experiment
# --------------------------------------------------------------------------------------------------

def _settings(items: Sequence[Setting]) -> list[dict[str, str]]:
    return [{"name": s.name, "value": s.value} for s in items]


def _grid_parameters(space: SearchSpace, settings: Mapping[str, str], max_trials: int,
                     notes: list[str]) -> tuple[list[ParameterSpec], list[dict[str, str]]]:
    """Katib-ready grid parameters: doubles without step become the discrete list kftune's grid uses."""
    from kftune.core.samplers.grid import GridSampler

    points = settings.get("default_points")
    grid = GridSampler()._read_settings(space, settings, max_trials)  # the axes kftune's grid walks
    out = []
    for p, axis in zip(space, grid.axes):
        if p.is_numeric_range and p.step is None:
            values = tuple(p.format(axis[k]) for k in range(len(axis)))
            out.append(ParameterSpec(name=p.name, parameter_type="discrete", feasible_space=FeasibleSpace(list=values)))
            notes.append(f"grid: Katib needs a step for a double parameter; {p.name} is given as the discrete list of "
                         f"the {len(values)} values kftune's grid tries (default_points {points}): {list(values)}")
        else:
            out.append(p.spec)
    kept = [{"name": k, "value": v} for k, v in settings.items() if k != "default_points"]
    if points is not None:
        notes.append("grid: the kftune setting default_points is not a Katib setting and is left out (its values "
                     "are in the discrete lists); Katib may visit the grid points in another order")
    return out, kept


def _hyperband_parameters(space: SearchSpace, plan: HyperbandPlan, notes: list[str]) -> list[ParameterSpec]:
    """The parameters as Katib's hyperband can draw them, plus the budget parameter."""
    out: list[ParameterSpec] = []
    for p in space:
        fs = p.spec.feasible_space
        if p.is_numeric_range and p.step is not None and (p.n_steps or 0) < 1000:
            values = tuple(p.format(p.grid_value(k)) for k in range((p.n_steps or 0) + 1))
            out.append(ParameterSpec(name=p.name, parameter_type="categorical", feasible_space=FeasibleSpace(list=values)))
            why = (f"ignores step {fs.step}" if fs.step else "draws an int as round(uniform(min, max)), the ends half as likely")
            notes.append(f"hyperband: Katib's hyperband {why}; {p.name} ({p.type}) is given as a categorical list of "
                         f"its values {list(values)}, each equally likely")
            continue
        if p.type == "discrete" and any(not isinstance(c, int) for c in p.choices):
            out.append(ParameterSpec(name=p.name, parameter_type="categorical", feasible_space=fs))
            notes.append(f"hyperband: Katib's hyperband reads discrete values with int(); {p.name} {list(fs.list)} is "
                         "given as categorical (same values, each equally likely)")
            continue
        if p.type == "discrete":
            out.append(ParameterSpec(name=p.name, parameter_type="categorical", feasible_space=fs))
            notes.append(f"hyperband: Katib's hyperband draws a discrete value as the nearest one to a uniform draw "
                         f"over [min, max] (the ends half as likely); {p.name} is given as categorical so each of "
                         f"{list(fs.list)} is equally likely")
            continue
        if p.is_numeric_range and p.distribution != "uniform":
            notes.append(f"hyperband: Katib's hyperband draws every number uniformly; {p.name}'s distribution "
                         f"{p.distribution} is not honoured (values in [{fs.min}, {fs.max}] drawn uniformly)")
        out.append(p.spec)
    out.append(ParameterSpec(name=BUDGET_PARAMETER, parameter_type="int",
                             feasible_space=FeasibleSpace(min=str(plan.rungs[0]), max=str(plan.r_l))))
    return out


def _trial_template(job: TuningJob, pod: TrialPodConfig, parameter_names: Sequence[str], *,
                    budget: bool, notes: list[str]) -> dict[str, Any]:
    resources = job.spec.resources
    run_id = pod.run_id or job.name
    configmap = pod.spec_configmap or spec_configmap_name(job.name)
    corpus = pod.corpus or f"{pod.store.rstrip('/')}/runs/{run_id}/corpus"
    args = ["--spec", f"{SPEC_MOUNT_DIR}/{SPEC_FILE}", "--corpus", corpus, "--store", pod.store, "--run-id", run_id,
            "--trial-id", f"${{trialParameters.{TRIAL_NAME_PARAMETER}}}"]
    for name in parameter_names:
        args += ["--param", f"{name}=${{trialParameters.{name}}}"]
    if budget:
        args += ["--budget", f"${{trialParameters.{BUDGET_PARAMETER}}}"]
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    if pod.gpu and resources.trial_gpu > 0:
        limits[resources.gpu_resource] = resources.trial_gpu
    elif resources.trial_gpu > 0:
        notes.append(f"resources: spec.resources.trialGPU is {resources.trial_gpu}, but the trial pods use the CPU "
                     "image, so they request no GPU")
    if resources.trial_cpu is not None:
        requests["cpu"] = resources.trial_cpu
    if resources.trial_memory is not None:
        requests["memory"] = limits["memory"] = resources.trial_memory
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": pod.image,
        "command": ["kftune", "trial"],
        "args": args,
        "envFrom": [{"secretRef": {"name": pod.s3_secret}}],
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_MOUNT_DIR, "readOnly": True}],
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if limits or requests:
        container["resources"] = {k: v for k, v in (("limits", limits), ("requests", requests)) if v}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [{"name": "spec", "configMap": {"name": configmap}}],
    }
    if resources.node_selector:
        pod_spec["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod_spec["tolerations"] = [{k: v for k, v in (("key", t.key), ("operator", t.operator), ("value", t.value),
                                                      ("effect", t.effect)) if v is not None}
                                   for t in resources.tolerations]
    trial_parameters = [{"name": TRIAL_NAME_PARAMETER, "description": "the Katib Trial's name (the trial id)",
                         "reference": "${trialSpec.Name}"}]
    trial_parameters += [{"name": n, "description": f"search parameter {n}", "reference": n} for n in parameter_names]
    if budget:
        trial_parameters.append({"name": BUDGET_PARAMETER, "description": "epochs to train (the hyperband rung)",
                                 "reference": BUDGET_PARAMETER})
    return {
        "primaryContainerName": CONTAINER_NAME,
        "trialParameters": trial_parameters,
        "trialSpec": {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {
                        "labels": {"app.kubernetes.io/part-of": "kftune", "app.kubernetes.io/component": "trial",
                                   JOB_LABEL: job.name},
                        "annotations": {"sidecar.istio.io/inject": "false"},
                    },
                    "spec": pod_spec,
                },
            },
        },
    }


def _resolve_phase(job: TuningJob, phase: str | None, earlier_rounds: Sequence[Sequence[Trial]]
                   ) -> tuple[Phase, int, CoarseToFineConfig | None]:
    algorithm = job.spec.search.algorithm.algorithm_name
    if algorithm != "coarse-to-fine":
        if phase not in (None, "single"):
            raise ConfigError([Problem("--phase", f"{phase!r} applies to algorithm coarse-to-fine only; this spec's "
                                                  f"algorithm is {algorithm}: leave --phase out")])
        return "single", 0, None
    config = coarse_to_fine_config(job)
    if phase in (None, "coarse"):
        if earlier_rounds:
            raise ConfigError([Problem("--from-trials", "the coarse round starts from the whole space and reads no "
                                                        "trials; use --phase fine with --from-trials")])
        return "coarse", 0, config
    if phase != "fine":
        raise ConfigError([Problem("--phase", f"{phase!r} is not coarse or fine")])
    r = len(earlier_rounds)
    if r == 0:
        raise ConfigError([Problem("--from-trials", "the fine round is narrowed around the coarse round's best "
                                                    "trials: give them with --from-trials (the coarse Experiment's "
                                                    "Trials, or its kftune trial records)")])
    if r >= config.rounds:
        raise ConfigError([Problem("--from-trials", f"{r} earlier round(s) given, but the spec's coarse-to-fine has "
                                                    f"{config.rounds} round(s) (rounds {config.rounds}): there is no "
                                                    f"round {r}")])
    return "fine", r, config


def export_experiment(job: TuningJob, pod: TrialPodConfig, *, phase: str | None = None,
                      earlier_rounds: Sequence[Sequence[Trial]] = (),
                      lr_result: Mapping[str, Any] | None = None) -> KatibExperiment:
    """The Katib Experiment for ``job``'s search (see the module docstring for the mapping).

    ``phase``: for coarse-to-fine, ``coarse`` (the default) or ``fine``; for the other algorithms it
    must be ``None``. ``earlier_rounds``: for ``fine``, the trials of each earlier round, coarse first
    (one group per finished Experiment); the fine round is round ``len(earlier_rounds)``.
    ``lr_result``: a finished LR range test's ``result.json``; its range replaces the feasibleSpace of
    ``spec.lrRangeTest.applyTo`` as the local search does.

    Raises :class:`ConfigError` for a phase that does not fit the spec, :class:`DataError` for earlier
    trials without any result.
    """
    spec = job.spec
    search = spec.search
    notes: list[str] = []
    which, r, c2f = _resolve_phase(job, phase, earlier_rounds)

    params = tuple(search.parameters)
    lr = spec.lr_range_test
    if lr_result is not None:
        params, lr_note = apply_lr_range(params, lr_result, lr.apply_to)
        notes.append(f"lrRangeTest: {lr_note.get('reason', '')}".rstrip())
        old_fs, new_fs = lr_note["old_feasible_space"], lr_note["new_feasible_space"]
        if lr_note.get("applied") and not (float(old_fs["min"]) <= float(new_fs["min"])
                                           and float(new_fs["max"]) <= float(old_fs["max"])):
            notes.append(f"lrRangeTest: the range [{new_fs['min']}, {new_fs['max']}] reaches outside the spec's "
                         f"[{old_fs['min']}, {old_fs['max']}]; the trial pods accept it only when the run's "
                         "runs/<run>/search/space.json holds it (kftune trial checks values against that space, "
                         "else against the spec's)")
    elif lr.enabled:
        p = search.parameter(lr.apply_to)
        fs = p.feasible_space if p is not None else FeasibleSpace()
        notes.append(f"lrRangeTest: the Experiment does not run the LR range test; {lr.apply_to} is searched over the "
                     f"spec's [{fs.min}, {fs.max}]. Run `kftune lr-find` first and pass its result.json with "
                     "--lr-range to search the range it suggests")
    space = SearchSpace.from_parameters(params)

    katib = search_to_katib(search)
    body_spec: dict[str, Any] = {"objective": katib["objective"]}
    max_trials = search.max_trial_count
    parallel = search.parallel_trial_count
    name = job.name
    algorithm: dict[str, Any]
    settings = search.algorithm.settings()

    early = search.early_stopping
    bohb = search.algorithm.algorithm_name == "bohb"
    if bohb:  # Katib has no BOHB: random (turned into hyperband below) or tpe
        algorithm, bohb_note = bohb_algorithm(space, settings, brackets=early is not None
                                              and early.algorithm_name != "medianstop")
        bohb_at = len(notes)  # the note goes here once the early-stopping mapping has settled the algorithm
    elif which == "single":
        algorithm = dict(katib["algorithm"])
    else:
        assert c2f is not None
        share = round_share(c2f, max_trials, r)
        if share < 1:
            raise ConfigError([Problem(f"{_PATH}.algorithm.algorithmSettings",
                                       f"coarse-to-fine round {r} has no trials left of maxTrialCount {max_trials} "
                                       f"(round size {c2f.round_size})")])
        max_trials = share
        parallel = min(parallel, share)
        if which == "fine":
            space = fine_space(space, earlier_rounds, c2f, search.objective.type)
            notes.append(f"coarse-to-fine round {r} of {c2f.rounds}: {space.notes[-1]}")
            name = f"{job.name}-fine" if c2f.rounds == 2 else f"{job.name}-fine-{r}"
        else:
            name = f"{job.name}-coarse"
            if c2f.rounds > 1:
                notes.append(f"coarse-to-fine round 0 of {c2f.rounds}: random over the whole space, {share} of the "
                             f"{search.max_trial_count} trials. When it has finished, make the next round with "
                             f"`kftune katib SPEC --phase fine --from-trials <its trials>` (the Trials as "
                             f"`kubectl get trials -l katib.kubeflow.org/experiment={name} -o json` writes them, or "
                             f"the kftune trial records under {pod.store}/runs/{pod.run_id or job.name}/search/trials/)")
        algorithm = {"algorithmName": "random"}
        if "random_state" in settings:
            algorithm["algorithmSettings"] = [{"name": "random_state", "value": settings["random_state"]}]
        dropped = sorted(k for k in settings if k != "random_state")
        notes.append(f"coarse-to-fine: each round is a Katib random Experiment; its settings {dropped} shape the "
                     "rounds (their sizes and the narrowed feasibleSpace) and are not passed to Katib")

    parameters: list[ParameterSpec] = list(space.to_parameters())
    if algorithm["algorithmName"] == "grid":
        parameters, kept = _grid_parameters(space, settings, max_trials, notes)
        algorithm = {"algorithmName": "grid", **({"algorithmSettings": kept} if kept else {})}

    budget = False
    if early is not None and early.algorithm_name == "medianstop":
        body_spec["earlyStopping"] = {"algorithmName": "medianstop",
                                      **({"algorithmSettings": _settings(early.algorithm_settings)}
                                         if early.algorithm_settings else {})}
    elif early is not None:  # successive-halving, asha, hyperband
        rule = get_early_stopping(early.algorithm_name, early.settings(), max_epochs=spec.train.max_epochs)
        eta, min_budget, max_budget = rule.eta, rule.min_budget, rule.max_budget
        wanted = max_trials
        if isinstance(rule, Hyperband):
            # Katib runs kftune's first (most exploratory) bracket: its rungs and its configurations
            first = rule.brackets()[0]
            wanted = min(max_trials, first.n)
            plan = hyperband_plan(eta, first.rungs[0], max_budget, wanted) if rule.s_max > 0 else None
        else:
            plan = hyperband_plan(eta, min_budget, max_budget, max_trials)
        if algorithm["algorithmName"] != "random":
            notes.append(f"earlyStopping: {early.algorithm_name} cannot be combined with algorithm "
                         f"{algorithm['algorithmName']} in Katib (its hyperband is a random-sampling algorithm of its "
                         f"own, not an early-stopping rule); the Experiment runs {algorithm['algorithmName']} without "
                         f"early stopping, every trial training its full budget")
        elif plan is None and bohb:
            algorithm, bohb_note = bohb_algorithm(space, settings, brackets=False)
            notes.append(f"earlyStopping: {early.algorithm_name} (eta {eta}, budgets {min_budget}..{max_budget}) "
                         "gives no Katib hyperband bracket (one bracket, or a first rung under one epoch); the "
                         "Experiment runs without early stopping, every trial training the full budget")
        elif plan is None and isinstance(rule, Hyperband):
            notes.append(f"earlyStopping: hyperband with min_budget {min_budget} and max_budget {max_budget} (eta {eta}) "
                         "has one bracket, every trial training the full budget: the Experiment runs random without "
                         "early stopping, which is the same search")
        elif plan is None:
            notes.append(f"earlyStopping: {early.algorithm_name} (eta {eta}, budgets {min_budget}..{max_budget}) cannot "
                         "map to Katib's hyperband, whose first rung would train for less than one epoch; the "
                         "Experiment runs without early stopping")
        else:
            ours = list(rule.rungs())
            algorithm = {"algorithmName": "hyperband", "algorithmSettings": plan.settings()}
            notes.append(f"earlyStopping: {early.algorithm_name} maps to Katib's hyperband algorithm as one bracket: "
                         f"{plan.configurations} configurations, rungs at {list(plan.rungs)} epochs with "
                         f"{list(plan.sizes)} trials (kftune's rungs: {ours} epochs)"
                         + ("" if list(plan.rungs) == ours else "; the rung budgets differ because Katib derives "
                            "them from r_l downwards (r_l * eta**-s_max ...)"))
            if "random_state" in settings:
                notes.append("hyperband: random_state is not a hyperband setting (Katib's hyperband draws with "
                             "numpy's global random state); the draws are not reproducible")
            parameters = _hyperband_parameters(SearchSpace.from_parameters(parameters), plan, notes)
            budget = True
            if isinstance(rule, Hyperband):
                notes.append(_hyperband_brackets_note(rule, max_trials))
            if plan.configurations != wanted:
                notes.append(f"hyperband: {plan.configurations} configurations instead of {wanted}: Katib requires "
                             f"parallelTrialCount >= eta**int(log(r_l)/log(eta)) = {plan.min_parallel}")
            if parallel != plan.configurations:
                notes.append(f"hyperband: parallelTrialCount {plan.configurations} (spec: {parallel}): Katib's hyperband "
                             "draws a whole rung in one request, so a bracket has parallelTrialCount configurations; "
                             "a smaller value makes Katib run smaller brackets with fewer rungs")
            notes.append(f"hyperband: maxTrialCount {plan.trials} (spec: {max_trials} configurations): Katib creates a "
                         "new Trial for each promotion; the Experiment ends after this bracket. Katib sizes later "
                         "rungs from the suggestions it requests, so when fewer are requested a rung may be smaller")
            notes.append("hyperband: a promoted configuration is a new Katib Trial (a new pod and trial id) and trains "
                         "from epoch 0 for the rung's budget; it cannot resume the lower rung's checkpoint as kftune's "
                         "successive halving does")
            if early.algorithm_name == "asha":
                notes.append("hyperband: ASHA's asynchronous promotion has no Katib counterpart; Katib's hyperband is "
                             "synchronous: a rung is decided when every trial of it has finished")
            max_trials, parallel = plan.trials, plan.configurations
    if bohb:
        notes.insert(bohb_at, bohb_note)
    # Katib's webhook refuses parallelTrialCount or maxFailedTrialCount above maxTrialCount.
    if parallel > max_trials:
        notes.append(f"parallelTrialCount {max_trials} (spec: {parallel}): Katib refuses more parallel trials than "
                     f"maxTrialCount {max_trials}")
        parallel = max_trials
    body_spec["algorithm"] = algorithm
    body_spec["parallelTrialCount"] = parallel
    body_spec["maxTrialCount"] = max_trials
    if "maxFailedTrialCount" in katib:
        failed = katib["maxFailedTrialCount"]
        if failed > max_trials:
            notes.append(f"maxFailedTrialCount {max_trials} (spec: {failed}): Katib refuses more than maxTrialCount "
                         f"{max_trials}")
            failed = max_trials
        body_spec["maxFailedTrialCount"] = failed
    body_spec["parameters"] = to_katib_parameters(parameters)
    body_spec["metricsCollectorSpec"] = {"collector": {"kind": "StdOut"}}
    body_spec["resumePolicy"] = "Never"
    names = [p.name for p in parameters if p.name != BUDGET_PARAMETER]
    if TRIAL_NAME_PARAMETER in names:
        raise ConfigError([Problem(f"{_PATH}.parameters", f"a search parameter may not be called "
                                                          f"{TRIAL_NAME_PARAMETER!r} (kftune's trial template uses it)")])
    if budget and BUDGET_PARAMETER in space.names:
        raise ConfigError([Problem(f"{_PATH}.parameters", f"a search parameter may not be called {BUDGET_PARAMETER!r} "
                                                          "with successive halving (Katib's hyperband uses it)")])
    body_spec["trialTemplate"] = _trial_template(job, pod, names, budget=budget, notes=notes)
    if search.finalists:
        notes.append(f"finalists: kftune re-trains the {search.finalists} best trials with {search.finalist_runs} "
                     "seeds before naming a winner; Katib has no counterpart, its optimum is the single best trial")

    labels = {"app.kubernetes.io/part-of": "kftune", JOB_LABEL: job.name, PHASE_LABEL: which}
    labels.update({k: v for k, v in job.labels.items() if k not in labels})
    metadata: dict[str, Any] = {"name": name}
    namespace = pod.namespace or job.namespace
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = labels
    if notes:
        metadata["annotations"] = {NOTES_ANNOTATION: "\n".join(notes)}
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": body_spec}
    return KatibExperiment(name=name, phase=which, round=r, body=body, notes=tuple(notes))


def coarse_to_fine_experiments(job: TuningJob, pod: TrialPodConfig, coarse_trials: Sequence[Trial]
                               ) -> tuple[KatibExperiment, KatibExperiment]:
    """The coarse Experiment and, from its trials, the fine one (round 1)."""
    return (export_experiment(job, pod, phase="coarse"),
            export_experiment(job, pod, phase="fine", earlier_rounds=[coarse_trials]))
