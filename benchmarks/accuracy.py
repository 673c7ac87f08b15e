"""Test-set quality of models trained from scratch on the CPU with the task defaults.

Sections (each: ``kftune corpus`` -> :func:`kftune.steps.train.run` -> predict the test split with
:func:`kftune.nlp.predict.predict` on the saved ``model.pt`` -> score):

- ``trec6``: TREC_6, full training set, dev carved from train (10 %), Kim-style CNN classifier with
  the defaults. Target: test accuracy >= 0.88.
- ``ud``: UD_ENGLISH ``upos``, BiLSTM-CRF tagger with a character BiLSTM (the defaults), training set
  downsampled by ``--ud-downsample``. Target: test token accuracy >= 0.92.
- ``wnut``: WNUT_17 NER, BiLSTM-CRF tagger with char features; reports test span F1 (seqeval).

Scores come from :func:`kftune.nlp.evaluation.evaluate_predictions` when that module is present,
else from the trainer's :func:`kftune.nlp.trainer.dev_score` (the same computations).

Usage::

    python benchmarks/accuracy.py [--only trec6,ud,wnut] [--threads 1] [--ud-downsample 0.5]
        [--max-epochs N] [--ud-max-epochs N] [--wnut-max-epochs N]

Sections run one after another; results are merged into ``benchmarks/results/accuracy.json`` (a rerun
of one section replaces only that section) and rendered to ``accuracy.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_corpora.py, also when imported
from _corpora import prepare_corpus  # noqa: E402 - after the path is set
RESULTS = REPO / "benchmarks" / "results"
TARGETS = {"trec6": 0.88, "ud": 0.92}


def score(task: Any, gold: list[Any], predicted: list[Any]) -> dict[str, Any]:
    try:
        from kftune.nlp.evaluation import evaluate_predictions
    except ImportError:
        from kftune.nlp.trainer import dev_score

        return {"main_score": dev_score(task, gold, predicted), "scorer": "kftune.nlp.trainer.dev_score"}
    result = evaluate_predictions(gold, predicted, task.type, tag_scheme=task.tag_scheme, label_type=task.label_type)
    return {"main_score": result.main_score, "main_score_name": result.main_score_name, "accuracy": result.accuracy,
            "f1_micro": result.f1_micro, "f1_macro": result.f1_macro, "precision_micro": result.micro.precision,
            "recall_micro": result.micro.recall, "scorer": "kftune.nlp.evaluation.evaluate_predictions"}


def run_section(name: str, corpus_name: str, downsample: float, max_epochs: int, threads: int, cache: Path,
                overrides: dict[str, Any]) -> dict[str, Any]:
    from kftune.nlp.config import Hyperparameters, TrainerConfig
    from kftune.nlp.data import read_corpus_info, read_split, task_from_corpus_info
    from kftune.nlp.model_io import load_model
    from kftune.nlp.predict import predict
    from kftune.steps.train import TrainConfig, run

    corpus = prepare_corpus(corpus_name, downsample, cache)
    info = read_corpus_info(corpus)
    task = task_from_corpus_info(info)
    hp = Hyperparameters.from_mapping(overrides, task.type)
    with tempfile.TemporaryDirectory(prefix=f"kftune-acc-{name}-") as out:
        started = time.perf_counter()
        result = run(TrainConfig(corpus=str(corpus), out=out, hyperparameters=hp, show_progress=False,
                                 trainer=TrainerConfig(max_epochs=max_epochs, num_threads=threads, device="cpu")))
        train_seconds = time.perf_counter() - started
        model = load_model(Path(out) / "model.pt")
        test = read_split(corpus / "test.jsonl", task.type)
        t0 = time.perf_counter()
        preds = predict(model, [list(e.tokens) for e in test], batch_size=64)
        predict_seconds = time.perf_counter() - t0
        rows = (Path(out) / "loss.tsv").read_text().splitlines()
    if task.is_classification:
        gold, predicted = [e.label for e in test], [p.label for p in preds]
    else:
        gold, predicted = [list(e.tags or ()) for e in test], [list(p.tags or ()) for p in preds]
    scores = score(task, gold, predicted)
    return {
        "corpus": corpus_name, "task": task.type, "label_type": task.label_type, "tag_scheme": task.tag_scheme,
        "train_downsample": downsample, "splits": {s: (info.get("splits", {}).get(s) or {}).get("examples")
                                                   for s in ("train", "dev", "test")},
        "hyperparameters": {k: v for k, v in hp.to_dict().items() if v is not None}, "overrides": overrides,
        "max_epochs": max_epochs, "epochs": result.epochs, "best_epoch": result.best_epoch, "status": result.status,
        "dev_score": result.dev_score, "test": scores, "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 2), "threads": threads, "loss_tsv": rows,
        "target": TARGETS.get(name),
    }


def render(report: dict[str, Any]) -> str:
    lines = ["# Accuracy from scratch on the CPU (task defaults)", "",
             f"{report.get('platform', '')}, {report.get('cpus', '?')} CPUs, torch {report.get('torch', '?')}; "
             "each section: `kftune corpus` -> `kftune.steps.train.run` -> `predict` on the test split.", "",
             "| section | corpus | train used | model | epochs (best) | train time | dev score | test score | target |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for name, s in report["sections"].items():
        hp = s["hyperparameters"]
        task = s.get("task") or ("sequence_labeling" if "use_crf" in hp and s["label_type"] in ("upos", "ner")
                                 else "text_classification")  # results written before "task" was recorded
        if task == "text_classification":
            model = f"{hp['document_encoder'].upper()} classifier"
            if hp["document_encoder"] == "cnn":
                model += " (kernels " + ",".join(map(str, hp["cnn_kernel_sizes"])) + ")"
        else:
            model = ("BiLSTM" if hp["use_rnn"] else "linear") + ("-CRF" if hp["use_crf"] else "") + \
                (f" + char {'BiLSTM' if hp['char_embeddings'] == 'lstm' else 'CNN'}" if hp["char_embeddings"] != "none" else "")
        metric = s["test"].get("main_score_name", "score")
        target = s.get("target")
        verdict = "" if target is None else (f">= {target}: " + ("met" if s["test"]["main_score"] >= target else "MISSED"))
        train_n = s["splits"]["train"]
        lines.append(f"| {name} | {s['corpus']} | {train_n} sentences ({s['train_downsample']:.0%} of train) | {model} | "
                     f"{s['epochs']} ({s['best_epoch']}) | {s['train_seconds'] / 60:.1f} min | {s['dev_score']:.4f} | "
                     f"{metric} {s['test']['main_score']:.4f} | {verdict} |")
    lines.append("")
    for name, s in report["sections"].items():
        lines += [f"## {name}", "", f"- status: {s['status']} after {s['epochs']} of at most {s['max_epochs']} epochs; "
                  f"best dev epoch {s['best_epoch']}; {s['threads']} CPU thread(s)",
                  f"- hyperparameters changed from the defaults: {s['overrides'] or 'none'}",
                  "- test: " + ", ".join(f"{k} {v:.4f}" for k, v in s["test"].items() if isinstance(v, float)),
                  "", "```", *s["loss_tsv"], "```", ""]
    lines.append("Regenerate: `python benchmarks/accuracy.py` (sections with `--only`).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="trec6,ud,wnut")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=20, help="TREC_6")
    parser.add_argument("--ud-downsample", type=float, default=0.5)
    parser.add_argument("--ud-max-epochs", type=int, default=10)
    parser.add_argument("--wnut-max-epochs", type=int, default=10)
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / ".work"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "components"))
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("KFTUNE_PROGRESS", "log")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "accuracy.json"
    report = json.loads(path.read_text()) if path.exists() else {"sections": {}}
    report.update(platform=platform.platform(), cpus=os.cpu_count(), torch=torch.__version__,
                  python=platform.python_version())
    plan = {
        "trec6": ("TREC_6", 1.0, args.max_epochs, {}),
        "ud": ("UD_ENGLISH", args.ud_downsample, args.ud_max_epochs, {}),
        "wnut": ("WNUT_17", 1.0, args.wnut_max_epochs, {}),
    }
    for name in [n for n in args.only.split(",") if n]:
        corpus, downsample, epochs, overrides = plan[name]
        section = run_section(name, corpus, downsample, epochs, args.threads, cache, overrides)
        report["sections"][name] = section
        path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (RESULTS / "accuracy.md").write_text(render(report), encoding="utf-8")
        print(f"{name}: test {section['test']['main_score']:.4f} after {section['epochs']} epochs, "
              f"{section['train_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
