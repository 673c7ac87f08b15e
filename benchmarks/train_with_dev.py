"""``train.trainWithDev`` on real corpora: the tuned model trained on train alone and trained again on train + dev,
each scored on the test split beside its baseline fitted on the same sentences.

For each case the corpus is prepared as its example spec says (the real corpus step, through the mirror), the
configuration is the example spec's model block under the winner of the quality benchmark's search for that corpus
(``benchmarks/results/quality.md``; the assignment is written below), and the training is the spec's ``train``
block with one CPU thread. Per seed:

1. ``kftune.steps.train.run`` on train (dev for early stopping and the best epoch): the plain model;
2. the same run, resumed from its checkpoints with ``train_with_dev`` on: its first phase is already done, so only
   the second phase trains (train + dev, for the first phase's best epoch);
3. ``kftune.steps.evaluate.run`` on both models: the test score and the baseline (fitted on train for the plain
   model, on train + dev for the other, as the evaluation does by itself).

Usage::

    KFTUNE_CORPUS_MIRROR=../shared/corpora python benchmarks/train_with_dev.py [--cases wnut17,trec6,nsmc-0.1]

Results: ``benchmarks/results/train_with_dev.{md,json,png}`` (a rerun of some cases replaces only those).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from statistics import mean
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Case:
    example: str
    assignment: Mapping[str, Any]
    seeds: tuple[int, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)  # spec.corpus fields the quality job sets


#: The winners of the quality benchmark's searches (``benchmarks/results/quality.md``, runs before trainWithDev).
CASES: dict[str, Case] = {
    "wnut17": Case("examples/wnut17.yaml", {
        "casing_embedding_dim": "0", "char_embeddings": "lstm", "char_hidden_size": "50", "hidden_size": "128",
        "learning_rate": 0.002831478401240856, "locked_dropout": 0.23838242141343657, "min_word_freq": "2",
        "word_dropout": 0.07021256793339949}, seeds=(1, 2)),
    "trec6": Case("examples/trec6.yaml", {
        "dropout": 0.18936531239320845, "embedding_dim": "128", "learning_rate": 0.0010125990014155932,
        "mini_batch_size": 32}, seeds=(1, 2, 3, 4), overrides={"downsample": 1.0}),
    "nsmc-0.1": Case("examples/nsmc.yaml", {
        "char_ngram_max": 4, "learning_rate": 0.0010663650057682469, "ngram_dim": "32",
        "ngram_dropout": 0.12261206759466056, "weight_decay": 2.8772557857342892e-05, "word_ngrams": 2},
        seeds=(1, 2, 3), overrides={"downsample": 0.1}),
}


def _job(case: Case) -> Any:
    """The example spec with the case's corpus overrides and ``trainWithDev`` off (each phase sets it)."""
    import yaml

    from kftune.io.specfile import parse_spec_text

    data = yaml.safe_load((REPO / case.example).read_text(encoding="utf-8"))
    data["spec"]["corpus"].update(case.overrides)
    data["spec"]["train"]["trainWithDev"] = False
    return parse_spec_text(yaml.safe_dump(data, allow_unicode=True), source=case.example)


def _corpus(name: str, job: Any, work: Path) -> Path:
    """The corpus step's output for the spec (made once; a ``corpus.json`` marks it done)."""
    from kftune.core.spec import job_to_dict
    from kftune.steps import corpus as step
    from kftune.steps.resolve import ResolveConfig
    from kftune.steps.resolve import run as resolve

    out = work / name / "corpus"
    if not (out / "corpus.json").exists():
        resolved = resolve(ResolveConfig(spec=json.dumps(job_to_dict(job)), store=str(work / "store"), run_id=name))
        step.run(step.CorpusConfig.from_settings(resolved.corpus_config_json, out=str(out)))
    return out


