"""Token embeddings: trainable words, characters (BiLSTM or CNN per token), pretrained word vectors,
an optional Hugging Face transformer (word vectors from sub-tokens, or a document vector), and a stack
of several.

Every embedding maps a :class:`~kftune.nlp.data.Batch` to ``[batch, tokens, dim]``. The stack
concatenates them and, for frozen embeddings that are costly to compute (a frozen transformer),
caches their outputs per sentence like Flair's ``embeddings_storage_mode``: ``none`` recomputes
every time, ``cpu`` keeps them in host memory, ``gpu`` on the device.

Pretrained vectors and transformer weights may sit in an artifact store (``s3://...`` in the
hyperparameters): they are copied to local files through the store opener the caller hands in
(``open_store``, :data:`kftune.nlp.storage.StoreOpener`); this module opens no store itself.
"""

from __future__ import annotations

import atexit
import base64
import gzip
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

from kftune.core.errors import ConfigError, DataError, Problem
from kftune.nlp.data import (CASING_CLASSES, PAD, UNK, UNK_ID, Batch, EncodedDataset, Example, PretrainedVocabulary,
                             TaskInfo, TextEncoder, casing_class)
from kftune.nlp.ngrams import NgramSpec
from kftune.nlp.storage import StoreOpener, is_store_uri, local_path, opener_for, split_uri

if TYPE_CHECKING:
    from kftune.nlp.config import Hyperparameters

log = logging.getLogger(__name__)


class TokenEmbedding(nn.Module):
    """Base class: ``forward(batch) -> [B, T, embedding_length]``."""

    embedding_length: int
    #: True when outputs never change during training and are costly: the stack may cache them.
    cacheable: bool = False


