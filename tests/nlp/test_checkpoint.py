"""kftune.nlp.checkpoint and resume: RNG round trips, atomic writes, and real `kftune train` processes
killed (SIGKILL) or evicted (SIGTERM) mid-training, resumed, and compared with an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kftune.core.errors import DataError
from kftune.io.store import open_store
from kftune.nlp.checkpoint import CheckpointStore, capture_rng_state, restore_rng_state
from tests.nlp.synthetic import one_torch_thread, write_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_ = one_torch_thread

EPOCHS = 4


def test_rng_state_round_trip() -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_checkpoint_store_round_trip_and_bad_files(tmp_path: Path) -> None:
    ckpt = CheckpointStore(open_store(tmp_path), "run-1.pt")
    assert ckpt.load() is None and not ckpt.exists()
    ckpt.save({"epoch": 2, "rng": capture_rng_state(), "weights": {"w": torch.ones(2)}})
    loaded = ckpt.load()
    assert loaded is not None and loaded["epoch"] == 2 and torch.equal(loaded["weights"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-1.pt"]  # no temp file left behind
    (tmp_path / "run-1.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable checkpoint"):
        ckpt.load()
    torch.save({"something": "else"}, tmp_path / "run-1.pt")
    with pytest.raises(DataError, match="not a kftune checkpoint"):
        ckpt.load()


def _train_cmd(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kftune.cli", "train", "--corpus", str(corpus), "--out", str(out),
            "--max-epochs", str(EPOCHS), "--patience", "10", "--threads", "1", "--device", "cpu",
            "--set", "hidden_size=16", "--set", "embedding_dim=16", "--set", "mini_batch_size=4",
            "--set", "char_hidden_size=8", *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["KFTUNE_PROGRESS"] = "log"
    env.pop("KFTUNE_PUSHGATEWAY_URL", None)
    return env


def _loss_rows(out: Path) -> list[list[str]]:
    rows = [line.split("\t") for line in (out / "loss.tsv").read_text().splitlines()[1:]]
    return [[r[0], r[3], r[4], r[5]] for r in rows]  # epoch, train loss, dev loss, dev score


def _interrupt_after_first_checkpoint(cmd: list[str], out: Path, sig: int) -> int:
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not (out / "checkpoints" / "run-1.pt").exists():
            if proc.poll() is not None:
                raise AssertionError(f"training ended before its first checkpoint: {proc.communicate()}")
            time.sleep(0.02)
        proc.send_signal(sig)
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("resume")
    corpus = write_corpus(base / "corpus", "sequence_labeling", sizes=(240, 40, 10))
    out = base / "full"
    subprocess.run(_train_cmd(corpus, out), env=_env(), check=True, capture_output=True)
    return corpus, out


def _assert_same_as(uninterrupted_out: Path, resumed_out: Path) -> None:
    import json

    full = json.loads((uninterrupted_out / "result.json").read_text())
    resumed = json.loads((resumed_out / "result.json").read_text())
    assert resumed["epochs"] == full["epochs"] == EPOCHS
    assert abs(resumed["dev_score"] - full["dev_score"]) <= 1e-6
    assert _loss_rows(resumed_out) == _loss_rows(uninterrupted_out)
    a = torch.load(uninterrupted_out / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed_out / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_sigkill_equals_uninterrupted_run(uninterrupted: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, full_out = uninterrupted
    out = tmp_path / "killed"
    code = _interrupt_after_first_checkpoint(_train_cmd(corpus, out), out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (out / "result.json").exists()  # it really died mid-training
    done = subprocess.run(_train_cmd(corpus, out, "--resume"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr
    _assert_same_as(full_out, out)


def test_sigterm_writes_a_checkpoint_and_resume_equals_uninterrupted_run(uninterrupted: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    corpus, full_out = uninterrupted
    out = tmp_path / "evicted"
    code = _interrupt_after_first_checkpoint(_train_cmd(corpus, out), out, signal.SIGTERM)
    assert code == 143
    state = torch.load(out / "checkpoints" / "run-1.pt", weights_only=True)
    assert state["status"] == "running" and state["epoch"] < EPOCHS
    done = subprocess.run(_train_cmd(corpus, out, "--resume"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_as(full_out, out)


# ------------------------------------------------------------------ a fine-tuned transformer (the tiny BERT)
def _transformer_cmd(corpus: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    # --set transformer=... fine-tunes it with the fine-tune preset (AdamW, linear warm-up, dropout in BERT)
    return [sys.executable, "-m", "kftune.cli", "train", "--corpus", str(corpus), "--out", str(out),
            "--max-epochs", str(EPOCHS), "--patience", "10", "--threads", "1", "--device", "cpu",
            "--set", f"transformer={weights}", "--set", "learning_rate=1e-3", "--set", "mini_batch_size=8", *extra]


@pytest.fixture(scope="module")
def transformer_uninterrupted(tiny_transformer: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("resume-transformer")
    corpus = write_corpus(base / "corpus", "text_classification", sizes=(240, 40, 10))
    out = base / "full"
    subprocess.run(_transformer_cmd(corpus, out, tiny_transformer), env=_env(), check=True, capture_output=True)
    return corpus, out


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143)],
                         ids=["sigkill", "sigterm"])
def test_a_fine_tuned_transformer_resumes_exactly(transformer_uninterrupted: tuple[Path, Path], tiny_transformer: Path,
                                                  tmp_path: Path, sig: int, code: int) -> None:
    corpus, full_out = transformer_uninterrupted
    out = tmp_path / "stopped"
    assert _interrupt_after_first_checkpoint(_transformer_cmd(corpus, out, tiny_transformer), out, sig) == code
    done = subprocess.run(_transformer_cmd(corpus, out, tiny_transformer, "--resume"), env=_env(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr
    _assert_same_as(full_out, out)
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["hyperparameters"]["scheduler"] == "linear_warmup" and "config.json" in state["transformer"]
