"""The pipeline's first step: apply a run's parameters to the TuningJob spec, validate it, size the search.

A pipeline run takes the spec as JSON plus the parameters a KFP UI user changes (corpus, downsample,
max_trials, parallel_trials, max_epochs, seed, store, run_id). Parameters set to 0 (-1 for ``seed``, ""
for ``corpus``) keep the spec's value; a smaller ``max_epochs`` also lowers the halving rule's
``max_budget`` to it. Every bad parameter is reported at once, with its name.

The search must fit the pipeline's search rounds (a KFP DAG is static): with ``search_rounds`` > 0 (the
rounds the pipeline was compiled with) a search that does not end within them
(:meth:`kftune.core.search_policy.SearchPolicy.fits`) fails here, naming the rounds it needs; with 0,
the result says how many it needs (:meth:`~kftune.core.search_policy.SearchPolicy.rounds_needed`, what
``kftune run`` and ``kftune submit`` compile the pipeline with, and what ``kftune search`` plans with).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from kftune.core.errors import ConfigError, Problem
from kftune.core.search_policy import MAX_ROUNDS, SearchPolicy
from kftune.core.spec import TuningJob

#: What a run id may be (it names the run's folder in the store).
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class ResolveConfig:
    """The pipeline's parameters (see the module docstring). ``spec``: the TuningJob as JSON text;
    ``job_id``: the KFP run id (the run id when ``run_id`` is empty); ``search_rounds``: the rounds the
    pipeline was compiled with (0: only compute how many the spec needs)."""

    spec: str
    store: str
    corpus: str = ""
    downsample: float = 0.0
    max_trials: int = 0
    parallel_trials: int = 0
    max_epochs: int = 0
    seed: int = -1
    run_id: str = ""
    job_id: str = ""
    search_rounds: int = 0


@dataclass(frozen=True)
class Resolved:
    """The effective spec (``spec``: its dict, with every default spelled out; ``job``: parsed), the corpus
    step's settings (``corpus_config``: prepare-corpus's cache key), the run id, the store root and the
    search rounds."""

    job: TuningJob
    spec: dict[str, Any]
    corpus_config: dict[str, Any]
    run_id: str
    store: str
    search_rounds: int

    @property
    def spec_json(self) -> str:
        return json.dumps(self.spec, sort_keys=True)

    @property
    def corpus_config_json(self) -> str:
        return json.dumps(self.corpus_config, sort_keys=True)


def apply_parameters(config: ResolveConfig) -> tuple[dict[str, Any], str, str]:
    """The spec document with the parameters applied, the store root and the run id; :class:`ConfigError`
    naming every bad parameter."""
    problems = []
    try:
        data = json.loads(config.spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError([Problem("parameter spec", f"not JSON ({exc}); pass the TuningJob as JSON "
                                                     "(kftune run and kftune submit do)")]) from None
    if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
        raise ConfigError([Problem("parameter spec", "not a TuningJob: a JSON object with apiVersion, kind, "
                                                     "metadata and spec")])
    body = data["spec"]

    def section(key: str) -> dict[str, Any]:
        value = body.get(key)
        if value is None:
            value = body[key] = {}
        if not isinstance(value, dict):
            raise ConfigError([Problem(f"spec.{key}", "must be a mapping")])
        return value

    corpus = config.corpus
    if not isinstance(corpus, str):
        problems.append(Problem("parameter corpus", f"{corpus!r} is not a string"))
    elif corpus.strip() and corpus.strip() not in (section("corpus").get("name"), section("corpus").get("uri")):
        # another corpus than the spec's (the spec's own keeps every setting: tokenizer, labelMap, ...)
        value = corpus.strip()
        block = section("corpus")
        keep = {k: block[k] for k in ("downsample", "devFraction", "seed") if k in block}
        if "://" in value or "/" in value or value.startswith("."):  # a URI or a path, not a registered name
            if block.get("name") is not None or block.get("corpora") is not None:
                block = {}  # a registered corpus has no format options to keep; the parameter replaces corpora
            block.pop("name", None)
            block["uri"] = value
        else:
            block = {"name": value}
        block.update(keep)
        body["corpus"] = block
    if config.downsample < 0 or config.downsample > 1:
        problems.append(Problem("parameter downsample", f"{config.downsample} is not in (0, 1]; 0 keeps the spec's "
                                                        "value"))
    elif config.downsample > 0:
        section("corpus")["downsample"] = float(config.downsample)
    for name, where, key in (("max_trials", "search", "maxTrialCount"),
                             ("parallel_trials", "search", "parallelTrialCount"),
                             ("max_epochs", "train", "maxEpochs")):
        value = getattr(config, name)
        if value < 0:
            problems.append(Problem(f"parameter {name}", f"{value} is negative; 0 keeps the spec's {where}.{key}"))
        elif value > 0:
            section(where)[key] = int(value)
    rule = section("search").get("earlyStopping")
    if config.max_epochs > 0 and isinstance(rule, dict) and isinstance(rule.get("algorithmSettings"), list):
        for setting in rule["algorithmSettings"]:  # fewer epochs: the last rung comes down with them
            if isinstance(setting, dict) and setting.get("name") == "max_budget":
                try:
                    if int(str(setting.get("value"))) > config.max_epochs:
                        setting["value"] = str(int(config.max_epochs))
                except ValueError:
                    pass  # the spec's own check reports it
    if config.seed < -1:
        problems.append(Problem("parameter seed", f"{config.seed} is below -1; -1 keeps the spec's seeds"))
    elif config.seed >= 0:
        section("corpus")["seed"] = int(config.seed)
        section("train")["seed"] = int(config.seed)
    store = (config.store or "").strip().rstrip("/")
    if not store:
        problems.append(Problem("parameter store", "empty: give the store root, e.g. s3://kftune/tuning"))
    elif "://" in store and not store.startswith(("s3://", "file://")):
        problems.append(Problem("parameter store", f"{store!r}: use s3://bucket/prefix or a local path"))
    run = (config.run_id or "").strip() or (config.job_id or "").strip()
    if not RUN_ID.fullmatch(run):
        problems.append(Problem("parameter run_id", f"{run!r} cannot name a store folder: use letters, digits, "
                                                    "'.', '_' and '-'"))
    if problems:
        raise ConfigError(problems)
    return data, store, run


def search_rounds(policy: SearchPolicy, compiled: int) -> int:
    """The rounds of the search: ``compiled`` when the search fits them, else :class:`ConfigError` naming
    the rounds it needs; with ``compiled`` 0, :meth:`~kftune.core.search_policy.SearchPolicy.rounds_needed`."""
    if compiled <= 0:
        return policy.rounds_needed()
    if not policy.fits(compiled):
        needed = policy.rounds_to_fit(compiled + 1)
        raise ConfigError([Problem(
            "spec.search", f"this search needs {needed or f'more than {MAX_ROUNDS}'} rounds, but the pipeline was "
                           f"compiled with {compiled} (one per suggest -> trials -> barrier): use `kftune "
                           "submit` or `kftune run`, which compile for the spec, or `kftune compile --rounds "
                           f"{needed or MAX_ROUNDS}`")])
    return compiled


def run(config: ResolveConfig) -> Resolved:
    """Apply the parameters, validate the spec, size the search (see the module docstring). Raises
    :class:`ConfigError` with every problem, before any work."""
    from kftune.core.spec import job_to_dict, parse_spec
    from kftune.io.specfile import model_hooks
    from kftune.steps.corpus import settings_from_spec

    data, store, run_id = apply_parameters(config)
    validator, names = model_hooks()
    job = parse_spec(data, source="the spec with this run's parameters", model_validator=validator,
                     hyperparameter_names=names)
    rounds = search_rounds(SearchPolicy.from_job(job), int(config.search_rounds))
    # the corpus step's settings (one corpus, or several as spec.corpus.corpora): prepare-corpus's cache key
    return Resolved(job=job, spec=job_to_dict(job), corpus_config=settings_from_spec(job.spec.corpus, job.spec.task),
                    run_id=run_id, store=store, search_rounds=rounds)