class WordEmbedding(TokenEmbedding):
    """Trainable word embeddings over the training vocabulary (``<pad>`` stays zero)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.embedding_length = dim

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.embedding(batch.words)


class PretrainedWordEmbedding(TokenEmbedding):
    """Word vectors from a word2vec/GloVe text file, frozen or fine-tuned."""

    def __init__(self, weights: torch.Tensor, freeze: bool):
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(weights, freeze=freeze, padding_idx=0)
        self.embedding_length = int(weights.shape[1])

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.pretrained is None:
            raise DataError("the batch has no pretrained-vocabulary ids; encode it with the model's encoder")
        return self.embedding(batch.pretrained)


class CasingEmbedding(TokenEmbedding):
    """A small trainable embedding of each token's word-shape class (:func:`kftune.nlp.data.casing_class`:
    lower, Initial cap, ALL CAPS, mixed, digits, punctuation, @mention, #hashtag, URL, other), the casing
    feature of Lample et al. (2016) and Flair; with lower-cased word embeddings it carries the case.
    The ids come from the batch (an encoder built with ``use_casing``); a batch without them (an encoder
    built without) gets them computed from its tokens, with the same result."""

    def __init__(self, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(len(CASING_CLASSES) + 1, dim, padding_idx=0)
        self.embedding_length = dim

    def forward(self, batch: Batch) -> torch.Tensor:
        ids = batch.casing
        if ids is None:
            ids = torch.zeros(batch.words.shape, dtype=torch.long)
            for b, toks in enumerate(batch.tokens):
                ids[b, :len(toks)] = torch.tensor([casing_class(t) for t in toks], dtype=torch.long)
            ids = ids.to(batch.words.device)
        return self.embedding(ids)


class _CharEncoderBase(TokenEmbedding):
    """Runs a per-token character encoder on the non-padding tokens only, then scatters back."""

    def __init__(self, num_chars: int, char_dim: int):
        super().__init__()
        self.char_embedding = nn.Embedding(num_chars, char_dim, padding_idx=0)

    def encode_tokens(self, chars: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.chars is None:
            raise DataError("the batch has no character ids; encode it with the model's encoder")
        b, t, c = batch.chars.shape
        flat = batch.chars.reshape(b * t, c)
        token_mask = batch.mask.reshape(b * t)
        chars = flat[token_mask]
        lengths = (chars != 0).sum(dim=1).clamp(min=1)
        encoded = self.encode_tokens(chars, lengths)
        out = encoded.new_zeros(b * t, encoded.shape[-1])
        out[token_mask] = encoded
        return out.reshape(b, t, -1)


class CharLSTMEmbedding(_CharEncoderBase):
    """A character BiLSTM per token (Lample et al. 2016): the final states of both directions."""

    def __init__(self, num_chars: int, char_dim: int, hidden: int):
        super().__init__(num_chars, char_dim)
        self.lstm = nn.LSTM(char_dim, hidden, batch_first=True, bidirectional=True)
        self.embedding_length = 2 * hidden

    def encode_tokens(self, chars: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.char_embedding(chars)
        with torch.autocast(device_type=x.device.type, enabled=False):  # the LSTM runs in float32
            packed = pack_padded_sequence(x.float(), lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h, _) = self.lstm(packed)
        return torch.cat([h[0], h[1]], dim=-1)


class CharCNNEmbedding(_CharEncoderBase):
    """A character CNN per token (Ma & Hovy 2016): width-3 convolution, max over characters."""

    def __init__(self, num_chars: int, char_dim: int, filters: int, kernel: int = 3):
        super().__init__(num_chars, char_dim)
        self.conv = nn.Conv1d(char_dim, filters, kernel, padding=kernel // 2)
        self.embedding_length = filters

    def encode_tokens(self, chars: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.char_embedding(chars).transpose(1, 2)          # [N, dim, C]
        h = torch.relu(self.conv(x))                               # [N, filters, C]
        valid = (torch.arange(h.shape[2], device=h.device).unsqueeze(0) < lengths.to(h.device).unsqueeze(1))
        h = h.masked_fill(~valid.unsqueeze(1), float("-inf"))
        return h.max(dim=2).values


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers (the optional ``transformers`` package, imported when one is built)


def import_transformers() -> Any:
    """The ``transformers`` module, or a :class:`ConfigError` that names the package and how to install it."""
    try:
        import transformers  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError([Problem("hyperparameters.transformer",
                                   "transformer embeddings need the optional 'transformers' package, which is not "
                                   "installed: pip install 'kftune[transformers]' (or pip install "
                                   "'transformers>=4.46'); or remove 'transformer'")]) from None
    transformers.utils.logging.disable_progress_bar()  # no weight-loading bars in trial logs
    return transformers


def _export_files(tokenizer: Any, config: Any) -> dict[str, str]:
    """The transformer's config and tokenizer files as ``{name: base64 text}``: what a model file keeps
    besides the weights (plain strings, so the file still loads with ``weights_only=True``)."""
    with tempfile.TemporaryDirectory(prefix="kftune-transformer-export-") as tmp:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {f.name: base64.b64encode(f.read_bytes()).decode("ascii")
                for f in sorted(Path(tmp).iterdir()) if f.is_file()}


class _TransformerBase(TokenEmbedding):
    """A Hugging Face encoder and its fast tokenizer, from a local directory or an ``s3://`` prefix
    (``source``, read through ``open_store``; never a hub download) or from the files a model file kept
    (``files``, the weights then come from the model's state dict). ``fine_tune``: the encoder's weights train with the model (Flair's
    ``fine_tune=True``); off, they are frozen, the encoder runs in eval mode without gradients and its
    outputs may be cached (:class:`StackedEmbeddings`). ``layers``: the hidden states used (``"-1"`` the
    last, ``"-1,-2,-3,-4"``, ``"all"``; 0 is the embedding layer's output), averaged (``layer_mean``)
    or concatenated - Flair's ``layers`` and ``layer_mean``."""

    def __init__(self, source: str | None, *, fine_tune: bool, layers: str = "-1", layer_mean: bool = True,
                 files: dict[str, str] | None = None, open_store: StoreOpener | None = None):
        super().__init__()
        transformers = import_transformers()
        self.source = source
        try:
            if files is not None:
                with tempfile.TemporaryDirectory(prefix="kftune-transformer-") as tmp:
                    for name, text in files.items():
                        (Path(tmp) / Path(name).name).write_bytes(base64.b64decode(text))
                    self.tokenizer = self._tokenizer(transformers, tmp)
                    config = transformers.AutoConfig.from_pretrained(tmp, local_files_only=True)
                    self.model = transformers.AutoModel.from_config(config)
            else:
                if source is None:
                    raise ConfigError([Problem("hyperparameters.transformer", "no transformer source given")])
                local = materialize_directory(source, open_store)
                self.tokenizer = self._tokenizer(transformers, local)
                self.model = transformers.AutoModel.from_pretrained(local, local_files_only=True)
        except ConfigError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            where = source if files is None else "the model file's transformer"
            raise ConfigError([Problem("hyperparameters.transformer",
                                       f"{where}: cannot load Hugging Face weights and tokenizer from it "
                                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                       "point it at a directory written by save_pretrained (config.json, the "
                                       "weights, tokenizer.json)")]) from None
        self.model.float()  # the master weights train in float32 (a checkpoint may be stored in half precision)
        self._files = files
        self.fine_tune = fine_tune
        self.cacheable = not fine_tune
        if not fine_tune:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.model.eval()
        config = self.model.config
        self.hidden_size = int(config.hidden_size)
        states = int(getattr(config, "num_hidden_layers", 0) or 0) + 1   # the embedding layer's output, then each layer
        self.layer_indexes = self._layer_indexes(layers, states)
        self.layer_mean = layer_mean
        self.width = self.hidden_size * (1 if layer_mean else len(self.layer_indexes))
        self.last_layer_only = self.layer_indexes in ([-1], [states - 1])
        # sentences longer than the encoder's window are cut there: their later words get zero vectors
        limit = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
        positions = int(getattr(config, "max_position_embeddings", 0) or 0)
        if not 0 < limit < 100_000:  # tokenizers without a limit report a huge sentinel value
            limit = positions or 512
        self.max_subtokens = min(limit, positions) if positions else limit
        known = ("input_ids", "attention_mask", "token_type_ids")
        self.input_names = ([n for n in getattr(self.tokenizer, "model_input_names", ()) if n in known]
                            or ["input_ids", "attention_mask"])

    @staticmethod
    def _tokenizer(transformers: Any, directory: str) -> Any:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("word alignment needs a fast tokenizer (a tokenizer.json)")
        try:
            tokenizer([["a"]], is_split_into_words=True)
        except Exception as exc:  # noqa: BLE001 - byte-level BPE (RoBERTa, GPT-2) needs a prefix space for words
            if "add_prefix_space" not in str(exc):
                raise
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True,
                                                                   add_prefix_space=True)
        return tokenizer

    def _layer_indexes(self, layers: str, states: int) -> list[int]:
        if layers == "all":
            return list(range(states))
        indexes = [int(x) for x in layers.split(",")]
        bad = [i for i in indexes if not -states <= i < states]
        if bad:
            raise ConfigError([Problem("hyperparameters.transformer_layers",
                                       f"layer {bad[0]} does not exist: {self.source or 'the transformer'} has "
                                       f"{states - 1} layers (hidden states 0..{states - 1}: 0 the embedding layer's "
                                       f"output, -1 the last layer)")])
        return indexes

    def train(self, mode: bool = True) -> "_TransformerBase":
        super().train(mode)
        if not self.fine_tune:
            self.model.eval()  # frozen features: no dropout, the same vector every time
        return self

    def saved_files(self) -> dict[str, str]:
        """The config and tokenizer files a model file keeps, to rebuild this module without ``source``."""
        if self._files is None:
            self._files = _export_files(self.tokenizer, self.model.config)
        return self._files

    def encode(self, sentences: Sequence[Sequence[str]]) -> Any:
        """The tokenizer's batch (on the CPU) for pre-split sentences: padded, cut at the encoder's window."""
        return self.tokenizer([list(t) for t in sentences], is_split_into_words=True, truncation=True,
                              max_length=self.max_subtokens, padding=True, return_tensors="pt")

    def hidden(self, enc: Any, device: torch.device) -> torch.Tensor:
        """``[B, S, width]``: the chosen hidden states of every sub-token, averaged or concatenated."""
        inputs = {k: enc[k].to(device, non_blocking=True) for k in self.input_names if k in enc}
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.fine_tune):
            if self.last_layer_only:
                return self.model(**inputs).last_hidden_state
            states = self.model(**inputs, output_hidden_states=True).hidden_states
            chosen = [states[i] for i in self.layer_indexes]
        if len(chosen) == 1:
            return chosen[0]
        return torch.stack(chosen).mean(dim=0) if self.layer_mean else torch.cat(chosen, dim=-1)


