"""The two models: :class:`TextClassifier` and :class:`SequenceTagger`, with one interface.

- ``loss(batch) -> (summed loss, count)``: the loss summed over ``count`` items (sentences for
  classification, tokens for tagging). The trainer divides by the mini-batch's count, so gradient
  accumulation over chunks gives the same gradient as one pass.
- ``predict(batch) -> BatchPrediction``: label indices and confidences (in eval mode, no grad).

:func:`build_model` makes either from a task, :class:`~kftune.nlp.config.Hyperparameters` and the
vocabularies of a :class:`~kftune.nlp.data.TextEncoder`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from kftune.core.errors import ConfigError, Problem
from kftune.nlp.config import Hyperparameters
from kftune.nlp.crf import CRF
from kftune.nlp.data import UNK_ID, Batch, EncodedDataset, TextEncoder
from kftune.nlp.embeddings import (
    CasingEmbedding,
    CharCNNEmbedding,
    CharLSTMEmbedding,
    PretrainedWordEmbedding,
    StackedEmbeddings,
    TokenEmbedding,
    TransformerDocumentEmbedding,
    TransformerWordEmbedding,
    WordEmbedding,
)
from kftune.nlp.storage import StoreOpener


@dataclass
class BatchPrediction:
    """Predictions for one batch, in batch order.

    Classification: ``labels[b]`` an index, ``scores[b]`` its probability, ``distributions`` the
    ``[B, L]`` probabilities. Tagging: ``labels[b]`` a list of tag indices, ``scores[b]`` the
    per-token probability of each predicted tag (CRF marginals or softmax).
    """

    labels: list
    scores: list
    distributions: torch.Tensor | None = None


class WordDropout(nn.Module):
    """Replace a token's word ids (trainable and pretrained vocabularies) by ``<unk>`` with
    probability ``p``, in training only. Its character features stay, so the model learns both an
    ``<unk>`` vector and to read unknown words from their characters - what it meets for words
    outside the training vocabulary at test time (Lample et al. 2016 do this for singletons)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, batch: Batch) -> Batch:
        if not self.training or self.p == 0:
            return batch
        drop = (torch.rand(batch.words.shape, device=batch.words.device) < self.p) & batch.mask
        words = batch.words.masked_fill(drop, UNK_ID)
        pretrained = None if batch.pretrained is None else batch.pretrained.masked_fill(drop, UNK_ID)
        return dataclasses.replace(batch, words=words, pretrained=pretrained)


class LockedDropout(nn.Module):
    """The same dropout mask at every time step (variational dropout, Flair's ``LockedDropout``)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty(x.shape[0], 1, x.shape[2], device=x.device).bernoulli_(1 - self.p)
        return x * (keep / (1 - self.p)).to(x.dtype)


class NgramBag(nn.Module):
    """The fastText-style document vector: the mean of the hashed n-gram features' vectors
    (:mod:`kftune.nlp.ngrams`), one ``EmbeddingBag`` with sparse gradients, so an optimizer step
    touches only the rows of the batch's features (:func:`kftune.nlp.schedulers.build_optimizer`
    handles sparse gradients). ``feature_dropout`` drops each feature of a training document with
    that probability (a document keeps at least one), the bag's counterpart of word dropout."""

    def __init__(self, buckets: int, dim: int, feature_dropout: float = 0.0, weighting: str = "none"):
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets, dim, mode="sum", sparse=True)
        nn.init.uniform_(self.bag.weight, -1.0 / dim, 1.0 / dim)   # fastText's initialisation
        self.feature_dropout = feature_dropout
        self.embedding_length = dim
        self.weighting = weighting
        # one weight per bucket (ngrams.feature_weights), set from the training split by fit_weights();
        # a buffer, so it is saved in the model file and restored from checkpoints
        self.register_buffer("feature_weights", torch.ones(buckets) if weighting != "none" else torch.ones(0))

    def fit_weights(self, dataset: EncodedDataset) -> None:
        """Compute the feature weights from the training split (no-op for ``weighting: none``)."""
        if self.weighting == "none":
            return
        from kftune.nlp.ngrams import feature_weights

        if dataset.ngrams is None or dataset.labels is None:
            raise ValueError("fit_weights needs an encoded training split with n-grams and labels")
        rows = [dataset.ngrams[i].tolist() for i in dataset.usable]
        labels = [int(dataset.labels[i]) for i in dataset.usable]
        weights = feature_weights(rows, labels, self.bag.num_embeddings, int(max(labels, default=0)) + 1,
                                  self.weighting)
        self.feature_weights.copy_(torch.from_numpy(weights))

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.ngrams is None or batch.ngram_offsets is None:
            raise ValueError("the batch has no n-gram features: encode it with a TextEncoder built with ngrams")
        ids, offsets = batch.ngrams, batch.ngram_offsets
        if self.training and self.feature_dropout > 0 and ids.numel():
            owner = torch.bucketize(torch.arange(ids.numel(), device=ids.device), offsets, right=True) - 1
            keep = torch.rand(ids.shape, device=ids.device) >= self.feature_dropout
            first = torch.zeros_like(keep)
            first[offsets[offsets < ids.numel()]] = True        # every document keeps its first feature
            keep |= first
            ids, owner = ids[keep], owner[keep]
            offsets = torch.searchsorted(owner, torch.arange(len(batch.ngram_offsets), device=ids.device))
        # a (weighted) mean: sum mode with per-sample weights w_f / (features of the document)
        lengths = torch.diff(offsets, append=torch.tensor([ids.numel()], device=ids.device))
        share = torch.repeat_interleave(1.0 / lengths.clamp(min=1).float(), lengths)
        if self.weighting != "none":
            share = share * self.feature_weights[ids]
        return self.bag(ids, offsets, per_sample_weights=share)


