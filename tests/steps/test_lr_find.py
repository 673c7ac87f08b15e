"""``kftune lr-find`` end to end on TREC_6 from the mirror (prepared by the corpus step, downsampled)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest

from kftune import cli
from kftune.core.errors import ConfigError
from kftune.core.lr_range import DEFAULT_METHOD, RangeTestResult
from kftune.steps.lr_find import OUTPUT_FILES, LrFindConfig, main, run

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUICK = ["--set", "mini_batch_size=8", "--set", "cnn_filters=32", "--device", "cpu", "--threads", "1"]


class RecordingSink:
    """A MetricsSink that keeps what it was given."""

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def log(self, values, *, step=None):
        self.logged.append(dict(values))

    def increment(self, name, amount=1.0, *, labels=None):
        pass

    def flush(self):
        pass

    def close(self):
        pass


@pytest.fixture(autouse=True)
def _drop_cli_log_handler():
    """main() installs a stderr handler on the root logger; remove it so later tests never log into a
    stream capsys has closed."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_kftune", False)]:
        root.removeHandler(handler)


@pytest.fixture(scope="module")
def trec6(shared_corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TREC_6 at downsample 0.1 (491 train, 55 dev questions), through the real corpus step and the mirror."""
    from kftune.steps.corpus import CorpusConfig
    from kftune.steps.corpus import run as prepare

    tmp = tmp_path_factory.mktemp("trec6")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KFTUNE_CORPUS_MIRROR", str(shared_corpora))
        mp.setenv("KFTUNE_CACHE_DIR", str(tmp / "cache"))
        prepare(CorpusConfig(out=str(tmp / "corpus"), name="TREC_6", downsample=0.1, seed=1))
    return tmp / "corpus"


def test_cli_on_trec6_writes_the_tsv_the_plot_and_the_suggestion(trec6: Path, tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("KFTUNE_KATIB_STDOUT", "1")
    out = tmp_path / "lr"
    code = cli.main(["lr-find", "--corpus", str(trec6), "--out", str(out), "--start-lr", "1e-5", "--end-lr", "1",
                     "--iterations", "50", *QUICK])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    record = json.loads((out / "result.json").read_text(encoding="utf-8"))
    result = RangeTestResult.from_dict(record)
    batches = len(result.losses)
    assert record["iterations_run"] == batches and record["iterations_planned"] == 50
    assert 20 <= batches <= 50 and record["extra"]["steps_per_epoch"] == 62  # 491 questions / 8
    # the loss of an untrained 6-class (+ <unk>) model falls on real questions: a suggestion and a range
    assert result.losses[0] == pytest.approx(math.log(7), abs=0.4)
    assert result.lr is not None and result.range is not None
    assert record["suggested_lr"] == result.lr and record["range"] == [result.range.base_lr, result.range.max_lr]
    valley = result.suggestions["valley"].lr
    assert valley is not None and result.range.base_lr <= valley <= result.range.max_lr  # by construction
    assert 1e-5 <= result.lr <= 1
    assert record["method"] == DEFAULT_METHOD and record["corpus_name"] == "TREC_6"
    assert record["hyperparameters"]["mini_batch_size"] == 8 and record["seed"] == 1

    tsv = (out / "learning_rate.tsv").read_text(encoding="utf-8").splitlines()
    assert tsv[0].split("\t")[:3] == ["ITERATION", "LEARNING_RATE", "TRAIN_LOSS"] and len(tsv) == 1 + batches
    assert float(tsv[1].split("\t")[1]) == 1e-5 and float(tsv[-1].split("\t")[2]) == result.losses[-1]
    assert (out / "lr_curve.png").read_bytes().startswith(PNG_SIGNATURE)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "**Suggested learning rate:" in summary and "## Provenance" in summary and "TREC_6" in summary
    page = (out / "summary.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "Provenance" in page

    printed = capsys.readouterr().out
    assert f"suggested_lr={result.lr:.3g}" in printed and f"-> {out}" in printed
    assert f"batches={batches}/50" in printed
    katib = dict(word.split("=", 1) for line in printed.splitlines() if not line.startswith("suggested_lr=")
                 for word in line.split() if "=" in word)
    assert float(katib["suggested_learning_rate"]) == pytest.approx(result.lr, rel=1e-5)
    assert float(katib["lr_range_low"]) == pytest.approx(result.range.base_lr, rel=1e-5)
    assert float(katib["iterations"]) == batches


def test_spec_settings_the_one_epoch_cap_and_the_search_handoff(trec6: Path, tmp_path: Path) -> None:
    sink = RecordingSink()
    # examples/trec6.yaml: 100 iterations from 1e-6 to 1; with batches of 16 one epoch is 31 batches
    result = run(LrFindConfig(corpus=str(trec6), out=str(tmp_path / "o"), spec=str(REPO / "examples" / "trec6.yaml"),
                              overrides={"mini_batch_size": "16", "cnn_filters": "32"}, device="cpu",
                              num_threads=1), sinks=sink)
    record = result.record
    assert result.iterations_planned == 31 and record["extra"]["capped"] is True
    assert record["extra"]["iterations_requested"] == 100 and "one epoch is 31" in record["extra"]["cap_reason"]
    assert record["config"]["startLR"] == 1e-6 and record["config"]["endLR"] == 1.0
    assert record["lrs"][0] == 1e-6
    assert record["hyperparameters"]["max_length"] == 64  # the spec's model block
    assert "capped at one epoch" in (tmp_path / "o" / "summary.md").read_text(encoding="utf-8")
    # the search hand-off as the search will apply it, recorded for the reader
    handoff = record["search_handoff"]
    assert handoff == result.handoff and handoff["parameter"] == "learning_rate"
    assert handoff["old_feasible_space"] == {"min": "1e-4", "max": "1e-2", "distribution": "logUniform"}
    if result.lr_range is not None:
        assert handoff["applied"] and float(handoff["new_feasible_space"]["min"]) <= result.lr_range[0]
    else:
        assert not handoff["applied"] and "no range" in handoff["reason"]
    logged = sink.logged[-1]
    assert logged["iterations"] == result.iterations and logged["diverged"] in (0.0, 1.0)
    assert ("suggested_learning_rate" in logged) == (result.suggested_lr is not None)


def test_exit_codes(trec6: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o")
    base = ["--corpus", str(trec6), "--out", out]
    assert main([*base, "--set", "learning_rat=0.1"]) == 2  # unknown hyperparameter, nothing trained
    assert "learning_rat" in capsys.readouterr().err
    assert main([*base, "--set", "mini_batch_size"]) == 2  # not name=value
    assert main([*base, "--mode", "cosine"]) == 2
    assert main([*base, "--start-lr", "1", "--end-lr", "0.1"]) == 2
    assert "endLR" in capsys.readouterr().err
    assert main(["--corpus", str(tmp_path / "nowhere"), "--out", out]) == 2
    assert main([*base, "--spec", str(REPO / "examples" / "wnut17.yaml")]) == 2  # a tagging spec
    assert "does not fit the corpus" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    broken = tmp_path / "broken"
    shutil.copytree(trec6, broken)
    (broken / "train.jsonl").write_text('{"label": "NUM", "tokens": "not a list"}\n', encoding="utf-8")
    assert main(["--corpus", str(broken), "--out", out]) == 1  # unreadable data: a runtime failure
    with pytest.raises(ConfigError) as err:
        LrFindConfig(corpus="", out="", dev_metric_every=0, method="best").validate()
    assert {p.path for p in err.value.problems} == {"lr_find.corpus", "lr_find.out", "lr_find.dev_metric_every",
                                                    "lr_find.method"}


@pytest.mark.integration
def test_corpus_and_outputs_in_s3(trec6: Path, s3_env: str) -> None:
    from kftune.io.store import get_json, open_store

    root = open_store(s3_env)
    for path in trec6.iterdir():
        root.put_file(f"corpus/{path.name}", path)
    result = run(LrFindConfig(corpus=f"{s3_env}/corpus", out=f"{s3_env}/lr", iterations=20, start_lr=1e-4,
                              overrides={"mini_batch_size": "8", "cnn_filters": "16"}, device="cpu",
                              num_threads=1, dev_metric_every=5, dev_subset=32), sinks=RecordingSink())
    assert root.list("lr") == sorted(f"lr/{name}" for name in OUTPUT_FILES)
    saved = get_json(root, "lr/result.json")
    assert saved["iterations_run"] == result.iterations and result.artifacts["result.json"].startswith("s3://")
    assert saved["extra"]["dev_subset"] == 32 and saved["metric"][4] is not None
