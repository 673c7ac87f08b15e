"""Tiny synthetic corpora in the corpus step's output format, for fast training tests.

Classification: the label is given by one keyword in the sentence (apple -> A, banana -> B,
cherry -> C) among filler words, so a working model reaches a dev accuracy near 1 in a few epochs.
Tagging: each word has a fixed BIO tag (Paul -> B-PER, Walker -> I-PER, Berlin -> B-LOC, ...).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

CLASS_KEYWORDS = {"A": "apple", "B": "banana", "C": "cherry"}
FILLER = ["the", "a", "of", "is", "x", "y", "z", "and", "to"]
TAG_OF = {"Paul": "B-PER", "Anna": "B-PER", "Walker": "I-PER", "Berlin": "B-LOC", "Rome": "B-LOC",
          "runs": "O", "to": "O", "the": "O", "and": "O"}


def classification_example(rng: random.Random) -> dict[str, Any]:
    label = rng.choice(sorted(CLASS_KEYWORDS))
    tokens = [rng.choice(FILLER) for _ in range(rng.randint(1, 9))]
    tokens.insert(rng.randrange(len(tokens) + 1), CLASS_KEYWORDS[label])
    return {"label": label, "text": " ".join(tokens), "tokens": tokens}


def tagging_example(rng: random.Random) -> dict[str, Any]:
    tokens = [rng.choice(sorted(TAG_OF)) for _ in range(rng.randint(1, 12))]
    return {"tags": [TAG_OF[t] for t in tokens], "tokens": tokens}


def write_corpus(directory: Path, task: str, sizes: Sequence[int] = (240, 60, 60), seed: int = 0,
                 extra: dict[str, list[dict[str, Any]]] | None = None, tag_scheme: str | None = "BIO") -> Path:
    """Write train/dev/test JSONL + corpus.json under ``directory``. ``extra[split]`` rows are appended."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    labels: set[str] = set()
    make = classification_example if task == "text_classification" else tagging_example
    for split, n in zip(("train", "dev", "test"), sizes):
        rows = [make(rng) for _ in range(n)] + list((extra or {}).get(split, []))
        with (directory / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for row in rows:
                labels.update([row["label"]] if "label" in row else row["tags"])
                handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    info = {"name": "SYNTHETIC", "task": task, "label_type": "class" if task == "text_classification" else "ner",
            "labels": sorted(labels), "tag_scheme": None if task == "text_classification" else tag_scheme,
            "splits": {s: {"examples": n} for s, n in zip(("train", "dev", "test"), sizes)}, "seed": seed}
    (directory / "corpus.json").write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
    return directory


@pytest.fixture(autouse=False)
def one_torch_thread() -> Iterator[None]:
    """Run torch on one CPU thread (tiny models on a shared 2-core machine are much faster so),
    restoring the previous setting afterwards. Import it into a test module with autouse wrappers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
