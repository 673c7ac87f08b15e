"""``kftune lr-find``: Leslie Smith's learning-rate range test on a prepared corpus.

Trains a *fresh* model (the spec's model defaults, ``--set`` overrides on top) for at most ``iterations``
mini-batches, and never more than one epoch, while the learning rate grows from ``startLR`` to ``endLR``;
stops when the loss diverges; reads the curve (:mod:`kftune.core.lr_range`) for a suggested learning rate
and a ``[base_lr, max_lr]`` range for the search and for cyclical/OneCycle schedules.

Settings come from, in increasing priority: the defaults of :class:`~kftune.core.lr_range.RangeTestConfig`
and of the corpus' task (:func:`kftune.nlp.config.defaults_for`); the spec (``--spec``: ``spec.model``,
``spec.lrRangeTest``, ``spec.train`` for device, precision, seed and threads); the command line.

Output in ``--out`` (a directory or store URI; written locally, then uploaded):

- ``learning_rate.tsv``: one row per batch (iteration, lr, raw, smoothed and trend loss, dev metric);
- ``lr_curve.png``: the curve, every heuristic marked, the range shaded;
- ``summary.md`` and ``summary.html``: for the KFP UI (Markdown/HTML outputs);
- ``result.json`` (written last: its presence marks a complete test): ``RangeTestResult.to_dict()`` (the
  chosen ``method``, its ``lr``, the ``range``, ``diverged``, every suggestion with its reason, the curves)
  plus ``suggested_lr``, ``iterations_run``, ``seconds``, ``apply_to`` (the search parameter the range is
  for), the hyperparameters used and, with a spec, ``search_handoff``: what
  :func:`kftune.core.lr_handoff.apply_lr_range` makes of the search's space.

Metrics (``suggested_learning_rate``, ``lr_range_low``, ``lr_range_high``, ``iterations``, ``diverged``,
only those that exist) go to the sinks configured in the environment (:func:`kftune.io.metrics.sinks_from_env`).
A curve without a suggestion is a result, not a failure: the exit code is 0 and the summary says why.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from kftune._version import __version__
from kftune.core.errors import ArtifactNotFoundError, ConfigError, DataError, Problem
from kftune.core.lr_range import DEFAULT_METHOD, METHODS, MODES, RangeTestConfig
from kftune.io.metrics import MetricsSink
from kftune.steps._common import CheckedConfig, add_common_arguments, run_main

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
TSV_FILE, PNG_FILE, RESULT_FILE, MARKDOWN_FILE, HTML_FILE = (
    "learning_rate.tsv", "lr_curve.png", "result.json", "summary.md", "summary.html")
OUTPUT_FILES = (TSV_FILE, PNG_FILE, MARKDOWN_FILE, HTML_FILE, RESULT_FILE)
CORPUS_FILES = ("corpus.json", "train.jsonl", "dev.jsonl")
DEFAULT_DEV_SUBSET = 256


# --------------------------------------------------------------------------- config and result
@dataclass(frozen=True)
class LrFindConfig(CheckedConfig):
    """What to test and where the outputs go (see the module docstring).

    ``corpus``: the corpus step's output (directory or store URI); ``out``: output directory or store URI;
    ``spec``: a TuningJob spec file (optional); ``overrides``: hyperparameters, ``{name: value}`` with Katib
    strings allowed (``--set``). ``start_lr``, ``end_lr``, ``iterations``, ``mode``, ``method``: the range
    test's settings (``None``: the spec's, else the defaults). ``dev_metric_every``: evaluate the dev score on
    ``dev_subset`` dev sentences every that many batches (``None``: never). ``seed``, ``device``: ``None``
    takes the spec's ``train.seed``/``train.device`` (default 1 and auto); ``num_threads``: torch threads on
    the CPU (``None``: the spec's ``train.numThreads``, else torch's default).
    """

    corpus: str
    out: str
    spec: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    start_lr: float | None = None
    end_lr: float | None = None
    iterations: int | None = None
    mode: str | None = None
    method: str | None = None
    dev_metric_every: int | None = None
    dev_subset: int = DEFAULT_DEV_SUBSET
    seed: int | None = None
    device: str | None = None
    num_threads: int | None = None

    def problems(self) -> list[Problem]:
        """Every problem with this config that can be seen without reading files (empty when usable)."""
        p: list[Problem] = []
        for name, flag, what in (("corpus", "--corpus", "the output of `kftune corpus`"),
                                 ("out", "--out", "an output directory or store URI")):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                p.append(Problem(f"lr_find.{name}", f"missing: give {flag} with {what}"))
        if isinstance(self.corpus, str) and self.corpus.strip() and _is_local(self.corpus):
            if not (_local_path(self.corpus) / "corpus.json").is_file():
                p.append(Problem("lr_find.corpus", f"{self.corpus!r} holds no corpus.json; give the output "
                                                   "directory of `kftune corpus`"))
        if self.spec is not None and (not isinstance(self.spec, str) or not self.spec.strip()):
            p.append(Problem("lr_find.spec", f"{self.spec!r} is not a path; give a TuningJob spec file or leave it out"))
        if not isinstance(self.overrides, Mapping):
            p.append(Problem("lr_find.overrides", "must be a mapping of hyperparameter names to values"))
        if self.mode is not None and self.mode not in MODES:
            p.append(Problem("lr_find.mode", f"{self.mode!r} is not one of {', '.join(MODES)}"))
        if self.method is not None and self.method not in METHODS:
            p.append(Problem("lr_find.method", f"{self.method!r} is not one of {', '.join(METHODS)}"))
        for name, lowest, what in (("dev_metric_every", 1, "batches between dev evaluations"),
                                   ("dev_subset", 1, "dev sentences"), ("seed", 0, "a seed"),
                                   ("num_threads", 1, "torch threads")):
            v = getattr(self, name)
            if v is None and name != "dev_subset":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
                p.append(Problem(f"lr_find.{name}", f"{v!r} must be an integer >= {lowest} ({what})"))
        if self.device is not None and self.device not in DEVICES:
            p.append(Problem("lr_find.device", f"{self.device!r} is not one of {', '.join(DEVICES)}"))
        return p


@dataclass(frozen=True)
class LrFindResult:
    """What ``run`` produced. ``lr_range`` is ``(base_lr, max_lr)`` or ``None``; ``suggested_lr`` is the
    chosen ``method``'s suggestion or ``None`` (the summary says why); ``iterations`` the batches run of
    ``iterations_planned`` (after the one-epoch cap); ``artifacts`` maps output names to URIs."""

    suggested_lr: float | None
    lr_range: tuple[float, float] | None
    method: str
    diverged: bool
    iterations: int
    iterations_planned: int
    seconds: float
    out: str
    artifacts: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    handoff: dict[str, Any] | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False)


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://")).expanduser()


# --------------------------------------------------------------------------- resolving settings
def range_config(config: LrFindConfig, base: RangeTestConfig | None = None) -> RangeTestConfig:
    """The range test's settings: ``base`` (the spec's, else the defaults) with the config's on top."""
    base = base or RangeTestConfig()
    updates = {key: value for key, value in (("startLR", config.start_lr), ("endLR", config.end_lr),
                                             ("iterations", config.iterations), ("mode", config.mode),
                                             ("method", config.method)) if value is not None}
    if not updates:
        return base
    return RangeTestConfig.from_dict({**base.to_dict(), **updates}, prefix="lrRangeTest")