class TransformerWordEmbedding(_TransformerBase):
    """One vector per word from its sub-tokens (Flair's ``TransformerWordEmbeddings``): ``first``, ``last``,
    ``first_last`` (both, concatenated) or the ``mean`` of them (``subtoken_pooling``). Words that the
    encoder's window cut off, or that the tokenizer maps to no sub-token, get zero vectors."""

    def __init__(self, source: str | None, *, fine_tune: bool, layers: str = "-1", layer_mean: bool = True,
                 subtoken_pooling: str = "first", files: dict[str, str] | None = None,
                 open_store: StoreOpener | None = None):
        super().__init__(source, fine_tune=fine_tune, layers=layers, layer_mean=layer_mean, files=files,
                         open_store=open_store)
        self.subtoken_pooling = subtoken_pooling
        self.embedding_length = self.width * (2 if subtoken_pooling == "first_last" else 1)

    def _alignment(self, enc: Any, batch_size: int, words: int) -> dict[str, torch.Tensor]:
        """Flat indices: sub-token ``b * S + s`` -> word ``b * T + w`` (every sub-token, its word's first
        and its last)."""
        seq = enc["input_ids"].shape[1]
        every_src, every_dst, first, last = [], [], {}, {}
        for b in range(batch_size):
            for pos, word in enumerate(enc.word_ids(b)):
                if word is None or word >= words:
                    continue
                src, dst = b * seq + pos, b * words + word
                every_src.append(src)
                every_dst.append(dst)
                first.setdefault(dst, src)
                last[dst] = src
        as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
        return {"src": as_long(every_src), "dst": as_long(every_dst), "first_dst": as_long(list(first)),
                "first_src": as_long(list(first.values())), "last_dst": as_long(list(last)),
                "last_src": as_long(list(last.values()))}

    def forward(self, batch: Batch) -> torch.Tensor:
        device = batch.words.device
        b, t = len(batch.tokens), batch.words.shape[1]
        enc = self.encode(batch.tokens)
        hidden = self.hidden(enc, device)
        flat = hidden.reshape(-1, hidden.shape[-1])
        idx = {k: v.to(device) for k, v in self._alignment(enc, b, t).items()}

        def pick(which: str) -> torch.Tensor:
            out = flat.new_zeros(b * t, flat.shape[-1])
            return out.index_copy(0, idx[f"{which}_dst"], flat.index_select(0, idx[f"{which}_src"]))

        if self.subtoken_pooling == "mean":
            total = flat.new_zeros(b * t, flat.shape[-1]).index_add(0, idx["dst"], flat.index_select(0, idx["src"]))
            count = torch.bincount(idx["dst"], minlength=b * t).clamp(min=1).unsqueeze(1).to(total.dtype)
            out = total / count
        elif self.subtoken_pooling == "first_last":
            out = torch.cat([pick("first"), pick("last")], dim=-1)
        else:
            out = pick(self.subtoken_pooling)
        return out.reshape(b, t, -1)


