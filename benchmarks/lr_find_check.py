"""Does the LR range test's suggestion train as well as the best of a 9-point learning-rate grid? (issue 4)

On TREC_6 (full train; dev = 10 % carved from train by the corpus step, seed 1) with the default text
classifier (:func:`kftune.nlp.config.defaults_for` ``("text_classification")``: a Kim-style CNN, AdamW,
plateau annealing), every training run gets the same short fixed budget: ``--epochs`` epochs (default 3),
no early stopping, the best dev accuracy over those epochs counted (what a search trial reports).

1. Grid: 9 learning rates log-spaced over the range test's span (``--start-lr`` .. ``--end-lr``), each
   trained with every seed of ``--train-seeds``; a grid point's score is the mean over the seeds. The best
   grid point is the reference.
2. Range test: ``kftune.nlp.lr_find.run_range_test`` with that span and ``--iterations`` batches, once per
   seed of ``--range-seeds`` (a fresh model each time).
3. For each heuristic (valley, steepest, minimum) and each range-test seed: train at the suggested lr with
   the same budget and seeds; is the mean dev accuracy within 1 point (0.01) of the best grid point's? Does
   the suggested range ``[base_lr, max_lr]`` (the same for every heuristic) contain the best grid lr?

The winner is the heuristic that is within 1 point for the most range-test seeds (ties: the smaller mean
gap to the best). Runs on the CPU (``--threads`` torch threads). Usage::

    python benchmarks/lr_find_check.py [--corpus DIR] [--epochs 3] [--train-seeds 1,2,3] [--range-seeds 1,2,3]

Without ``--corpus`` the corpus step prepares TREC_6 through ``KFTUNE_CORPUS_MIRROR`` (default
``../shared/corpora``). Writes ``benchmarks/results/lr_find_check.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WITHIN = 0.01  # one point of dev accuracy

log = logging.getLogger("lr_find_check")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def prepare_corpus(work: Path) -> Path:
    """TREC_6 through the corpus step (full train, dev 0.1 carved from train, seed 1)."""
    from kftune.steps.corpus import CorpusConfig, run

    os.environ.setdefault("KFTUNE_CORPUS_MIRROR", str(REPO.parent / "shared" / "corpora"))
    os.environ.setdefault("KFTUNE_CACHE_DIR", str(work / "cache"))
    out = work / "trec6"
    run(CorpusConfig(out=str(out), name="TREC_6", seed=1, dev_fraction=0.1, downsample=1.0))
    return out


class Runner:
    """Trains the default classifier at a learning rate with the fixed budget; caches (lr, seed) results."""

    def __init__(self, data: Any, hp: Any, epochs: int):
        self.data, self.hp, self.epochs = data, hp, epochs
        self.cache: dict[tuple[float, int], dict[str, Any]] = {}
        self.trainings = 0
        self.seconds = 0.0

    def train(self, lr: float, seed: int) -> dict[str, Any]:
        key = (float(lr), seed)
        if key in self.cache:
            return self.cache[key]
        from kftune.core.errors import TrialFailedError
        from kftune.nlp.config import TrainerConfig
        from kftune.nlp.lr_find import fresh_model
        from kftune.nlp.trainer import Trainer

        hp = dataclasses.replace(self.hp, learning_rate=float(lr))
        started = time.perf_counter()
        model = fresh_model(self.data, hp, seed)
        config = TrainerConfig(max_epochs=self.epochs, patience=self.epochs, device="cpu", seed=seed)
        trainer = Trainer(model, self.data.encoder, self.data.train, self.data.dev, hp, config, seed=seed,
                          show_progress=False)
        try:
            fit = trainer.fit()
            out = {"lr": lr, "seed": seed, "best_dev": fit.best_score,
                   "per_epoch": [round(h.dev_score, 4) for h in fit.history], "failed": None}
        except TrialFailedError as exc:  # the loss became NaN: a score of chance level is not measured
            out = {"lr": lr, "seed": seed, "best_dev": 0.0, "per_epoch": [], "failed": str(exc)}
        out["seconds"] = round(time.perf_counter() - started, 2)
        self.trainings += 1
        self.seconds += out["seconds"]
        log.info("lr %.3g seed %d: best dev accuracy %.4f (%s) in %.1fs", lr, seed, out["best_dev"],
                 out["per_epoch"] or out["failed"], out["seconds"])
        self.cache[key] = out
        return out

    def score(self, lr: float, seeds: list[int]) -> dict[str, Any]:
        runs = [self.train(lr, s) for s in seeds]
        scores = [r["best_dev"] for r in runs]
        return {"lr": lr, "scores": [round(x, 4) for x in scores], "mean": statistics.fmean(scores),
                "std": statistics.pstdev(scores), "failed": sum(1 for r in runs if r["failed"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=None, help="a prepared TREC_6 corpus directory (default: prepare it)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-seeds", type=_ints, default=[1, 2, 3])
    p.add_argument("--range-seeds", type=_ints, default=[1, 2, 3])
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=1.0)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--grid-points", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("kftune").setLevel(logging.WARNING)

    import numpy as np
    import torch

    from kftune._version import __version__
    from kftune.core.lr_range import DEFAULT_METHOD, METHODS, RangeTestConfig
    from kftune.nlp.config import TrainerConfig, defaults_for
    from kftune.nlp.lr_find import prepare_data, run_range_test

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lr-find-check-") as tmp:
        corpus = Path(args.corpus) if args.corpus else prepare_corpus(Path(tmp))
        hp = defaults_for("text_classification")
        data = prepare_data(corpus, hp)
    log.info("TREC_6: %d train, %d dev sentences; %d batches of %d per epoch", data.train.num_usable,
             data.dev.num_usable, math.ceil(data.train.num_usable / hp.mini_batch_size), hp.mini_batch_size)
    runner = Runner(data, hp, args.epochs)
    seeds = args.train_seeds

    # 1. the grid
    grid_lrs = [float(x) for x in np.logspace(math.log10(args.start_lr), math.log10(args.end_lr), args.grid_points)]
    grid = [runner.score(lr, seeds) for lr in grid_lrs]
    best = max(grid, key=lambda g: g["mean"])
    log.info("grid best: lr %.3g, mean dev accuracy %.4f", best["lr"], best["mean"])

    # 2. range tests
    rt_config = RangeTestConfig(start_lr=args.start_lr, end_lr=args.end_lr, iterations=args.iterations)
    range_tests = []
    for s in args.range_seeds:
        r = run_range_test(data, hp, TrainerConfig(device="cpu"), rt_config, seed=s, show_progress=False)
        range_tests.append({
            "seed": s, "batches": len(r.losses), "diverged": r.diverged, "stop_reason": r.stop_reason,
            "seconds": r.extra["seconds"], "capped": r.extra["capped"],
            "suggestions": {m: r.suggestions[m].lr for m in METHODS},
            "reasons": {m: r.suggestions[m].reason for m in METHODS},
            "range": None if r.range is None else [r.range.base_lr, r.range.max_lr]})
        log.info("range test seed %d: %s, range %s", s, {m: r.suggestions[m].lr for m in METHODS},
                 range_tests[-1]["range"])

    # 3. each heuristic's suggestion, trained with the same budget
    heuristics: dict[str, Any] = {}
    for m in METHODS:
        rows = []
        for rt in range_tests:
            lr = rt["suggestions"][m]
            rng = rt["range"]
            contains = rng is not None and rng[0] <= best["lr"] <= rng[1]
            if lr is None:
                rows.append({"range_seed": rt["seed"], "lr": None, "mean": None, "scores": [], "gap": None,
                             "within_1pt": False, "range": rng, "range_contains_best": contains})
                continue
            sc = runner.score(lr, seeds)
            gap = best["mean"] - sc["mean"]
            rows.append({"range_seed": rt["seed"], "lr": lr, "mean": sc["mean"], "std": sc["std"],
                         "scores": sc["scores"], "gap": gap, "within_1pt": gap <= WITHIN, "range": rng,
                         "range_contains_best": contains})
        gaps = [r["gap"] for r in rows if r["gap"] is not None]
        heuristics[m] = {"rows": rows, "within_1pt": sum(r["within_1pt"] for r in rows), "runs": len(rows),
                         "mean_gap": statistics.fmean(gaps) if gaps else None,
                         "range_contains_best": sum(r["range_contains_best"] for r in rows)}
    order = sorted(METHODS, key=lambda m: (-heuristics[m]["within_1pt"],
                                           math.inf if heuristics[m]["mean_gap"] is None else heuristics[m]["mean_gap"]))
    winner = order[0]
    default_wins = (heuristics[DEFAULT_METHOD]["within_1pt"] == heuristics[winner]["within_1pt"]
                    and heuristics[DEFAULT_METHOD]["mean_gap"] == heuristics[winner]["mean_gap"])
    seconds = time.perf_counter() - started

    command = "python benchmarks/lr_find_check.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                      else sys.argv[1:]))
    record = {
        "command": command.strip(),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "kftune": __version__,
                        "machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": args.threads},
        "corpus": {"name": "TREC_6", "train": data.train.num_usable, "dev": data.dev.num_usable,
                   "dev_from": "10% of train, stratified, seed 1 (corpus step)"},
        "model": "defaults_for('text_classification')", "hyperparameters": hp.to_dict(),
        "budget": {"epochs": args.epochs, "train_seeds": seeds, "score": "best dev accuracy over the epochs, "
                                                                         "mean over the seeds"},
        "range_test": {"config": rt_config.to_dict(), "runs": range_tests},
        "grid": grid, "best_grid": {"lr": best["lr"], "mean": best["mean"]},
        "heuristics": heuristics, "ranking": order, "winner": winner, "default": DEFAULT_METHOD,
        "default_wins": default_wins, "trainings": runner.trainings, "training_seconds": round(runner.seconds, 1),
        "seconds": round(seconds, 1),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "lr_find_check.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (args.out_dir / "lr_find_check.md").write_text(render(record), encoding="utf-8")
    log.info("winner %s (default %s); %d trainings, %.0fs -> %s", winner, DEFAULT_METHOD, runner.trainings,
             seconds, args.out_dir)
    return 0


def _lr(x: float | None) -> str:
    return "none" if x is None else f"{x:.3g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def render(rec: dict[str, Any]) -> str:
    b, best = rec["budget"], rec["best_grid"]
    c = rec["range_test"]["config"]
    lines = [
        "# LR range test against a 9-point learning-rate grid (TREC_6)", "",
        f"Command: `{rec['command']}`", "",
        f"Environment: Python {rec['environment']['python']}, torch {rec['environment']['torch']}, kftune "
        f"{rec['environment']['kftune']}, {rec['environment']['cpus']} CPUs ({rec['environment']['torch_threads']} "
        f"torch thread(s)); {rec['trainings']} training runs, {rec['seconds']:.0f} s in all.", "",
        f"Corpus: TREC_6, {rec['corpus']['train']} training and {rec['corpus']['dev']} dev questions (dev = "
        f"{rec['corpus']['dev_from']}). Model: the default text classifier ({rec['model']}: CNN over trainable "
        f"embeddings, AdamW, plateau annealing, batch {rec['hyperparameters']['mini_batch_size']}). Budget per "
        f"training run: {b['epochs']} epochs, no early stopping; score = {b['score']} {b['train_seeds']}. "
        "Scores are dev accuracy in points.", "",
        f"Range test: startLR {c['startLR']:g}, endLR {c['endLR']:g}, {c['iterations']} batches, {c['mode']}, "
        f"one run per seed {[r['seed'] for r in rec['range_test']['runs']]}.", "",
        "## The grid", "", "| lr | dev accuracy (mean) | std | per seed |", "| ---: | ---: | ---: | --- |"]
    for g in rec["grid"]:
        mark = " **(best)**" if g["lr"] == best["lr"] else ""
        lines.append(f"| {_lr(g['lr'])}{mark} | {_pct(g['mean'])} | {_pct(g['std'])} | "
                     f"{', '.join(_pct(s) for s in g['scores'])} |")
    lines += ["", "## Range tests", "", "| seed | batches | diverged | valley | steepest | minimum | range |",
              "| ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in rec["range_test"]["runs"]:
        s = r["suggestions"]
        rng = "none" if r["range"] is None else f"[{_lr(r['range'][0])}, {_lr(r['range'][1])}]"
        lines.append(f"| {r['seed']} | {r['batches']} | {'yes' if r['diverged'] else 'no'} | {_lr(s['valley'])} | "
                     f"{_lr(s['steepest'])} | {_lr(s['minimum'])} | {rng} |")
    lines += ["", "## Each heuristic's suggestion, trained with the same budget", "",
              f"Best grid point: lr {_lr(best['lr'])}, {_pct(best['mean'])}. Within 1 point: mean dev accuracy >= "
              f"{_pct(best['mean'] - WITHIN)}.", "",
              "| heuristic | range-test seed | suggested lr | dev accuracy (mean) | vs best (points) | within 1 point | "
              "range contains best grid lr |", "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for m, h in rec["heuristics"].items():
        for r in h["rows"]:
            gap = "-" if r["gap"] is None else f"{-100 * r['gap']:+.2f}"
            lines.append(f"| {m} | {r['range_seed']} | {_lr(r['lr'])} | {_pct(r['mean'])} | {gap} | "
                         f"{'yes' if r['within_1pt'] else 'no'} | {'yes' if r['range_contains_best'] else 'no'} |")
    lines += ["", "## Summary", "", "| heuristic | within 1 point | mean vs best (points) | range contains best |",
              "| --- | ---: | ---: | ---: |"]
    for m in rec["ranking"]:
        h = rec["heuristics"][m]
        gap = "-" if h["mean_gap"] is None else f"{-100 * h['mean_gap']:+.2f}"
        lines.append(f"| {m}{' (default)' if m == rec['default'] else ''} | {h['within_1pt']}/{h['runs']} | {gap} | "
                     f"{h['range_contains_best']}/{h['runs']} |")
    verdict = (f"The default heuristic ({rec['default']}) wins." if rec["default_wins"] else
               f"The default heuristic ({rec['default']}) does not win: {rec['winner']} does.")
    lines += ["", f"Winner (most range-test seeds within 1 point, then the smallest mean gap): **{rec['winner']}**. "
                  f"{verdict}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