def _materialize_corpus(uri: str, work: Path) -> Path:
    """A local directory holding the corpus: ``uri`` itself when local, else a download into ``work``."""
    if _is_local(uri):
        return _local_path(uri)
    from kftune.io.store import open_store

    store = open_store(uri)
    target = work / "corpus"
    target.mkdir(parents=True, exist_ok=True)
    for name in CORPUS_FILES:
        try:
            store.get_file(name, target / name)
        except ArtifactNotFoundError as exc:
            if name == "dev.jsonl":
                continue
            raise DataError(f"{uri}: no {name}; point --corpus at the output of `kftune corpus`") from exc
    return target


# --------------------------------------------------------------------------- the step
def run(config: LrFindConfig, *, job: Any = None, sinks: MetricsSink | None = None) -> LrFindResult:
    """Run the range test and write the outputs (see the module docstring).

    ``job``: the parsed spec (a :class:`kftune.core.spec.TuningJob`; a pipeline task has one), used instead
    of reading ``config.spec``. ``sinks``: where the metrics go (default
    :func:`kftune.io.metrics.sinks_from_env` for the step ``lr_find``, closed at the end; a given sink is
    flushed, not closed). Raises :class:`ConfigError` for an unusable config, spec or override (nothing is
    trained then), :class:`DataError` for an unreadable corpus.
    """
    config.validate()
    from kftune.nlp.config import settings_from_job
    from kftune.nlp.data import read_corpus_info

    if job is None and config.spec is not None:
        from kftune.io.specfile import load_spec

        job = load_spec(config.spec)
    rt_config = range_config(config, job.spec.lr_range_test.config if job is not None else None)
    with tempfile.TemporaryDirectory(prefix="kftune-lr-find-") as tmp:
        work = Path(tmp)
        corpus_dir = _materialize_corpus(config.corpus, work)
        info = read_corpus_info(corpus_dir)
        task_type = info["task"]
        if job is not None and job.spec.task.type != task_type:
            raise ConfigError([Problem("spec.task.type", f"{job.spec.task.type} does not fit the corpus "
                                                         f"{config.corpus!r}, which holds {task_type} data")],
                              source=config.spec)
        hp, trainer = settings_from_job(job, task_type, overrides=dict(config.overrides or {}))
        trainer = dataclasses.replace(trainer, **{k: v for k, v in (("seed", config.seed), ("device", config.device),
                                                                    ("num_threads", config.num_threads))
                                                  if v is not None})
        apply_to = job.spec.lr_range_test.apply_to if job is not None else "learning_rate"

        from kftune.io.store import open_store
        from kftune.nlp.lr_find import run_range_test

        started = time.perf_counter()
        result = run_range_test(corpus_dir, hp, trainer, rt_config, seed=trainer.seed,
                                dev_metric_every=config.dev_metric_every, dev_subset=config.dev_subset,
                                open_store=open_store)
        seconds = time.perf_counter() - started
        record = result.to_dict()
        record.update(
            suggested_lr=result.lr, iterations_run=len(result.losses), iterations_planned=result.config.iterations,
            seconds=round(seconds, 4), apply_to=apply_to, corpus=config.corpus,
            corpus_name=info.get("name"), task=task_type, spec=config.spec,
            hyperparameters=hp.to_dict(), seed=trainer.seed, device=result.extra.get("device"),
            kftune_version=__version__)
        handoff = None
        if job is not None:
            from kftune.core.lr_handoff import apply_lr_range

            if job.spec.search.parameter(apply_to) is not None:
                _, handoff = apply_lr_range(job.spec.search.parameters, record, apply_to)
                record["search_handoff"] = handoff
        artifacts = _write_outputs(result, record, handoff, config.out, work)

    metrics: dict[str, float] = {"iterations": float(len(result.losses)), "diverged": float(result.diverged)}
    if result.lr is not None:
        metrics["suggested_learning_rate"] = result.lr
    if result.range is not None:
        metrics["lr_range_low"], metrics["lr_range_high"] = result.range.base_lr, result.range.max_lr
    from kftune.io.metrics import log_final

    log_final("lr_find", metrics, sinks)
    return LrFindResult(
        suggested_lr=result.lr,
        lr_range=None if result.range is None else (result.range.base_lr, result.range.max_lr),
        method=result.method, diverged=result.diverged, iterations=len(result.losses),
        iterations_planned=result.config.iterations, seconds=seconds, out=artifacts.pop("_root"),
        artifacts=artifacts, metrics=metrics, handoff=handoff, record=record)


