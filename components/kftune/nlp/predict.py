"""Prediction: raw sentences (or token lists) in, labels or tags with scores out.

Defined outputs for awkward input, so results always align one-to-one with the input:
- an empty sentence: classification label ``<unk>`` with score 0.0 and no scores; tagging: no tags;
- a sentence longer than the model's ``max_length``: classification reads the first ``max_length``
  tokens (a warning says how many were cut); tagging predicts it in windows of ``max_length``
  tokens, so every token gets a tag.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from kftune.nlp.data import UNK_LABEL, EncodedDataset, Example, TextEncoder, batch_order, iterate_batches
from kftune.nlp.model_io import LoadedModel
from kftune.nlp.models import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The prediction for one sentence.

    Classification: ``label``, its probability ``score`` and ``scores`` (every label's probability).
    Tagging: ``tags`` (one per token) and ``tag_scores`` (each tag's probability: CRF marginal or
    softmax). The other task's fields are ``None``.
    """

    tokens: tuple[str, ...]
    label: str | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    tags: tuple[str, ...] | None = None
    tag_scores: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": list(self.tokens)}
        if self.tags is None:
            out.update(label=self.label, score=self.score, scores=self.scores)
        else:
            out.update(tags=list(self.tags), tag_scores=list(self.tag_scores or ()))
        return out


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` (bf16) on ``device`` when ``dtype`` is given, else a no-op (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def predict_encoded(model: Model, encoder: TextEncoder, dataset: EncodedDataset, batch_size: int,
                    device: torch.device, autocast_dtype: torch.dtype | None = None,
                    cache: bool = False) -> list[Prediction]:
    """Predict every example of an encoded dataset, in dataset order (empty ones get the defined
    empty output). Puts the model in eval mode; the caller restores train mode."""
    model.eval()
    classification = encoder.task.is_classification
    out: list[Prediction | None] = [None] * len(dataset)
    order = batch_order(dataset, batch_size, shuffle=False)
    with torch.inference_mode(), autocast_context(device, autocast_dtype):
        for batch in iterate_batches(dataset, order, device, cache=cache):
            result = model.predict(batch)
            for row, i in enumerate(batch.indices):
                tokens = dataset.tokens[i]
                if classification:
                    dist = result.distributions[row].tolist() if result.distributions is not None else []
                    names = encoder.labels.itos
                    out[i] = Prediction(tokens=tokens, label=names[result.labels[row]], score=float(result.scores[row]),
                                        scores={names[j]: float(p) for j, p in enumerate(dist) if j > 0})
                else:
                    out[i] = Prediction(tokens=tokens, tags=tuple(encoder.labels.decode(result.labels[row])),
                                        tag_scores=tuple(float(s) for s in result.scores[row]))
    for i, pred in enumerate(out):
        if pred is None:  # empty sentence
            out[i] = (Prediction(tokens=(), label=UNK_LABEL, score=0.0, scores={}) if classification
                      else Prediction(tokens=(), tags=(), tag_scores=()))
    return out  # type: ignore[return-value]


def _windows(tokens: tuple[str, ...], size: int) -> Iterator[tuple[str, ...]]:
    for start in range(0, len(tokens), size):
        yield tokens[start:start + size]


def predict(model: LoadedModel, sentences: Sequence[str] | Sequence[Sequence[str]] | Sequence[Example],
            batch_size: int = 64, *,
            device: str | torch.device | None = None) -> list[Prediction]:
    """Predict raw sentences (``str``, tokenized by the model's own tokenizer, the one its training corpus
    was tokenized with; see :mod:`kftune.nlp.tokenizers`), token lists, or corpus :class:`Example` s
    (their tokens as they are, and their raw ``text`` for the features that read it: the n-gram bag's
    character n-grams), one :class:`Prediction` per input, in input order."""
    dev = torch.device(device) if device is not None else model.device
    if dev != model.device:
        model.model.to(dev)
        model.device = dev
    enc = model.encoder
    given = [s if isinstance(s, Example) else None for s in sentences]
    texts = [g.text if g is not None else s if isinstance(s, str) else None for g, s in zip(given, sentences)]
    raw = iter(enc.tokenize_many(t for t, g in zip(texts, given) if t is not None and g is None))
    token_lists = [tuple(g.tokens) if g is not None else tuple(next(raw)) if t is not None
                   else tuple(str(x) for x in s) for g, t, s in zip(given, texts, sentences)]
    classification = enc.task.is_classification
    if classification:
        examples = [Example(tokens=t, text=texts[i]) for i, t in enumerate(token_lists)]
        owners = list(range(len(token_lists)))
    else:
        examples, owners = [], []
        long_count = 0
        for i, toks in enumerate(token_lists):
            if len(toks) > enc.max_length:
                long_count += 1
            for window in (_windows(toks, enc.max_length) if toks else [()]):
                examples.append(Example(tokens=window, text=texts[i]))
                owners.append(i)
        if long_count:
            log.warning("%d sentence(s) longer than max_length=%d were tagged in windows of %d tokens",
                        long_count, enc.max_length, enc.max_length)
    dataset = enc.encode(examples, "predict", with_labels=False)
    preds = predict_encoded(model.model, enc, dataset, batch_size, dev)
    if classification:
        return [dataclasses.replace(p, tokens=token_lists[i]) for i, p in enumerate(preds)]
    # stitch the windows back together (owners ascend, so appending keeps token order)
    tags: list[list[str]] = [[] for _ in token_lists]
    scores: list[list[float]] = [[] for _ in token_lists]
    for p, o in zip(preds, owners):
        tags[o] += list(p.tags or ())
        scores[o] += list(p.tag_scores or ())
    return [Prediction(tokens=toks, tags=tuple(tags[i]), tag_scores=tuple(scores[i]))
            for i, toks in enumerate(token_lists)]


# ------------------------------------------------------------------------------------------------
# Records: the JSON that `kftune predict` writes and `kftune serve` answers (one shape for both)


@dataclass(frozen=True)
class Span:
    """An entity span of a tagged sentence: its type and token positions (``end`` exclusive)."""

    type: str
    start: int
    end: int


def tag_spans(tags: Sequence[str], scheme: str | None = "BIO") -> list[Span]:
    """The spans that BIO / BIOES tags mark, as conlleval reads them: an ``I-`` (or ``E-``) that does not
    continue a span of its type starts one, ``S-`` is a one-token span, ``O`` (or any tag without a
    ``B-/I-/E-/S-`` prefix when a scheme is given) ends the current one. ``scheme=None`` (POS-like tags):
    no spans."""
    if scheme is None:
        return []
    spans: list[Span] = []
    kind: str | None = None
    start = 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, name = tag.partition("-")
        if not name or prefix not in ("B", "I", "E", "S"):
            prefix, name = "O", ""
        if kind is not None and (prefix in ("B", "S", "O") or name != kind):
            spans.append(Span(kind, start, i))
            kind = None
        if prefix == "S":
            spans.append(Span(name, i, i + 1))
        elif prefix in ("B", "I", "E") and kind is None:
            kind, start = name, i
        if prefix == "E" and kind is not None:
            spans.append(Span(kind, start, i + 1))
            kind = None
    return spans


def prediction_record(pred: Prediction, *, top_k: int | None = None, raw_labels: Mapping[str, str] | None = None,
                      tag_scheme: str | None = None) -> dict[str, Any]:
    """One prediction as JSON.

    Classification: ``label`` (the name the model predicts: the spec's ``labelMap`` name, e.g. ``부정``),
    ``raw_label`` (the label as the corpus files write it, e.g. ``"0"``; the same as ``label`` without a
    label map), ``score`` (its probability) and ``probabilities`` (the ``top_k`` most probable labels, all
    when ``None``, most probable first). An empty text gives ``label: null, score: 0.0``.

    Tagging: ``tokens``, ``tags``, ``tag_scores`` and ``spans`` (``type``, token ``start``/``end``
    (exclusive), ``text`` (the tokens joined by spaces) and ``score`` (the mean of its tokens' tag scores)).
    """
    if pred.tags is None:
        if pred.label == UNK_LABEL and not pred.scores:
            return {"label": None, "raw_label": None, "score": 0.0, "probabilities": {}}
        ranked = sorted((pred.scores or {}).items(), key=lambda kv: (-kv[1], kv[0]))
        if top_k is not None:
            ranked = ranked[:top_k]
        label = str(pred.label)
        return {"label": label, "raw_label": (raw_labels or {}).get(label, label), "score": pred.score,
                "probabilities": dict(ranked)}
    scores = list(pred.tag_scores or ())
    spans = [{"type": s.type, "start": s.start, "end": s.end, "text": " ".join(pred.tokens[s.start:s.end]),
              "score": sum(scores[s.start:s.end]) / (s.end - s.start) if scores else None}
             for s in tag_spans(pred.tags, tag_scheme)]
    return {"tokens": list(pred.tokens), "tags": list(pred.tags), "tag_scores": scores, "spans": spans}


def predict_records(model: LoadedModel, texts: Sequence[str], *, batch_size: int = 64,
                    top_k: int | None = None) -> list[dict[str, Any]]:
    """:func:`predict` on raw texts, as :func:`prediction_record` s (what the CLI writes and the server answers)."""
    preds = predict(model, list(texts), batch_size=batch_size)
    raw, scheme = model.raw_labels, model.task.tag_scheme
    return [prediction_record(p, top_k=top_k, raw_labels=raw, tag_scheme=scheme) for p in preds]