def run_case(name: str, case: Case, work: Path) -> dict[str, Any]:
    import dataclasses

    from kftune.nlp.config import settings_from_job
    from kftune.steps.evaluate import EvaluateConfig
    from kftune.steps.evaluate import run as evaluate
    from kftune.steps.train import TrainConfig, run

    job = _job(case)
    corpus = _corpus(name, job, work)
    hp, trainer = settings_from_job(job, job.spec.task.type, assignment=case.assignment)
    rows = []
    for seed in case.seeds:
        tcfg = dataclasses.replace(trainer, seed=seed, num_threads=1, device="cpu", train_with_dev=False)
        plain_dir, dev_dir = work / name / f"seed-{seed}" / "plain", work / name / f"seed-{seed}" / "with-dev"
        for d in (plain_dir, dev_dir):
            shutil.rmtree(d, ignore_errors=True)
        started = time.perf_counter()
        plain = run(TrainConfig(corpus=str(corpus), out=str(plain_dir), hyperparameters=hp, trainer=tcfg,
                                show_progress=False))
        plain_seconds = time.perf_counter() - started
        shutil.copytree(plain_dir, dev_dir)  # the first phase's checkpoints: resumed, it is already done
        started = time.perf_counter()
        refit = run(TrainConfig(corpus=str(corpus), out=str(dev_dir), hyperparameters=hp, resume=True,
                                trainer=dataclasses.replace(tcfg, train_with_dev=True), show_progress=False))
        refit_seconds = time.perf_counter() - started
        scores = {}
        for key, d in (("plain", plain_dir), ("with_dev", dev_dir)):
            e = evaluate(EvaluateConfig(model=str(d / "model.pt"), corpus=str(corpus), out=str(d / "eval")))
            scores[key] = {"test": e.evaluation.main_score, "baseline": e.baseline.test_score,
                           "baseline_method": e.baseline.method, "baseline_n_train": e.baseline.n_train}
        rows.append({"seed": seed, "best_epoch": plain.best_epoch, "epochs": plain.epochs,
                     "dev_score": plain.dev_score, "train_with_dev_epochs": refit.train_with_dev_epochs,
                     "plain_seconds": round(plain_seconds, 1), "second_phase_seconds": round(refit_seconds, 1),
                     **{f"{k}_{m}": v[m] for k, v in scores.items() for m in v}})
        print(f"{name} seed {seed}: test {scores['plain']['test']:.4f} -> {scores['with_dev']['test']:.4f}, "
              f"baseline {scores['plain']['baseline']:.4f} -> {scores['with_dev']['baseline']:.4f}", flush=True)
    return {"example": case.example, "assignment": dict(case.assignment), "corpus_overrides": dict(case.overrides),
            "metric": "span F1 (micro)" if job.spec.task.type == "sequence_labeling" else "accuracy",
            "splits": json.loads((corpus / "corpus.json").read_text()).get("splits"), "seeds": rows}


def _in_order(report: Mapping[str, Any]) -> list[str]:
    """The report's cases in :data:`CASES` order (the JSON sorts its keys), any others after them."""
    return sorted(report["cases"], key=lambda n: (list(CASES).index(n) if n in CASES else len(CASES), n))


def summary(case: Mapping[str, Any]) -> dict[str, float]:
    """Means over the seeds: the model's and the baseline's test scores, each plain and with dev."""
    rows = case["seeds"]
    return {k: mean([r[k] for r in rows]) for k in ("plain_test", "with_dev_test", "plain_baseline",
                                                      "with_dev_baseline")}


