"""The model file: one ``torch.save`` file with everything prediction needs.

Contents (a dict of plain types and tensors, so it loads with ``weights_only=True``):
``format`` ("kftune-model"), ``format_version`` (:data:`FORMAT_VERSION`), ``kftune_version``,
``task`` (type, label type, tag scheme), ``hyperparameters``, ``encoder`` (word/char/pretrained
vocabularies, label dictionary, max length, and the tokenizer as :meth:`kftune.nlp.tokenizers.Tokenizer.to_dict`
gives it: plain str/bool/int values, a SentencePiece model as base64 text; ``None`` in files from before
tokenizers were saved, read as whitespace split), ``state_dict`` and ``metadata`` (dev score, epochs, ...);
for a model with a Hugging Face transformer also ``transformer``: its config and tokenizer files as
``{name: base64 text}`` (the weights are in ``state_dict``), so the file loads where the weights it was
trained from are not.

:func:`load_model` refuses a file that is not a kftune model or has another format version, with a
message that says what the file is and what to do (:class:`IncompatibleModelError`).

A model file in an artifact store (``s3://bucket/key``) is read and written through the store opener the
caller hands in (``open_store``, :data:`kftune.nlp.storage.StoreOpener`; the steps, ``kftune predict`` and the
server pass :func:`kftune.io.store.open_store`): this module opens no store itself.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kftune._version import __version__
from kftune.core.errors import ArtifactNotFoundError, DataError
from kftune.nlp.config import Hyperparameters
from kftune.nlp.data import TaskInfo, TextEncoder
from kftune.nlp.models import Model, build_model, transformer_of
from kftune.nlp.storage import StoreOpener, is_store_uri, local_path, opener_for, split_uri

FORMAT = "kftune-model"
FORMAT_VERSION = 1


class IncompatibleModelError(DataError):
    """A file that is not a kftune model file, or one written in another format version."""


@dataclass
class LoadedModel:
    """A model ready for :func:`kftune.nlp.predict.predict`: the network (in eval mode, on
    ``device``), its encoder, hyperparameters, task and the metadata saved with it."""

    model: Model
    encoder: TextEncoder
    hyperparameters: Hyperparameters
    task: TaskInfo
    metadata: dict[str, Any] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    kftune_version: str = __version__

    @property
    def labels(self) -> list[str]:
        """The label (or tag) names the model can output, without ``<unk>``."""
        return self.encoder.labels.itos[1:]

    @property
    def raw_labels(self) -> dict[str, str]:
        """Each label the model predicts -> the label as the corpus files write it, for corpora whose spec
        maps raw labels to names (``corpus.labelMap``, e.g. NSMC's ``"0" -> "부정"``); empty otherwise."""
        label_map = self.metadata.get("label_map")
        if not isinstance(label_map, dict):
            return {}
        return {str(name): str(raw) for raw, name in label_map.items()}


def model_payload(model: Model, encoder: TextEncoder, hp: Hyperparameters,
                  metadata: dict[str, Any] | None = None, state_dict: dict[str, torch.Tensor] | None = None
                  ) -> dict[str, Any]:
    """The dict that :func:`save_model` writes (``state_dict`` defaults to the model's, on the CPU)."""
    state = state_dict if state_dict is not None else model.state_dict()
    transformer = transformer_of(model)
    extra = {"transformer": transformer.saved_files()} if transformer is not None else {}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kftune_version": __version__,
        "task": encoder.task.to_dict(),
        "hyperparameters": hp.to_dict(),
        "encoder": encoder.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "metadata": dict(metadata or {}),
        **extra,
    }


