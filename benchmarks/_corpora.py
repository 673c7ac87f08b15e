"""Corpora for the benchmarks, prepared by the real corpus step (``kftune corpus``) and cached.

The downloader reads ``../shared/corpora`` as its mirror unless ``KFTUNE_CORPUS_MIRROR`` says otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prepare_corpus(name: str, downsample: float, cache: Path) -> Path:
    """``cache/<name>-<downsample>``: the corpus step's output, made once (a ``corpus.json`` marks it done)."""
    out = cache / f"{name}-{downsample}"
    if (out / "corpus.json").exists():
        return out
    env = dict(os.environ)
    env.setdefault("KFTUNE_CORPUS_MIRROR", str((REPO.parent / "shared" / "corpora").resolve()))
    env.setdefault("KFTUNE_CACHE_DIR", str(cache / "downloads"))
    subprocess.run([sys.executable, "-m", "kftune.cli", "corpus", "--name", name, "--downsample", str(downsample),
                    "--out", str(out)], env=env, check=True, capture_output=True)
    return out