def render(report: Mapping[str, Any]) -> str:
    lines = ["# train.trainWithDev on real corpora", "",
             f"{report['platform']}, torch {report['torch']}, one CPU thread per training. Each seed: the tuned "
             "configuration trained on train (dev for early stopping), then its best run trained again on train + "
             "dev for the best epoch (`train.trainWithDev`); both scored on test beside the baseline fitted on the "
             "same sentences (`kftune evaluate`). Scores in points (test %).", "",
             "| case | metric | seeds | tuned, train | tuned, train + dev | baseline, train | baseline, train + dev "
             "| tuned - baseline, train | tuned - baseline, train + dev |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, case in ((n, report["cases"][n]) for n in _in_order(report)):
        m = summary(case)
        lines.append(f"| {name} | {case['metric']} | {len(case['seeds'])} | {100 * m['plain_test']:.2f} | "
                     f"{100 * m['with_dev_test']:.2f} | {100 * m['plain_baseline']:.2f} | "
                     f"{100 * m['with_dev_baseline']:.2f} | {100 * (m['plain_test'] - m['plain_baseline']):+.2f} | "
                     f"{100 * (m['with_dev_test'] - m['with_dev_baseline']):+.2f} |")
    lines += ["", "![tuned minus baseline, per seed](train_with_dev.png)", ""]
    for name, case in ((n, report["cases"][n]) for n in _in_order(report)):
        lines += [f"## {name}", "", f"- spec: `{case['example']}` with corpus fields {case['corpus_overrides'] or '{}'}; "
                  f"splits {json.dumps({s: (v or {}).get('examples') for s, v in (case['splits'] or {}).items()})}",
                  f"- configuration (the quality job's winner): `{json.dumps(case['assignment'], sort_keys=True)}`", "",
                  "| seed | best epoch (of) | held-out dev | tuned, train | tuned, train + dev | baseline, train "
                  "| baseline, train + dev | seconds: first / second phase |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in case["seeds"]:
            lines.append(f"| {r['seed']} | {r['best_epoch']} ({r['epochs']}) | {r['dev_score']:.4f} | "
                         f"{r['plain_test']:.4f} | {r['with_dev_test']:.4f} | {r['plain_baseline']:.4f} | "
                         f"{r['with_dev_baseline']:.4f} | {r['plain_seconds']:.0f} / {r['second_phase_seconds']:.0f} |")
        lines.append("")
    lines.append("Regenerate: `KFTUNE_CORPUS_MIRROR=../shared/corpora python benchmarks/train_with_dev.py "
                 "[--cases " + ",".join(CASES) + "]`.")
    return "\n".join(lines) + "\n"


def plot(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _in_order(report)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.6))
    for i, name in enumerate(names):
        rows = report["cases"][name]["seeds"]
        for j, (key, colour, label) in enumerate((("plain", "tab:gray", "train"),
                                                  ("with_dev", "tab:blue", "train + dev"))):
            deltas = [100 * (r[f"{key}_test"] - r[f"{key}_baseline"]) for r in rows]
            x = i + (j - 0.5) * 0.3
            ax.bar(x, mean(deltas), width=0.28, color=colour, alpha=0.6, label=label if i == 0 else None)
            ax.scatter([x] * len(deltas), deltas, color=colour, s=12, zorder=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("tuned - baseline (points)")
    ax.set_title("trainWithDev: tuned minus baseline, mean and seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--work", default=str(REPO / "benchmarks" / ".work" / "train_with_dev"))
    parser.add_argument("--render", action="store_true", help="rewrite the md and png from the saved json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "components"))
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("KFTUNE_PROGRESS", "log")
    os.environ.setdefault("KFTUNE_CORPUS_MIRROR", str((REPO.parent / "shared" / "corpora").resolve()))
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "train_with_dev.json"
    report = json.loads(path.read_text()) if path.exists() else {"cases": {}}
    if not args.render:
        report.update(platform=platform.platform(), torch=torch.__version__, python=platform.python_version())
        work = Path(args.work)
        for name in [n for n in args.cases.split(",") if n]:
            report["cases"][name] = run_case(name, CASES[name], work)
            path.write_text(json.dumps(report, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    (RESULTS / "train_with_dev.md").write_text(render(report), encoding="utf-8")
    plot(report, RESULTS / "train_with_dev.png")
    print(f"wrote {RESULTS / 'train_with_dev.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