def _provenance(record: Mapping[str, Any], handoff: Mapping[str, Any] | None) -> list[str]:
    hp = record["hyperparameters"]
    extra = record.get("extra") or {}
    lines = [f"- corpus: `{record['corpus']}` ({record.get('corpus_name') or '-'}, {record['task']}), "
             f"{extra.get('train_sentences', '?')} training sentences, {extra.get('steps_per_epoch', '?')} "
             f"mini-batches per epoch",
             f"- model: {record['task']} defaults" + (f" from spec `{record['spec']}`" if record.get("spec") else "")
             + f"; optimizer {hp['optimizer']}, mini_batch_size {hp['mini_batch_size']}, "
               f"weight_decay {hp['weight_decay']:g}, clip_grad_norm {hp['clip_grad_norm']}",
             f"- ran {record['iterations_run']} of {record['iterations_planned']} batches in "
             f"{record['seconds']:.1f} s on {extra.get('device', '?')} ({extra.get('precision', '?')}), "
             f"seed {record['seed']}, a fresh model"]
    if extra.get("capped"):
        lines.append(f"- capped at one epoch: {extra.get('cap_reason')}")
    if extra.get("dev_metric_every"):
        lines.append(f"- dev metric every {extra['dev_metric_every']} batches on {extra.get('dev_subset')} "
                     "dev sentences")
    if handoff is not None:
        lines.append(f"- search hand-off: {handoff['reason']}")
    lines.append(f"- kftune {record['kftune_version']}")
    return lines