def _run_rnn(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a batch-first RNN over padded input; returns (outputs [B,T,H*dirs], final hidden [B, H*dirs]).
    The RNN runs in float32 even under autocast (the recurrence accumulates rounding errors)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        packed = pack_padded_sequence(x.float(), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h = rnn(packed)
    if isinstance(h, tuple):
        h = h[0]
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    dirs = 2 if rnn.bidirectional else 1
    final = h.view(rnn.num_layers, dirs, x.shape[0], rnn.hidden_size)[-1]      # last layer
    return out, torch.cat(list(final), dim=-1)


class TextClassifier(nn.Module):
    """Embeddings -> document encoder (mean/max pooling, (Bi)LSTM/GRU, or a Kim-style CNN) -> linear;
    or a transformer's document vector -> linear (``transformer``: Flair's ``TextClassifier`` over
    ``TransformerDocumentEmbeddings``, whose stack then holds that one document embedding).

    Word dropout (to ``<unk>``) and locked dropout act on the embeddings, ``dropout`` on the document vector
    (as in Kim 2014, where dropout sits before the output layer)."""

    is_classifier = True

    def __init__(self, embeddings: StackedEmbeddings | None, num_labels: int, hp: Hyperparameters,
                 ngram_rows: int | None = None):
        super().__init__()
        self.embeddings = embeddings
        self.encoder_type = hp.document_encoder
        # the bag's rows: the encoder's (kept n-grams with ngram_min_count >= 2), else the hash buckets
        self.ngram_bag = (NgramBag(ngram_rows or hp.ngram_buckets, hp.ngram_dim, hp.ngram_dropout, hp.ngram_weighting)
                          if hp.uses_ngrams else None)
        self.word_dropout = WordDropout(hp.word_dropout)
        self.locked_dropout = LockedDropout(hp.locked_dropout)
        self.dropout = nn.Dropout(hp.dropout)
        dim = embeddings.embedding_length if embeddings is not None else 0
        if hp.document_encoder == "ngram":
            out_dim = 0
        elif hp.document_encoder == "transformer":
            out_dim = dim
        elif hp.document_encoder in ("lstm", "gru"):
            cls = nn.LSTM if hp.document_encoder == "lstm" else nn.GRU
            self.rnn = cls(dim, hp.hidden_size, num_layers=hp.rnn_layers, batch_first=True,
                           bidirectional=hp.bidirectional, dropout=hp.dropout if hp.rnn_layers > 1 else 0.0)
            out_dim = hp.hidden_size * (2 if hp.bidirectional else 1)
        elif hp.document_encoder == "cnn":
            self.kernel_sizes = tuple(hp.cnn_kernel_sizes)
            self.convs = nn.ModuleList(nn.Conv1d(dim, hp.cnn_filters, k) for k in self.kernel_sizes)
            out_dim = hp.cnn_filters * len(self.kernel_sizes)
        else:
            out_dim = dim
        if self.ngram_bag is not None:
            out_dim += self.ngram_bag.embedding_length
        self.decoder = nn.Linear(out_dim, num_labels)
        self.loss_function = nn.CrossEntropyLoss(reduction="sum")

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``[B, num_labels]``."""
        bag = self.ngram_bag(batch) if self.ngram_bag is not None else None
        if self.encoder_type == "ngram":
            return self.decoder(self.dropout(bag))
        if self.encoder_type == "transformer":
            doc = self.embeddings(batch)
            if bag is not None:
                doc = torch.cat([doc, bag.to(doc.dtype)], dim=1)
            return self.decoder(self.dropout(doc))
        x = self.locked_dropout(self.embeddings(self.word_dropout(batch)))
        mask = batch.mask
        if self.encoder_type == "mean":
            m = mask.unsqueeze(2).to(x.dtype)
            doc = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        elif self.encoder_type == "max":
            doc = x.masked_fill(~mask.unsqueeze(2), float("-inf")).max(dim=1).values
        elif self.encoder_type in ("lstm", "gru"):
            _, doc = _run_rnn(self.rnn, x, batch.lengths)
        else:
            doc = self._cnn(x, batch.lengths)
        if bag is not None:
            doc = torch.cat([doc, bag.to(doc.dtype)], dim=1)
        return self.decoder(self.dropout(doc))

    def _cnn(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        widest = max(self.kernel_sizes)
        if x.shape[1] < widest:
            x = nn.functional.pad(x, (0, 0, 0, widest - x.shape[1]))
        x = x.transpose(1, 2)                                               # [B, D, T]
        lengths = lengths.to(x.device)
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            h = torch.relu(conv(x))                                         # [B, F, T-k+1]
            # a window is valid if it starts inside the sentence (short sentences: the first window)
            starts = torch.arange(h.shape[2], device=h.device).unsqueeze(0)
            valid = starts < (lengths - k + 1).clamp(min=1).unsqueeze(1)
            h = h.masked_fill(~valid.unsqueeze(1), float("-inf"))
            pooled.append(h.max(dim=2).values)
        return torch.cat(pooled, dim=1)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, int]:
        logits = self.forward(batch)
        return self.loss_function(logits.float(), batch.labels), batch.size

    @staticmethod
    def _decode(logits: torch.Tensor) -> BatchPrediction:
        probs = torch.softmax(logits.float(), dim=-1)
        probs[:, 0] = 0.0  # never predict the <unk> label
        probs = probs / probs.sum(dim=1, keepdim=True).clamp(min=1e-12)
        score, label = probs.max(dim=1)
        return BatchPrediction(labels=label.tolist(), scores=score.tolist(), distributions=probs.cpu())

    @torch.no_grad()
    def predict(self, batch: Batch) -> BatchPrediction:
        return self._decode(self.forward(batch))

    @torch.no_grad()
    def loss_and_predict(self, batch: Batch, with_scores: bool = True) -> tuple[torch.Tensor, int, BatchPrediction]:
        """Loss and predictions from one forward pass (dev evaluation)."""
        logits = self.forward(batch)
        return self.loss_function(logits.float(), batch.labels), batch.size, self._decode(logits)


class SequenceTagger(nn.Module):
    """Embeddings -> optional reprojection -> optional BiLSTM -> linear -> optional CRF
    (Flair's ``SequenceTagger(use_rnn, use_crf, reproject_embeddings)``)."""

    is_classifier = False

    def __init__(self, embeddings: StackedEmbeddings, num_tags: int, hp: Hyperparameters):
        super().__init__()
        self.embeddings = embeddings
        dim = embeddings.embedding_length
        self.dropout = nn.Dropout(hp.dropout) if hp.dropout > 0 else None
        self.word_dropout = WordDropout(hp.word_dropout)
        self.locked_dropout = LockedDropout(hp.locked_dropout)
        self.reproject = nn.Linear(dim, dim) if hp.reproject_embeddings else None
        if hp.use_rnn:
            self.rnn = nn.LSTM(dim, hp.hidden_size, num_layers=hp.rnn_layers, batch_first=True,
                               bidirectional=hp.bidirectional, dropout=hp.dropout if hp.rnn_layers > 1 else 0.0)
            out_dim = hp.hidden_size * (2 if hp.bidirectional else 1)
        else:
            self.rnn = None
            out_dim = dim
        self.linear = nn.Linear(out_dim, num_tags)
        self.crf = CRF(num_tags) if hp.use_crf else None
        self.loss_function = nn.CrossEntropyLoss(reduction="sum")

    def _regularise(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.locked_dropout(x)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Emission scores ``[B, T, num_tags]``."""
        x = self._regularise(self.embeddings(self.word_dropout(batch)))
        if self.reproject is not None:
            x = self.reproject(x)
        if self.rnn is not None:
            x, _ = _run_rnn(self.rnn, x, batch.lengths)
            x = self.locked_dropout(self.dropout(x) if self.dropout is not None else x)
        return self.linear(x)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, int]:
        return self._loss_from(self.forward(batch), batch), int(batch.lengths.sum())

    def _loss_from(self, emissions: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.crf is not None:
            return self.crf.nll(emissions, batch.labels, batch.mask).sum()
        return self.loss_function(emissions.float()[batch.mask], batch.labels[batch.mask])

    def _decode(self, emissions: torch.Tensor, batch: Batch, with_scores: bool = True) -> BatchPrediction:
        emissions = emissions.float().clone()
        emissions[..., 0] = -1e4  # never predict the <unk> tag
        if self.crf is not None:
            paths = self.crf.viterbi(emissions, batch.mask)
            probs = self.crf.marginals(emissions, batch.mask) if with_scores else None
        else:
            probs = torch.softmax(emissions, dim=-1)
            paths = probs.argmax(dim=-1)
        lengths = batch.lengths.tolist()
        paths_l = paths.cpu().tolist()
        if probs is None:
            scores = [[] for _ in lengths]
        else:
            chosen_l = probs.gather(2, paths.unsqueeze(2)).squeeze(2).cpu().tolist()
            scores = [s[:n] for s, n in zip(chosen_l, lengths)]
        return BatchPrediction(labels=[p[:n] for p, n in zip(paths_l, lengths)], scores=scores)

    @torch.no_grad()
    def predict(self, batch: Batch) -> BatchPrediction:
        return self._decode(self.forward(batch), batch)

    @torch.no_grad()
    def loss_and_predict(self, batch: Batch, with_scores: bool = True) -> tuple[torch.Tensor, int, BatchPrediction]:
        """Loss and predictions from one forward pass (dev evaluation)."""
        emissions = self.forward(batch)
        return (self._loss_from(emissions, batch), int(batch.lengths.sum()),
                self._decode(emissions, batch, with_scores))


Model = TextClassifier | SequenceTagger


def fit_to_training_split(model: Model, train: EncodedDataset) -> None:
    """Set what a fresh model takes from its training split before the first step: the n-gram bag's
    feature weights (:meth:`NgramBag.fit_weights`). The trainer and the LR range test call it; a loaded
    model has them in its state dict."""
    bag = getattr(model, "ngram_bag", None)
    if bag is not None:
        bag.fit_weights(train)


def transformer_of(model: Model) -> TransformerWordEmbedding | TransformerDocumentEmbedding | None:
    """The model's transformer embedding, if it has one."""
    stack = getattr(model, "embeddings", None)
    found = stack.embeddings["transformer"] if stack is not None and "transformer" in stack.embeddings else None
    return found if isinstance(found, (TransformerWordEmbedding, TransformerDocumentEmbedding)) else None


def build_embeddings(hp: Hyperparameters, encoder: TextEncoder, *, pretrained_weights: torch.Tensor | None = None,
                     storage_mode: str = "none", transformer_files: dict[str, str] | None = None,
                     open_store: StoreOpener | None = None) -> StackedEmbeddings:
    """The embedding stack the hyperparameters ask for. ``pretrained_weights`` (rows aligned with
    ``encoder.pretrained``) is needed when ``pretrained_embeddings`` is set; a loaded model passes
    zeros of the right shape and then loads its state dict. ``transformer_files`` (a model file's
    :meth:`~kftune.nlp.embeddings.TransformerWordEmbedding.saved_files`) rebuild the transformer without
    reading ``hp.transformer``; its weights then come from the state dict. ``open_store`` reads an
    ``hp.transformer`` in an artifact store (``s3://...``)."""
    parts: list[tuple[str, TokenEmbedding]] = []
    if hp.embedding_dim > 0:
        parts.append(("words", WordEmbedding(len(encoder.words), hp.embedding_dim)))
    if hp.pretrained_embeddings is not None:
        if pretrained_weights is None or encoder.pretrained is None:
            raise ConfigError([Problem("hyperparameters.pretrained_embeddings",
                                       "pretrained vectors were not loaded for this model")])
        parts.append(("pretrained", PretrainedWordEmbedding(pretrained_weights, freeze=hp.freeze_pretrained)))
    if hp.char_embeddings != "none":
        if encoder.chars is None:
            raise ConfigError([Problem("hyperparameters.char_embeddings", "the encoder has no character vocabulary")])
        if hp.char_embeddings == "lstm":
            parts.append(("chars", CharLSTMEmbedding(len(encoder.chars), hp.char_embedding_dim, hp.char_hidden_size)))
        else:
            parts.append(("chars", CharCNNEmbedding(len(encoder.chars), hp.char_embedding_dim, hp.char_hidden_size)))
    if hp.casing_embedding_dim > 0:
        parts.append(("casing", CasingEmbedding(hp.casing_embedding_dim)))
    if hp.transformer is not None:
        parts.append(("transformer", TransformerWordEmbedding(
            hp.transformer, fine_tune=hp.transformer_fine_tune, layers=hp.transformer_layers,
            layer_mean=hp.transformer_layer_mean, subtoken_pooling=hp.transformer_subtoken_pooling,
            files=transformer_files, open_store=open_store)))
    return StackedEmbeddings(parts, storage_mode=storage_mode)


def build_model(task_type: str, hp: Hyperparameters, encoder: TextEncoder, *,
                pretrained_weights: torch.Tensor | None = None, storage_mode: str = "none",
                transformer_files: dict[str, str] | None = None, open_store: StoreOpener | None = None) -> Model:
    """A fresh :class:`TextClassifier` or :class:`SequenceTagger` (initialised from torch's RNG:
    seed it first for a reproducible model; a transformer starts from its pretrained weights).
    ``transformer_files`` and ``open_store``: see :func:`build_embeddings`."""
    if task_type == "text_classification" and not hp.uses_token_embeddings:
        if encoder.ngrams is None:
            raise ConfigError([Problem("hyperparameters.document_encoder",
                                       "ngram needs an encoder built with n-gram features (encode_corpus does this)")])
        return TextClassifier(None, len(encoder.labels), hp, ngram_rows=encoder.ngram_rows)
    if task_type == "text_classification" and hp.document_encoder == "transformer":
        if hp.transformer is None:
            raise ConfigError([Problem("hyperparameters.document_encoder", "transformer needs a transformer")])
        document = TransformerDocumentEmbedding(
            hp.transformer, fine_tune=hp.transformer_fine_tune, layers=hp.transformer_layers,
            layer_mean=hp.transformer_layer_mean, cls_pooling=hp.transformer_cls_pooling, files=transformer_files,
            open_store=open_store)
        return TextClassifier(StackedEmbeddings([("transformer", document)], storage_mode=storage_mode),
                              len(encoder.labels), hp)
    embeddings = build_embeddings(hp, encoder, pretrained_weights=pretrained_weights, storage_mode=storage_mode,
                                  transformer_files=transformer_files, open_store=open_store)
    if task_type == "text_classification":
        return TextClassifier(embeddings, len(encoder.labels), hp, ngram_rows=encoder.ngram_rows or None)
    if task_type == "sequence_labeling":
        return SequenceTagger(embeddings, len(encoder.labels), hp)
    raise ConfigError([Problem("task.type", f"unknown task type {task_type!r}")])