#: The name of the word-level transformer embedding before document embeddings existed.
TransformerEmbedding = TransformerWordEmbedding


class TransformerDocumentEmbedding(_TransformerBase):
    """One vector per sentence (Flair's ``TransformerDocumentEmbeddings``): the first sub-token's
    (``cls``: BERT's ``[CLS]``, RoBERTa's ``<s>``), or the ``mean`` or ``max`` over the sentence's
    sub-tokens (special tokens and padding left out) - ``cls_pooling``. ``forward`` returns ``[B, dim]``;
    the classifier puts a linear layer on it."""

    def __init__(self, source: str | None, *, fine_tune: bool, layers: str = "-1", layer_mean: bool = True,
                 cls_pooling: str = "cls", files: dict[str, str] | None = None,
                 open_store: StoreOpener | None = None):
        super().__init__(source, fine_tune=fine_tune, layers=layers, layer_mean=layer_mean, files=files,
                         open_store=open_store)
        self.cls_pooling = cls_pooling
        self.embedding_length = self.width
        if cls_pooling == "cls":
            first = self.encode([["a"]])["input_ids"][0, 0].item()
            if self.tokenizer.cls_token_id is None or first != self.tokenizer.cls_token_id:
                raise ConfigError([Problem("hyperparameters.transformer_cls_pooling",
                                           f"cls: the tokenizer of {source or 'the transformer'} does not start a "
                                           "sentence with its classification token; use mean or max")])

    def forward(self, batch: Batch) -> torch.Tensor:
        enc = self.encode(batch.tokens)
        hidden = self.hidden(enc, batch.words.device)
        if self.cls_pooling == "cls":
            return hidden[:, 0]
        words = torch.tensor([[w is not None for w in enc.word_ids(b)] for b in range(hidden.shape[0])],
                             dtype=torch.bool).to(hidden.device)
        words = words | ~words.any(dim=1, keepdim=True)  # a sentence without words: all its sub-tokens
        if self.cls_pooling == "max":
            return hidden.masked_fill(~words.unsqueeze(2), float("-inf")).max(dim=1).values
        m = words.unsqueeze(2).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