def _write_outputs(result: Any, record: dict[str, Any], handoff: Mapping[str, Any] | None, out: str,
                   work: Path) -> dict[str, str]:
    """Render every output into ``work``, then upload them to ``out`` (result.json last)."""
    from kftune.io.store import open_store
    from kftune.nlp.lr_plots import learning_rate_tsv, lr_curve_png, render_lr_html, render_lr_markdown

    local = work / "out"
    local.mkdir()
    png = lr_curve_png(result)
    provenance = _provenance(record, handoff)
    (local / TSV_FILE).write_text(learning_rate_tsv(result), encoding="utf-8")
    (local / PNG_FILE).write_bytes(png)
    markdown = render_lr_markdown(result).rstrip("\n") + "\n\n## Provenance\n\n" + "\n".join(provenance) + "\n"
    (local / MARKDOWN_FILE).write_text(markdown, encoding="utf-8")
    items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in provenance)
    page = render_lr_html(result, png).replace("</body>", f"<h2>Provenance</h2><ul>{items}</ul></body>")
    (local / HTML_FILE).write_text(page, encoding="utf-8")
    (local / RESULT_FILE).write_text(json.dumps(_json_safe(record), indent=2, sort_keys=True, ensure_ascii=False)
                                     + "\n", encoding="utf-8")
    store = open_store(out)
    artifacts: dict[str, str] = {}
    for name in OUTPUT_FILES:  # result.json is last
        store.put_file(name, local / name)
        artifacts[name] = store.uri_for(name)
    artifacts["_root"] = store.root_uri
    return artifacts


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- command line
def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not name=value (e.g. --set mini_batch_size=16)")
    return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune lr-find",
        description="Learning-rate range test (Smith 2017): train a fresh model for a few dozen mini-batches "
                    "(at most one epoch) while the learning rate grows, stop when the loss diverges, and suggest "
                    "a learning rate and a [base_lr, max_lr] range for the search. Writes learning_rate.tsv, "
                    "lr_curve.png, result.json, summary.md and summary.html.")
    p.add_argument("--corpus", required=True, help="the output of `kftune corpus` (directory or store URI)")
    p.add_argument("--out", required=True, help="output directory or store URI")
    p.add_argument("--spec", default=None, help="a TuningJob spec: its model defaults, lrRangeTest and train "
                                                "settings are used (the command line wins)")
    p.add_argument("--set", dest="overrides", metavar="NAME=VALUE", action="append", type=_assignment, default=[],
                   help="a hyperparameter for the model (repeatable), e.g. --set mini_batch_size=16")
    p.add_argument("--start-lr", type=float, default=None, help="first learning rate (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=None, help="last learning rate (default 10)")
    p.add_argument("--iterations", type=int, default=None,
                   help="mini-batches (default 100; capped at one epoch)")
    p.add_argument("--mode", choices=MODES, default=None, help="lr schedule (default exponential)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help=f"which suggestion is the result (default {DEFAULT_METHOD}; all are reported)")
    p.add_argument("--dev-metric-every", type=int, default=None, metavar="K",
                   help="also record the dev score every K batches (on a fixed subset of the dev split)")
    p.add_argument("--dev-subset", type=int, default=DEFAULT_DEV_SUBSET, metavar="N",
                   help=f"dev sentences the dev metric is measured on (default {DEFAULT_DEV_SUBSET})")
    p.add_argument("--seed", type=int, default=None, help="seed of the model, batch order and dropout (default: "
                                                          "the spec's train.seed, else 1)")
    p.add_argument("--device", choices=DEVICES, default=None, help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", dest="num_threads", type=int, default=None,
                   help="torch threads on the CPU (default: the spec's train.numThreads, else torch's)")
    add_common_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> LrFindConfig:
    return LrFindConfig(corpus=args.corpus, out=args.out, spec=args.spec, overrides=dict(args.overrides),
                        start_lr=args.start_lr, end_lr=args.end_lr, iterations=args.iterations, mode=args.mode,
                        method=args.method, dev_metric_every=args.dev_metric_every, dev_subset=args.dev_subset,
                        seed=args.seed, device=args.device, num_threads=args.num_threads)


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        r = run(config_from_args(args))
        lr = "none" if r.suggested_lr is None else f"{r.suggested_lr:.3g}"
        rng = "none" if r.lr_range is None else f"[{r.lr_range[0]:.3g}, {r.lr_range[1]:.3g}]"
        print(f"suggested_lr={lr} lr_range={rng} method={r.method} diverged={str(r.diverged).lower()} "
              f"batches={r.iterations}/{r.iterations_planned} -> {r.out}")
        if r.suggested_lr is None:
            print(f"no suggestion: {r.record['suggestions'][r.method]['reason']}", file=sys.stderr)
        return 0

    return run_main(body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
