"""A trial's training does not depend on the metrics edge: a Pushgateway that refuses connections, or one
that accepts them and never answers (tests/fixtures/faulty_proxy.py), leaves the trial's record as it is
without a Pushgateway. (The sink's own contract, one warning and no exception, is in tests/io/test_metrics.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kftune.steps import trial
from tests.fixtures.faulty_proxy import FaultyProxy
from tests.steps.test_trial import write_corpus, write_spec


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _essence(record: dict[str, Any]) -> tuple:
    return (record["state"], record["objective"], record["budget"], record["intermediate"],
            [{k: v for k, v in row.items() if k != "seconds"} for run in record["runs"] for row in run["history"]])


@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_a_pushgateway_that_refuses_or_hangs_leaves_training_unaffected(outage: str, corpus: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path / "spec.yaml", max_epochs=2)

    def train(store: str) -> dict[str, Any]:
        config = trial.TrialConfig(spec=str(spec), corpus=str(corpus), store=store, run_id="r1", trial_id="t1",
                                   assignment={"learning_rate": 0.05, "dropout": 0.1}, show_progress=False)
        return trial.run(config).record

    monkeypatch.delenv("KFTUNE_PUSHGATEWAY_URL", raising=False)
    alone = train(str(tmp_path / "alone"))
    gateway = FaultyProxy("http://127.0.0.1:9").start()  # a Pushgateway address that ...
    if outage == "refused":
        gateway.refuse()  # ... nobody listens on
    else:
        gateway.hang(None)  # ... accepts every push and never answers
    monkeypatch.setenv("KFTUNE_PUSHGATEWAY_URL", gateway.url)
    try:
        with_outage = train(str(tmp_path / "outage"))
    finally:
        gateway.close()
    assert with_outage["state"] == "completed"
    assert _essence(with_outage) == _essence(alone)
    if outage == "hung":
        assert gateway.requests >= 1  # the pushes really went to the hanging gateway