class StackedEmbeddings(nn.Module):
    """Concatenation of several token embeddings, with an optional cache for cacheable ones. (A document
    embedding, ``[B, dim]``, stands alone in its stack: the classifier's ``transformer`` encoder.)"""

    def __init__(self, embeddings: Iterable[tuple[str, TokenEmbedding]], storage_mode: str = "none"):
        super().__init__()
        self.embeddings = nn.ModuleDict(dict(embeddings))
        if not self.embeddings:
            raise ConfigError([Problem("hyperparameters.embedding_dim", "no embeddings configured")])
        self.embedding_length = sum(e.embedding_length for e in self.embeddings.values())
        self.storage_mode = storage_mode
        self._cache: dict[tuple[str, str, int], torch.Tensor] = {}

    def set_storage_mode(self, mode: str) -> None:
        if mode not in ("none", "cpu", "gpu"):
            raise ConfigError([Problem("embeddings_storage_mode", f"{mode!r} is not none, cpu or gpu")])
        self.storage_mode = mode
        if mode == "none":
            self._cache.clear()

    def clear_cache(self) -> None:
        self._cache.clear()

    def forward(self, batch: Batch) -> torch.Tensor:
        parts = []
        for name, emb in self.embeddings.items():
            if emb.cacheable and self.storage_mode != "none" and batch.cache_key is not None:
                parts.append(self._cached(name, emb, batch))
            else:
                parts.append(emb(batch))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _cached(self, name: str, emb: TokenEmbedding, batch: Batch) -> torch.Tensor:
        key = batch.cache_key or ""
        if any((name, key, i) not in self._cache for i in batch.indices):
            with torch.no_grad():
                full = emb(batch)
            store_on = full.device if self.storage_mode == "gpu" else torch.device("cpu")
            for row, (i, n) in enumerate(zip(batch.indices, batch.lengths.tolist())):
                vectors = full[row] if full.dim() == 2 else full[row, :n]   # a document's vector, or its tokens'
                self._cache[(name, key, i)] = vectors.detach().to(store_on)
        rows = [self._cache[(name, key, i)] for i in batch.indices]
        if rows[0].dim() == 1:
            return torch.stack(rows).to(batch.words.device, non_blocking=True)
        out = pad_sequence(rows, batch_first=True)
        if out.shape[1] < batch.words.shape[1]:
            out = nn.functional.pad(out, (0, 0, 0, batch.words.shape[1] - out.shape[1]))
        return out.to(batch.words.device, non_blocking=True)


