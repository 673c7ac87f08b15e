"""Peak memory of the corpus step on UD English EWT (17.8 MB of CoNLL-U), against baselines.

Each measurement runs in its own child process; its peak resident set size is read from the
``rusage`` that ``os.wait4`` returns for exactly that child (``ru_maxrss``, KiB on Linux).

Runs (each repeated ``--repeats`` times, after one unmeasured warm-up that fills the download cache):

- ``python (bare)``: an interpreter that imports nothing of ours - the floor.
- ``import step module``: ``import kftune.steps.corpus`` and nothing else - what the step costs before
  it reads a byte.
- ``naive loader``: reads the three CoNLL-U files whole (``readlines``) and keeps every sentence as a
  ``{"tokens", "tags"}`` dict in a list - what a non-streaming loader holds.
- ``corpus step (full)`` and ``corpus step (downsample 0.1)``: ``python -m kftune.steps.corpus --name
  UD_ENGLISH`` through ``KFTUNE_CORPUS_MIRROR``.

Usage: ``python benchmarks/corpus_memory.py [--mirror DIR] [--repeats 3]``; writes
``benchmarks/results/corpus_memory.json`` and ``.md``. The acceptance limit is 500 MB for the step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LIMIT_MB = 500.0
UD_FILES = ("en_ewt-ud-train.conllu", "en_ewt-ud-dev.conllu", "en_ewt-ud-test.conllu")

NAIVE_LOADER = r"""
import sys
from pathlib import Path
corpus = []
for name in sys.argv[1:]:
    lines = Path(name).read_text(encoding="utf-8").splitlines()
    sent = {"tokens": [], "tags": []}
    for line in lines:
        if not line:
            if sent["tokens"]:
                corpus.append(sent)
                sent = {"tokens": [], "tags": []}
        elif not line.startswith("#"):
            cols = line.split("\t")
            if "-" not in cols[0] and "." not in cols[0]:
                sent["tokens"].append(cols[1])
                sent["tags"].append(cols[3])
print(len(corpus), sum(len(s["tokens"]) for s in corpus))
"""


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``argv``; return (peak RSS in MB, wall seconds). Fails loudly if the child fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.stdout.close(), proc.stderr.close()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode}):\n{out.decode()}\n{err.decode()}")
    return usage.ru_maxrss / 1024.0, wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mirror", default=os.environ.get("KFTUNE_CORPUS_MIRROR", str(REPO.parent / "shared" / "corpora")))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    mirror = Path(args.mirror).resolve()
    ud = [str(mirror / "ud_english_ewt" / f) for f in UD_FILES]
    input_bytes = sum(Path(f).stat().st_size for f in ud)

    work = Path(tempfile.mkdtemp(prefix="kftune-corpus-memory-"))
    env = {**os.environ, "KFTUNE_CORPUS_MIRROR": str(mirror), "KFTUNE_CACHE_DIR": str(work / "cache"),
           "KFTUNE_PROGRESS": "log", "PYTHONPATH": str(REPO / "components")}
    py = sys.executable
    step = [py, "-m", "kftune.steps.corpus", "--name", "UD_ENGLISH", "--column", "upos"]
    runs = [
        ("python (bare)", [py, "-c", "pass"]),
        ("import step module", [py, "-c", "import kftune.steps.corpus"]),
        ("naive loader (whole corpus in a list)", [py, "-c", NAIVE_LOADER, *ud]),
        ("corpus step (full)", [*step, "--out", str(work / "full")]),
        ("corpus step (downsample 0.1)", [*step, "--downsample", "0.1", "--out", str(work / "ds")]),
    ]
    measure([*step, "--out", str(work / "warmup")], env)  # fills the download cache; not measured

    results = []
    for name, cmd in runs:
        samples = [measure(cmd, env) for _ in range(args.repeats)]
        rss = [s[0] for s in samples]
        wall = [s[1] for s in samples]
        results.append({"run": name, "peak_rss_mb_max": round(max(rss), 1), "peak_rss_mb_median": round(
            statistics.median(rss), 1), "wall_s_median": round(statistics.median(wall), 2)})
        print(f"{name:40s} peak RSS {max(rss):7.1f} MB   wall {statistics.median(wall):5.2f} s", flush=True)

    meta = json.loads((work / "full" / "corpus.json").read_text(encoding="utf-8"))
    step_peak = max(r["peak_rss_mb_max"] for r in results if r["run"].startswith("corpus step"))
    report = {
        "benchmark": "corpus step peak memory on UD_ENGLISH (UD English EWT v2.16, CoNLL-U, upos)",
        "input_bytes": input_bytes,
        "examples": {s: meta["splits"][s]["examples"] for s in ("train", "dev", "test")},
        "repeats": args.repeats,
        "limit_mb": LIMIT_MB,
        "step_peak_rss_mb": step_peak,
        "within_limit": step_peak < LIMIT_MB,
        "runs": results,
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "cpus": os.cpu_count(), "measured_with": "os.wait4 ru_maxrss of each child process"},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "corpus_memory.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Corpus step: peak memory on UD_ENGLISH",
        "",
        f"Input: UD English EWT v2.16, {input_bytes:,} bytes of CoNLL-U "
        f"({', '.join(f'{k} {v:,}' for k, v in report['examples'].items())} sentences). "
        f"Peak RSS of each child process (`os.wait4` `ru_maxrss`), {args.repeats} runs each after one warm-up "
        "run that fills the download cache (the measured step runs re-hash the cached copies instead of copying "
        "them from the mirror).",
        "",
        "| run | peak RSS max (MB) | peak RSS median (MB) | wall median (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['run']} | {r['peak_rss_mb_max']:.1f} | {r['peak_rss_mb_median']:.1f} | {r['wall_s_median']:.2f} |"
              for r in results]
    lines += ["", f"Limit: {LIMIT_MB:.0f} MB. The step's peak: {step_peak:.1f} MB "
                  f"({'within' if report['within_limit'] else 'OVER'} the limit).",
              "", f"Python {report['environment']['python']} on {report['environment']['platform']}, "
                  f"{report['environment']['cpus']} CPUs. Regenerate: `python benchmarks/corpus_memory.py`.", ""]
    (RESULTS / "corpus_memory.md").write_text("\n".join(lines), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if report["within_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
