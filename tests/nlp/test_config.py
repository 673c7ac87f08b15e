"""kftune.nlp.config: hyperparameter defaults, Katib-string coercion, errors with field paths."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kftune.core.errors import ConfigError
from kftune.nlp.config import (
    HYPERPARAMETER_NAMES,
    Hyperparameters,
    TrainerConfig,
    defaults_for,
    parse_assignments,
    validate_model_block,
)


def test_config_module_imports_no_torch() -> None:
    code = "import sys, kftune.nlp.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_task_defaults_are_valid_and_differ() -> None:
    cls, tag = defaults_for("text_classification"), defaults_for("sequence_labeling")
    assert cls.problems() == [] and tag.problems() == []
    assert cls.document_encoder == "cnn" and cls.char_embeddings == "none"
    assert tag.char_embeddings == "lstm" and tag.use_crf and tag.use_rnn
    assert Hyperparameters.from_mapping({}, "sequence_labeling") == tag


def test_katib_strings_are_coerced() -> None:
    hp = Hyperparameters.from_mapping(
        {"learning_rate": "0.01", "mini_batch_size": "16", "use_crf": "false", "bidirectional": "True",
         "cnn_kernel_sizes": "2,3, 4", "mini_batch_chunk_size": "null", "clip_grad_norm": "0",
         "optimizer": "SGD", "pretrained_embeddings": "s3://b/glove.txt", "hidden_size": "64.0"},
        "text_classification")
    assert hp.learning_rate == 0.01 and hp.mini_batch_size == 16 and hp.use_crf is False
    assert hp.bidirectional is True and hp.cnn_kernel_sizes == (2, 3, 4) and hp.mini_batch_chunk_size is None
    assert hp.clip_grad_norm is None and hp.optimizer == "sgd" and hp.hidden_size == 64
    assert hp.pretrained_embeddings == "s3://b/glove.txt"
    assert Hyperparameters.from_mapping({"cnn_kernel_sizes": [3, 5]}).cnn_kernel_sizes == (3, 5)


def test_every_problem_is_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        Hyperparameters.from_mapping({"learning_rate": "fast", "use_crf": "maybe", "hiden_size": 3,
                                      "scheduler": "cosine"}, "sequence_labeling", path="spec.model")
    paths = {p.path: p.message for p in info.value.problems}
    assert set(paths) == {"spec.model.learning_rate", "spec.model.use_crf", "spec.model.hiden_size",
                          "spec.model.scheduler"}
    assert "'fast' is not a number" in paths["spec.model.learning_rate"]
    assert "did you mean 'hidden_size'" in paths["spec.model.hiden_size"]
    assert "plateau" in paths["spec.model.scheduler"]


@pytest.mark.parametrize("mapping, path, fragment", [
    ({"learning_rate": 0}, "learning_rate", "must be > 0"),
    ({"dropout": 1.0}, "dropout", "must be < 1"),
    ({"mini_batch_size": 8, "mini_batch_chunk_size": 16}, "mini_batch_chunk_size", "larger than mini_batch_size"),
    ({"cyclic_base_lr": 0.1, "cyclic_max_lr": 0.01}, "cyclic_base_lr", "not below cyclic_max_lr"),
    ({"embedding_dim": 0}, "embedding_dim", "without any input representation"),
    ({"cnn_kernel_sizes": "0,3"}, "cnn_kernel_sizes", ">= 1"),
    ({"cnn_kernel_sizes": ""}, "cnn_kernel_sizes", "at least one"),
    ({"mini_batch_size": "2.5"}, "mini_batch_size", "not an integer"),
    ({"learning_rate": "nan"}, "learning_rate", "finite"),
])
def test_constraints(mapping: dict, path: str, fragment: str) -> None:
    problems = validate_model_block(mapping, "text_classification", "spec.model")
    assert any(p.path == f"spec.model.{path}" and fragment in p.message for p in problems), problems


def test_validate_model_block_shapes() -> None:
    assert validate_model_block(None, "text_classification") == []
    assert validate_model_block({"hidden_size": 32}, "sequence_labeling") == []
    assert validate_model_block(["x"], "text_classification")[0].path == "spec.model"
    assert {"learning_rate", "use_crf", "cnn_kernel_sizes", "mini_batch_chunk_size"} <= HYPERPARAMETER_NAMES


def test_round_trip_and_overrides() -> None:
    hp = Hyperparameters.from_mapping({"cnn_kernel_sizes": "3,4"}, "text_classification")
    assert Hyperparameters.from_dict(hp.to_dict()) == hp
    hp2 = hp.with_overrides({"learning_rate": "0.5"})
    assert hp2.learning_rate == 0.5 and hp2.cnn_kernel_sizes == (3, 4)
    assert parse_assignments(["a=1", " b = x "]) == {"a": "1", "b": "x"}
    with pytest.raises(ConfigError, match="not name=value"):
        parse_assignments(["learning_rate"])


def test_trainer_config() -> None:
    cfg = TrainerConfig.from_mapping({"maxEpochs": "5", "patience": 1, "device": "CPU", "seed": "7"})
    assert (cfg.max_epochs, cfg.patience, cfg.device, cfg.seed) == (5, 1, "cpu", 7)
    with pytest.raises(ConfigError) as info:
        TrainerConfig.from_mapping({"max_epochs": 0, "precision": "fp8", "epochs": 3})
    assert {p.path for p in info.value.problems} == {"spec.train.max_epochs", "spec.train.precision",
                                                     "spec.train.epochs"}


def test_settings_from_job_is_the_one_mapping_from_a_spec() -> None:
    """Defaults < spec.model < the assignment < overrides; spec.train becomes the TrainerConfig."""
    from types import SimpleNamespace

    from kftune.nlp.config import TrainerConfig, settings_from_job

    job = SimpleNamespace(spec=SimpleNamespace(model={"dropout": "0.3", "learning_rate": 0.01},
                                               train=TrainerConfig(max_epochs=4, patience=1)))
    hp, trainer = settings_from_job(job, "text_classification", assignment={"learning_rate": "0.002"},
                                    overrides={"dropout": 0.1})
    assert (hp.dropout, hp.learning_rate) == (0.1, 0.002)
    assert hp.embedding_dim == Hyperparameters.from_mapping({}, "text_classification").embedding_dim
    assert (trainer.max_epochs, trainer.patience) == (4, 1)
    hp, trainer = settings_from_job(None, "sequence_labeling")
    assert hp == Hyperparameters.from_mapping({}, "sequence_labeling") and trainer == TrainerConfig()
    with pytest.raises(ConfigError, match="trial.hyperparameters.dropout"):
        settings_from_job(job, "text_classification", assignment={"dropout": "lots"}, path="trial.hyperparameters")