# ------------------------------------------------------------------------------------------------
# Reading pretrained vectors


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def materialize_file(uri: str, open_store: StoreOpener | None = None
                     ) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A local path for ``uri`` (a path, ``file://``, or a store URI such as ``s3://bucket/key``, copied
    through ``open_store``). Returns the path and a temporary directory to clean up (``None`` for local files)."""
    if not is_store_uri(uri):
        p = local_path(uri)
        if not p.is_file():
            raise DataError(f"{uri}: no such file")
        return p, None
    opener = opener_for(uri, open_store, "hyperparameters.pretrained_embeddings")
    root, key = split_uri(uri)
    tmp = tempfile.TemporaryDirectory(prefix="kftune-vectors-")
    local = Path(tmp.name) / key
    opener(root).get_file(key, local)
    return local, tmp


_MATERIALIZED: dict[str, str] = {}


def materialize_directory(uri: str, open_store: StoreOpener | None = None) -> str:
    """A local directory for ``uri`` (a local directory, or a store prefix copied through ``open_store`` to a
    temp dir once per process - every run and trial of a process reads the same copy - removed when the
    process exits)."""
    if not is_store_uri(uri):
        p = local_path(uri)
        if not p.is_dir():
            raise DataError(f"{uri}: not a directory with transformer weights")
        return str(p)
    if uri in _MATERIALIZED and Path(_MATERIALIZED[uri]).is_dir():
        return _MATERIALIZED[uri]
    store = opener_for(uri, open_store, "hyperparameters.transformer")(uri)
    keys = store.list("")
    if not keys:
        raise DataError(f"{uri}: no files under this prefix")
    target = Path(tempfile.mkdtemp(prefix="kftune-transformer-"))
    atexit.register(shutil.rmtree, target, True)
    for key in keys:
        store.get_file(key, target / key)
    _MATERIALIZED[uri] = str(target)
    return str(target)


def iter_vectors(path: Path) -> Iterator[tuple[str, list[str]]]:
    """``(word, [values as text])`` per line of a word2vec text (with an ``N D`` header) or GloVe
    file (without one)."""
    with _open_text(path) as handle:
        first = handle.readline()
        parts = first.rstrip("\n").split(" ")
        if not (len(parts) == 2 and all(p.isdigit() for p in parts)) and len(parts) > 1:
            yield parts[0], parts[1:]
        for line in handle:
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if len(parts) > 1:
                yield parts[0], parts[1:]


def load_pretrained_vectors(uri: str, wanted: set[str] | None, open_store: StoreOpener | None = None
                            ) -> tuple[PretrainedVocabulary, torch.Tensor]:
    """Read vectors for the words in ``wanted`` (exact or lower-cased; ``None``: every word) from the file at
    ``uri`` (a store URI is read through ``open_store``).

    The matrix row 0 (``<pad>``) is zero, row 1 (``<unk>``) the mean of the loaded vectors. Only
    vectors for corpus words are kept, so model files stay small; other words map to ``<unk>``.
    """
    path, tmp = materialize_file(uri, open_store)
    try:
        wanted_lower = {w.lower() for w in wanted} if wanted is not None else None
        words: list[str] = []
        rows: list[np.ndarray] = []
        dim = None
        seen: set[str] = set()
        for number, (word, values) in enumerate(iter_vectors(path), 1):
            if dim is None:
                dim = len(values)
            if len(values) != dim:
                raise DataError(f"{uri}: line {number} has {len(values)} values, expected {dim}")
            if word in seen or word in (PAD, UNK):
                continue
            if wanted is not None and word not in wanted and word not in wanted_lower:  # type: ignore[operator]
                continue
            try:
                rows.append(np.asarray(values, dtype=np.float32))
            except ValueError:
                raise DataError(f"{uri}: line {number} is not a word followed by numbers") from None
            words.append(word)
            seen.add(word)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if dim is None:
        raise DataError(f"{uri}: no vectors found (expected word2vec or GloVe text format)")
    matrix = np.zeros((len(words) + 2, dim), dtype=np.float32)
    if rows:
        stacked = np.stack(rows)
        matrix[2:] = stacked
        matrix[UNK_ID] = stacked.mean(axis=0)
    log.info("pretrained vectors %s: %d words kept, dim %d", uri, len(words), dim)
    return PretrainedVocabulary([PAD, UNK] + words), torch.from_numpy(matrix)


def ngram_spec(hp: "Hyperparameters") -> NgramSpec | None:
    """The hashed n-gram features the hyperparameters ask for (``None``: the model has no n-gram bag)."""
    if not hp.uses_ngrams:
        return None
    return NgramSpec(word_ngrams=hp.word_ngrams, char_min=hp.char_ngram_min, char_max=hp.char_ngram_max,
                     buckets=hp.ngram_buckets, min_count=hp.ngram_min_count)


def encoding_key(hp: "Hyperparameters") -> tuple[Any, ...]:
    """Every setting of ``hp`` that :func:`encode_corpus` reads: two hyperparameter sets with the same key encode
    a corpus alike (the key of the caches that keep encodings between trials or runs)."""
    return (hp.min_word_freq, hp.max_length, hp.char_embeddings != "none", hp.pretrained_embeddings, ngram_spec(hp),
            hp.casing_embedding_dim > 0, hp.lowercase_words)


def encode_corpus(task: TaskInfo, train: Sequence[Example], dev: Sequence[Example] | None, hp: "Hyperparameters",
                  *, also_known: Iterable[Example] = (), tokenizer: Any = None, open_store: StoreOpener | None = None
                  ) -> tuple[TextEncoder, EncodedDataset, EncodedDataset | None, torch.Tensor | None]:
    """``(encoder, train, dev, pretrained weights)``: the vocabularies built from ``train`` with ``hp``'s
    data-shaping settings; when ``hp.pretrained_embeddings`` is set, its vectors loaded for the words of
    train, dev and ``also_known`` only (model files stay small; a store URI is read through ``open_store``); then
    train and dev encoded.

    The encoder carries the corpus' tokenizer (``tokenizer``: a :class:`~kftune.nlp.tokenizers.Tokenizer`
    or its dict; by default ``task.tokenizer``, which :func:`~kftune.nlp.data.task_from_corpus_info` reads
    from corpus.json), so the model file tokenizes raw text as the corpus was tokenized."""
    from kftune.nlp.tokenizers import Tokenizer, tokenizer_from_dict

    spec = tokenizer if tokenizer is not None else task.tokenizer
    tok = spec if isinstance(spec, Tokenizer) or spec is None else tokenizer_from_dict(spec)
    encoder = TextEncoder.build(task, train, min_word_freq=hp.min_word_freq, max_length=hp.max_length,
                                use_chars=hp.char_embeddings != "none", tokenizer=tok, ngrams=ngram_spec(hp),
                                use_casing=hp.casing_embedding_dim > 0, lowercase=hp.lowercase_words)
    weights = None
    if hp.pretrained_embeddings is not None:
        wanted = {t for exs in (train, dev or (), also_known) for ex in exs for t in ex.tokens}
        encoder.pretrained, weights = load_pretrained_vectors(hp.pretrained_embeddings, wanted, open_store)
    return (encoder, encoder.encode(train, "train", training=True),
            encoder.encode(dev, "dev") if dev is not None else None, weights)
