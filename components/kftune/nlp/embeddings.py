"""Token embeddings: trainable words, characters (BiLSTM or CNN per token), pretrained word vectors,
an optional Hugging Face transformer, and a stack of several.

Every embedding maps a :class:`~kftune.nlp.data.Batch` to ``[batch, tokens, dim]``. The stack
concatenates them and, for frozen embeddings that are costly to compute (a frozen transformer),
caches their outputs per sentence like Flair's ``embeddings_storage_mode``: ``none`` recomputes
every time, ``cpu`` keeps them in host memory, ``gpu`` on the device.
"""

from __future__ import annotations

import gzip
import io
import logging
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


class TransformerEmbedding(TokenEmbedding):
    """A Hugging Face encoder loaded from a local directory (no hub download): the first sub-token's
    last hidden state per word. Needs the optional ``transformers`` package."""

    def __init__(self, path: str, freeze: bool):
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError([Problem("hyperparameters.transformer",
                                       "transformer embeddings need the optional 'transformers' package "
                                       "(pip install transformers), which is not installed; remove "
                                       "'transformer' or install it")]) from None
        local = materialize_directory(path)
        self.tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError([Problem("hyperparameters.transformer",
                                       f"{path}: word alignment needs a fast tokenizer (tokenizer.json)")])
        self.model = AutoModel.from_pretrained(local, local_files_only=True)
        self.freeze = freeze
        if freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.embedding_length = int(self.model.config.hidden_size)
        # words whose sub-tokens fall beyond the encoder's window get zero vectors
        limit = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
        if not 0 < limit < 100_000:  # tokenizers without a limit report a huge sentinel value
            limit = int(getattr(self.model.config, "max_position_embeddings", 512) or 512)
        self.max_subtokens = limit
        self.cacheable = freeze
        self.source = path

    def forward(self, batch: Batch) -> torch.Tensor:
        device = batch.words.device
        enc = self.tokenizer([list(t) for t in batch.tokens], is_split_into_words=True, truncation=True,
                             max_length=self.max_subtokens, padding=True, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in enc.items()}
        if self.freeze:
            self.model.eval()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            hidden = self.model(**inputs).last_hidden_state
        out = hidden.new_zeros(len(batch.tokens), batch.words.shape[1], hidden.shape[-1])
        for b in range(len(batch.tokens)):
            seen = set()
            for pos, word in enumerate(enc.word_ids(b)):
                if word is not None and word not in seen:
                    seen.add(word)
                    out[b, word] = hidden[b, pos]
        return out


class StackedEmbeddings(nn.Module):
    """Concatenation of several token embeddings, with an optional cache for cacheable ones."""

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
                self._cache[(name, key, i)] = full[row, :n].detach().to(store_on)
        rows = [self._cache[(name, key, i)] for i in batch.indices]
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


def materialize_file(uri: str) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A local path for ``uri`` (a path, ``file://`` or a store URI such as ``s3://bucket/key``).
    Returns the path and a temporary directory to clean up (``None`` for local files)."""
    if "://" not in uri or uri.startswith("file://"):
        p = Path(uri.removeprefix("file://"))
        if not p.is_file():
            raise DataError(f"{uri}: no such file")
        return p, None
    from kftune.io.store import open_store

    root, _, key = uri.rpartition("/")
    tmp = tempfile.TemporaryDirectory(prefix="kftune-vectors-")
    local = Path(tmp.name) / key
    open_store(root).get_file(key, local)
    return local, tmp


def materialize_directory(uri: str) -> str:
    """A local directory for ``uri`` (a local directory, or a store prefix copied to a temp dir)."""
    if "://" not in uri or uri.startswith("file://"):
        p = Path(uri.removeprefix("file://"))
        if not p.is_dir():
            raise DataError(f"{uri}: not a directory with transformer weights")
        return str(p)
    from kftune.io.store import open_store

    store = open_store(uri)
    target = Path(tempfile.mkdtemp(prefix="kftune-transformer-"))
    keys = store.list("")
    if not keys:
        raise DataError(f"{uri}: no files under this prefix")
    for key in keys:
        store.get_file(key, target / key)
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


def load_pretrained_vectors(uri: str, wanted: set[str] | None) -> tuple[PretrainedVocabulary, torch.Tensor]:
    """Read vectors for the words in ``wanted`` (exact or lower-cased; ``None``: every word).

    The matrix row 0 (``<pad>``) is zero, row 1 (``<unk>``) the mean of the loaded vectors. Only
    vectors for corpus words are kept, so model files stay small; other words map to ``<unk>``.
    """
    path, tmp = materialize_file(uri)
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


def encode_corpus(task: TaskInfo, train: Sequence[Example], dev: Sequence[Example] | None, hp: "Hyperparameters",
                  *, also_known: Iterable[Example] = (), tokenizer: Any = None
                  ) -> tuple[TextEncoder, EncodedDataset, EncodedDataset | None, torch.Tensor | None]:
    """``(encoder, train, dev, pretrained weights)``: the vocabularies built from ``train`` with ``hp``'s
    data-shaping settings; when ``hp.pretrained_embeddings`` is set, its vectors loaded for the words of
    train, dev and ``also_known`` only (model files stay small); then train and dev encoded.

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
        encoder.pretrained, weights = load_pretrained_vectors(hp.pretrained_embeddings, wanted)
    return (encoder, encoder.encode(train, "train", training=True),
            encoder.encode(dev, "dev") if dev is not None else None, weights)