def save_model(model: Model, encoder: TextEncoder, hp: Hyperparameters, target: str | Path, *,
               metadata: dict[str, Any] | None = None, state_dict: dict[str, torch.Tensor] | None = None,
               open_store: StoreOpener | None = None) -> str:
    """Write the model file to ``target`` (a local path, or ``s3://bucket/key`` through ``open_store``),
    atomically. Returns the URI written."""
    payload = model_payload(model, encoder, hp, metadata, state_dict)
    text = str(target)
    if is_store_uri(text):
        opener = opener_for(text, open_store, "model")
        root, key = split_uri(text)
        with tempfile.TemporaryDirectory(prefix="kftune-model-") as tmp:
            local = Path(tmp) / "model.pt"
            torch.save(payload, local)
            opener(root).put_file(key, local)
        return text
    path = local_path(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".model-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp_name)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return str(path.resolve())


def _read_bytes(uri: str, open_store: StoreOpener | None) -> bytes:
    if is_store_uri(uri):
        root, key = split_uri(uri)
        return opener_for(uri, open_store, "model")(root).get_bytes(key)
    path = local_path(uri)
    if path.is_dir():  # a model directory (KServe's /mnt/models): the model.pt in it
        path = path / "model.pt"
    if not path.is_file():
        raise ArtifactNotFoundError(str(path))
    return path.read_bytes()


def read_payload(uri_or_path: str | Path, *, open_store: StoreOpener | None = None) -> dict[str, Any]:
    """The checked payload of a model file (see the module docstring); ``open_store`` reads a store URI."""
    uri = str(uri_or_path)
    data = _read_bytes(uri, open_store)
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is "not a kftune model"
        raise IncompatibleModelError(
            f"{uri}: not a kftune model file (torch.load could not read it safely: {type(exc).__name__}); "
            "pass the model.pt written by `kftune train`") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise IncompatibleModelError(
            f"{uri}: not a kftune model file (no '{FORMAT}' format marker); pass the model.pt written by "
            "`kftune train`")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        writer = payload.get("kftune_version", "unknown")
        raise IncompatibleModelError(
            f"{uri}: model file format version {version!r} (written by kftune {writer}); this kftune "
            f"{__version__} reads format version {FORMAT_VERSION}. Load it with kftune {writer}, or retrain "
            "the model with this version")
    return payload


def load_model(uri_or_path: str | Path, device: str | torch.device = "cpu", *,
               open_store: StoreOpener | None = None) -> LoadedModel:
    """Load a model file written by :func:`save_model` (``kftune train``'s ``model.pt``): a local path (a
    directory: its ``model.pt``), or a store URI read through ``open_store``.

    Raises :class:`IncompatibleModelError` for a non-kftune file or another format version,
    :class:`~kftune.core.errors.ArtifactNotFoundError` when the file does not exist, and
    :class:`~kftune.core.errors.ConfigError` for a store URI without ``open_store``.
    """
    payload = read_payload(uri_or_path, open_store=open_store)
    try:
        encoder = TextEncoder.from_dict(payload["encoder"])
        hp = Hyperparameters.from_dict(payload["hyperparameters"])
        task = TaskInfo.from_dict(payload["task"])
        state = payload["state_dict"]
        pretrained = None
        if hp.pretrained_embeddings is not None:
            weights = state["embeddings.embeddings.pretrained.embedding.weight"]
            pretrained = torch.zeros_like(weights)
        files = payload.get("transformer")
        if hp.transformer is not None and not isinstance(files, dict):
            raise KeyError("transformer (the transformer's config and tokenizer files)")
        model = build_model(task.type, hp, encoder, pretrained_weights=pretrained,
                            transformer_files=files if hp.transformer is not None else None)
        model.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError) as exc:
        raise IncompatibleModelError(f"{uri_or_path}: damaged kftune model file ({type(exc).__name__}: {exc})") from None
    dev = torch.device(device)
    model.to(dev)
    model.eval()
    return LoadedModel(model=model, encoder=encoder, hyperparameters=hp, task=task,
                       metadata=dict(payload.get("metadata") or {}), device=dev,
                       kftune_version=str(payload.get("kftune_version")))
