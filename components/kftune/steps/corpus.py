"""``kftune corpus``: download, verify, split and downsample a corpus into JSONL splits and a card.

A corpus is a registered name (``--name TREC_6``; see :mod:`kftune.core.corpus_registry`) or a URI
with a format (``--uri https://.../train.csv --format csv --text-column text --label-column label``).
Where the splits of a URI corpus are (``--train``/``--dev``/``--test``, as in the spec's ``corpus``):

- ``uri`` is a zip/tar archive (by its extension): ``train``/``dev``/``test`` are member paths inside
  it; the train member may also be written ``uri#member``.
- otherwise, with ``train`` given: ``uri`` is a directory (a local directory or a base URL) and the
  split values are paths relative to it.
- otherwise ``uri`` is the train file, and relative ``dev``/``test`` paths sit next to it.
- A split value with a scheme (``https://...``, ``s3://...``) or an absolute path is a URI of its own.

Output (the shared corpus format): ``train.jsonl``, ``dev.jsonl``, ``test.jsonl``, ``corpus.json``
and ``card.md`` in ``--out`` (a local directory, or an artifact-store URI such as ``s3://bucket/key``).

How the splits are made (all seeded; the same input and seed give byte-identical output):

1. The files are fetched and verified (:mod:`kftune.io.download`).
2. Pass 1 streams every split once and keeps only a stratification key per example: the label for
   classification; for sequence labelling with BIO/BIOES tags, the sentence's rarest entity type
   (``"O"`` for none, see :func:`kftune.core.sampling.tagging_strata`); no stratification for plain
   tags such as POS. Classification examples with no tokens are dropped (and counted in the card).
3. A missing test split is carved from train (``test_fraction``), then a missing dev split from
   the rest of train (``dev_fraction``), both stratified.
4. Downsampling (``downsample``) keeps that fraction of train and of dev, stratified, with counts
   rounded half up per split (``kftune.core.sampling.target_count``). Test stays whole unless
   ``downsample_test`` is set, so scores stay comparable across downsampled runs.
   E.g. TREC_6 (5,452 train / 500 test), dev 0.1, downsample 0.1: dev carved = 545, train = 4,907;
   after downsampling train 491, dev 55, test 500.
5. Tokenization (``--tokenizer``, the spec's ``corpus.tokenizer``; see :mod:`kftune.core.tokenization`):
   without one, a registered corpus' default (NSMC: ``morpheme``), else ``regex`` for raw text (csv, tsv,
   fasttext) and ``whitespace`` for pre-tokenized formats (trec, conll, conllu), whose tokens are kept as
   they are. A ``subword`` tokenizer is trained here, on the texts of the output train split only (after
   carving and downsampling), in one more streaming pass over the train file.
6. Pass 2 streams the files again and writes the selected examples in file order, their ``tokens`` made
   by the tokenizer from ``text`` (streamed through it; kiwi reads a few dozen sentences ahead on its
   worker threads), validating BIO/BIOES tags against the scheme detected over all splits. A
   classification example the tokenizer leaves without tokens is dropped and counted with the empty ones.
   ``corpus.json`` records the tokenizer (``tokenizer``: its ``to_dict()``, which recreates it) and
   ``card.md`` names it; the log reports the pass's throughput in sentences per second.

Several corpora (``corpora``, the spec's ``corpus.corpora``; Flair's MultiCorpus, see
:mod:`kftune.core.multicorpus`): each is prepared as above on its own (its own files, split, downsampling
and stratification, with the shared ``downsample``, ``dev_fraction``, ``test_fraction``, ``seed`` and
tokenizer), then the output holds their union: ``train.jsonl`` etc. list the corpora's examples in the
order the corpora are given, each with a ``corpus`` field (its id); ``corpus.json`` has the joint label
set and tokenizer plus one ``corpora`` entry per corpus (its own ``corpus.json`` fields), and ``card.md``
a summary followed by each corpus' card. A ``subword`` tokenizer is trained on the joint train split.
Their tasks and tag schemes must agree (checked before any download where they are known, and again once
the tags are read): otherwise a :class:`ConfigError` names both corpora.

Memory: the step holds one example at a time (plus the few the tokenizer reads ahead) and one small key
per example; on UD_ENGLISH (17.8 MB of CoNLL-U) the whole process peaks at about 40 MB RSS
(``benchmarks/corpus_memory.py``). Full NSMC with ``morpheme`` peaks at about 0.6 GB, most of it kiwi's
model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from kftune._progress import Progress
from kftune._version import __version__
from kftune.core.corpus_registry import (CONLLU_COLUMNS, FORMATS, SPLITS, TASK_OF_FORMAT, CorpusEntry,
                                         get_corpus, is_sha256)
from kftune.core.errors import ConfigError, DataError, Problem
from kftune.core.limits import MAX_CORPORA
from kftune.core.multicorpus import ID_PATTERN, Source, default_id, joint_problems, scheme_problem
from kftune.core.tokenization import TokenizerChoice, check_tokenizer, default_tokenizer, parse_tokenizer
from kftune.steps._common import CheckedConfig, add_common_arguments, run_main

log = logging.getLogger(__name__)

OUTPUT_FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "corpus.json", "card.md")
TAG_SCHEMES = ("auto", "BIO", "BIOES", "none")
#: The fields of one entry of ``corpora``: an ``id`` and the source fields of :class:`CorpusConfig`.
ENTRY_FIELDS = ("id", "name", "uri", "train", "dev", "test", "format", "sha256", "dev_sha256", "test_sha256",
                "text_columns", "label_column", "label_map", "label_prefix", "token_column", "delimiter", "header",
                "quoting", "encoding", "tag_scheme", "allow_unverified")
#: The fields that several corpora share (set on the config, not on an entry).
SHARED_FIELDS = ("label_type", "tokenizer", "downsample", "downsample_test", "dev_fraction", "test_fraction", "seed")


# --------------------------------------------------------------------------- config and result
@dataclass(frozen=True)
class CorpusConfig(CheckedConfig):
    """What to prepare. Give ``name`` (a registered corpus) or ``uri`` + ``format``, never both.

    Reader options (``text_columns``, ``label_column``, ``token_column``, ``delimiter``, ``header``,
    ``quoting``, ``encoding``) apply to URI corpora; of them only ``label_column`` applies to a named
    corpus, and only where the registry lists choices (UD_ENGLISH: ``upos``, ``xpos``, ``deprel``...).
    ``label_map`` (raw label -> label; csv/tsv) applies to both: for a named csv/tsv corpus it replaces the
    registry's map (NSMC ``{"0": "부정", "1": "긍정"}``), names every raw label and nothing else.
    ``label_column`` means, per format: csv/tsv the label column (name or 0-based number); trec
    ``coarse`` or ``fine``; conll the tag column number (default the last); conllu the column name.
    ``tokenizer``: a tokenizer name (``morpheme``) or the spec's mapping (``{"type": "subword",
    "vocabSize": 8000}``); ``None`` takes the registered corpus' default, else the format's.

    ``corpora``: several corpora trained as one, each a mapping of :data:`ENTRY_FIELDS` (``{"id": "ud",
    "name": "UD_ENGLISH"}``, ``{"uri": ..., "format": "conll", ...}``); the config's own source fields then
    stay unset and only :data:`SHARED_FIELDS` (and ``allow_unverified``, for every entry) apply to all.
    """

    out: str
    name: str | None = None
    uri: str | None = None
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    format: str | None = None
    sha256: str | None = None
    dev_sha256: str | None = None
    test_sha256: str | None = None
    text_columns: tuple[str, ...] = ()
    label_column: str | None = None
    label_map: Mapping[str, str] | None = None
    label_prefix: str | None = None
    token_column: int | None = None
    delimiter: str | None = None
    header: bool | None = None
    quoting: str | None = None
    encoding: str | None = None
    label_type: str | None = None
    tag_scheme: str = "auto"
    tokenizer: str | Mapping[str, Any] | None = None
    downsample: float = 1.0
    downsample_test: bool = False
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 1
    allow_unverified: bool = False
    corpora: tuple[Mapping[str, Any], ...] = ()

    def problems(self) -> list[Problem]:
        """Every problem with this config (empty when it is usable)."""
        if self.corpora:
            return _multi_problems(self)
        p: list[Problem] = []
        if not self.out or not str(self.out).strip():
            p.append(Problem("corpus.out", "give an output directory or store URI"))
        if self.name and self.uri:
            p.append(Problem("corpus.name", "give a corpus name (--name) or a URI with a format (--uri, --format), not both"))
        elif not self.name and not self.uri:
            p.append(Problem("corpus.name", "give a corpus name (--name) or a URI with a format (--uri, --format)"))
        if self.name:
            try:
                entry = get_corpus(self.name)
            except ConfigError as exc:
                p.extend(exc.problems)
            else:
                p.extend(_named_problems(self, entry))
        if self.uri:
            p.extend(_uri_problems(self))
        p.extend(_tokenizer_problems(self))
        for fname in ("sha256", "dev_sha256", "test_sha256"):
            value = getattr(self, fname)
            if value is not None and not is_sha256(value.lower()):
                p.append(Problem(f"corpus.{fname}", f"{value!r} is not a sha256 (64 hex digits)"))
        if self.tag_scheme not in TAG_SCHEMES:
            p.append(Problem("corpus.tag_scheme", f"{self.tag_scheme!r} is not one of {', '.join(TAG_SCHEMES)}"))
        if not _is_number(self.downsample) or not 0.0 < self.downsample <= 1.0:
            p.append(Problem("corpus.downsample", f"{self.downsample!r} must be a fraction in (0, 1], e.g. 0.1"))
        if not _is_number(self.dev_fraction) or not 0.0 <= self.dev_fraction < 1.0:
            p.append(Problem("corpus.dev_fraction", f"{self.dev_fraction!r} must be in [0, 1), e.g. 0.1"))
        if not _is_number(self.test_fraction) or not 0.0 < self.test_fraction < 1.0:
            p.append(Problem("corpus.test_fraction", f"{self.test_fraction!r} must be in (0, 1), e.g. 0.1"))
        elif _is_number(self.dev_fraction) and self.dev_fraction + self.test_fraction >= 1.0:
            p.append(Problem("corpus.test_fraction", "dev_fraction + test_fraction must stay below 1"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            p.append(Problem("corpus.seed", f"{self.seed!r} must be a non-negative integer"))
        out = str(self.out or "")
        if out and ("://" not in out or out.startswith("file://")):
            local = Path(out.removeprefix("file://")).expanduser()
            if local.exists() and not local.is_dir():
                p.append(Problem("corpus.out", f"{out!r} exists and is not a directory"))
            elif local.is_dir() and any(local.iterdir()) and not (local / "corpus.json").is_file():
                p.append(Problem("corpus.out", f"{out!r} is a non-empty directory that holds no corpus (no corpus.json); "
                                               "choose a new or empty directory"))
        return p

    @classmethod
    def from_settings(cls, settings: str | Mapping[str, Any], *, out: str) -> "CorpusConfig":
        """The config for ``settings`` (:func:`settings_from_spec`'s dict, or it as JSON: what the pipeline's
        resolve-spec task hands to prepare-corpus) writing to ``out``."""
        values = dict(json.loads(settings) if isinstance(settings, str) else settings)
        values["text_columns"] = tuple(values.get("text_columns") or ())
        return cls(out=out, **values)


def _entry_id(entry: Mapping[str, Any]) -> str:
    return str(entry.get("id") or default_id(entry.get("name"), entry.get("uri")))


def _entry_config(cfg: CorpusConfig, entry: Mapping[str, Any], out: str, tokenizer: Any) -> CorpusConfig:
    """The config that prepares one entry of ``cfg.corpora`` alone (into ``out``, with ``tokenizer``)."""
    fields = {k: v for k, v in entry.items() if k in ENTRY_FIELDS and k != "id"}
    fields["text_columns"] = tuple(fields.get("text_columns") or ())
    fields["tag_scheme"] = fields.get("tag_scheme") or "auto"
    fields["allow_unverified"] = bool(fields.get("allow_unverified")) or cfg.allow_unverified
    return CorpusConfig(out=out, **fields, label_type=cfg.label_type, tokenizer=tokenizer, downsample=cfg.downsample,
                        downsample_test=cfg.downsample_test, dev_fraction=cfg.dev_fraction,
                        test_fraction=cfg.test_fraction, seed=cfg.seed)


def _is_subword(tokenizer: Any) -> bool:
    choice, problems = parse_tokenizer(tokenizer, "corpus.tokenizer")
    return not problems and choice is not None and choice.type == "subword"


def _entry_source(entry: Mapping[str, Any]) -> Source:
    """What :func:`kftune.core.multicorpus.joint_problems` needs of one entry (before any download)."""
    registered = None
    if entry.get("name"):
        try:
            registered = get_corpus(str(entry["name"]))
        except ConfigError:
            registered = None
    fmt = registered.format if registered is not None else entry.get("format")
    task = TASK_OF_FORMAT.get(fmt) if isinstance(fmt, str) else None
    scheme, key = (registered.tag_scheme, None) if registered is not None else (None, None)
    if registered is None and entry.get("tag_scheme") in ("BIO", "BIOES", "none"):
        scheme, key = entry["tag_scheme"], "tag_scheme"
    tokenizer = (registered.tokenizer if registered is not None else None) or \
        (default_tokenizer(fmt) if isinstance(fmt, str) and fmt in FORMATS else None)
    return Source(id=_entry_id(entry), task=task, tag_scheme=scheme, tokenizer=tokenizer, scheme_key=key)


def _multi_problems(cfg: CorpusConfig) -> list[Problem]:
    """The problems of a config with ``corpora``: its own fields, each entry's (as a corpus of its own, under
    ``corpus.corpora[i]``) and the entries' together (one task, one kind of tags, one tokenizer, distinct ids)."""
    p: list[Problem] = []
    seen: set[tuple[str, str]] = set()

    def add(problem: Problem) -> None:
        if (problem.path, problem.message) not in seen:
            seen.add((problem.path, problem.message))
            p.append(problem)

    unset = {"name": None, "uri": None, "train": None, "dev": None, "test": None, "format": None, "sha256": None,
             "dev_sha256": None, "test_sha256": None, "text_columns": (), "label_column": None, "label_map": None,
             "label_prefix": None, "token_column": None, "delimiter": None, "header": None, "quoting": None,
             "encoding": None, "tag_scheme": "auto"}
    for fname, default in unset.items():
        if getattr(cfg, fname) not in (default, None):
            add(Problem(f"corpus.{fname}", "with corpora, set it on each entry of corpora (it belongs to one corpus)"))
    entries = list(cfg.corpora)
    if not 2 <= len(entries) <= MAX_CORPORA:
        add(Problem("corpus.corpora", f"holds {len(entries)} corpora; give 2 to {MAX_CORPORA} (one corpus: use its "
                                      "own fields instead of corpora)"))
    sources: list[Source | None] = []
    subword = _is_subword(cfg.tokenizer)
    for i, entry in enumerate(entries):
        where = f"corpus.corpora[{i}]"
        if not isinstance(entry, Mapping):
            add(Problem(where, f"{entry!r} is not a mapping of corpus fields ({', '.join(ENTRY_FIELDS)})"))
            sources.append(None)
            continue
        bad = False
        for key in entry:
            if key in SHARED_FIELDS:
                add(Problem(f"{where}.{key}", "set it once for all corpora, not per corpus"))
                bad = True
            elif key not in ENTRY_FIELDS:
                add(Problem(f"{where}.{key}", f"unknown field (fields of an entry: {', '.join(ENTRY_FIELDS)})"))
                bad = True
        if entry.get("id") is not None and not (isinstance(entry["id"], str) and ID_PATTERN.match(entry["id"])):
            add(Problem(f"{where}.id", f"{entry['id']!r} is not an id of letters, digits, _, . and - (at most 64)"))
        if bad:
            sources.append(None)
            continue
        sub = _entry_config(cfg, entry, cfg.out, None if subword else cfg.tokenizer)
        for problem in sub.problems():
            field_name = problem.path.removeprefix("corpus.")
            if field_name == "tokenizer":
                continue  # checked below against every corpus
            add(Problem(f"{where}.{field_name}", problem.message) if field_name in ENTRY_FIELDS else problem)
        sources.append(_entry_source(entry))
    if any(source is None for source in sources):
        return p  # the entries' own problems first: the joint checks need every entry readable
    p.extend(joint_problems(sources, "corpus.corpora", tokenizer_path="corpus.tokenizer",
                            tokenizer_given=cfg.tokenizer is not None))
    for entry, source in zip(entries, sources):
        if entry.get("name"):
            try:
                registered = get_corpus(str(entry["name"]))
                fmt, default = registered.format, registered.tokenizer
            except ConfigError:
                continue
        else:
            fmt, default = entry.get("format"), None
        if fmt not in FORMATS:
            continue
        for problem in check_tokenizer(cfg.tokenizer, "corpus.tokenizer", fmt=fmt, registry_default=default,
                                       corpus=source.id)[1]:
            add(problem)
    return p


def _effective_tokenizer(cfg: CorpusConfig) -> tuple[TokenizerChoice | None, list[Problem]]:
    """The tokenizer the corpus gets (the config's, the registry's default, the format's) and its problems:
    an unknown name or option, a tagged format with anything but whitespace, a package that is missing."""
    fmt, default, name = None, None, None
    if cfg.name and not cfg.uri:
        try:
            entry = get_corpus(cfg.name)
        except ConfigError:
            entry = None
        if entry is not None:
            fmt, default, name = entry.format, entry.tokenizer, entry.name
    elif cfg.uri and cfg.format in FORMATS:
        fmt = cfg.format
    return check_tokenizer(cfg.tokenizer, "corpus.tokenizer", fmt=fmt, registry_default=default, corpus=name)


def _tokenizer_problems(cfg: CorpusConfig) -> list[Problem]:
    return _effective_tokenizer(cfg)[1]


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _named_problems(cfg: CorpusConfig, entry: CorpusEntry) -> list[Problem]:
    p = []
    uri_only = {"train": cfg.train, "dev": cfg.dev, "test": cfg.test, "format": cfg.format, "sha256": cfg.sha256,
                "dev_sha256": cfg.dev_sha256, "test_sha256": cfg.test_sha256, "text_columns": cfg.text_columns,
                "token_column": cfg.token_column, "delimiter": cfg.delimiter, "header": cfg.header,
                "quoting": cfg.quoting, "encoding": cfg.encoding, "label_prefix": cfg.label_prefix}
    for fname, value in uri_only.items():
        if value not in (None, ()):
            p.append(Problem(f"corpus.{fname}", f"applies to URI corpora only; {entry.name} is a registered corpus"))
    if cfg.label_column is not None:
        if not entry.label_columns:
            hint = " (TREC_50 has the fine labels)" if entry.name == "TREC_6" else ""
            p.append(Problem("corpus.label_column", f"{entry.name} has a fixed label column{hint}"))
        elif str(cfg.label_column).lower() not in entry.label_columns:
            p.append(Problem("corpus.label_column", f"{cfg.label_column!r} is not one of {', '.join(entry.label_columns)}"))
    if cfg.label_map is not None:  # replaces the registry's map of raw label to label (csv/tsv corpora)
        if not isinstance(cfg.label_map, Mapping) or not cfg.label_map:
            p.append(Problem("corpus.label_map", f"{cfg.label_map!r} is not a non-empty mapping of raw label to label"))
        else:
            p.extend(entry.label_map_problems(cfg.label_map, "corpus.label_map"))
    return p


def _uri_problems(cfg: CorpusConfig) -> list[Problem]:
    p = []
    if cfg.format not in FORMATS:
        p.append(Problem("corpus.format", f"{cfg.format!r} is not one of {', '.join(FORMATS)} (required with --uri)"))
        return p
    fmt = cfg.format
    if cfg.text_columns and fmt not in ("csv", "tsv"):
        p.append(Problem("corpus.text_columns", f"applies to csv/tsv, not {fmt}"))
    if cfg.token_column is not None and fmt != "conll":
        p.append(Problem("corpus.token_column", f"applies to conll, not {fmt}"))
    if (cfg.delimiter is not None or cfg.header is not None or cfg.quoting is not None) and fmt not in ("csv", "tsv"):
        p.append(Problem("corpus.delimiter", f"delimiter/header/quoting apply to csv/tsv, not {fmt}"))
    if cfg.quoting is not None and cfg.quoting not in ("minimal", "none"):
        p.append(Problem("corpus.quoting", f"{cfg.quoting!r} is not 'minimal' or 'none'"))
    if cfg.delimiter is not None and len(_delimiter(cfg.delimiter)) != 1:
        p.append(Problem("corpus.delimiter", f"{cfg.delimiter!r} must be one character (or 'tab')"))
    lc = None if cfg.label_column is None else str(cfg.label_column)
    if lc is not None:
        if fmt == "trec" and lc not in ("coarse", "fine"):
            p.append(Problem("corpus.label_column", f"for trec, {lc!r} must be 'coarse' or 'fine'"))
        elif fmt == "conll" and not lc.lstrip("-").isdigit():
            p.append(Problem("corpus.label_column", f"for conll, {lc!r} must be a column number (e.g. 1, or -1 for the last)"))
        elif fmt == "conllu" and lc.lower() not in CONLLU_COLUMNS:
            p.append(Problem("corpus.label_column", f"{lc!r} is not a CoNLL-U column ({', '.join(CONLLU_COLUMNS)})"))
        elif fmt == "fasttext":
            p.append(Problem("corpus.label_column", "fasttext lines carry their label (__label__X); there is no column"))
    if cfg.label_map is not None and fmt not in ("csv", "tsv"):
        p.append(Problem("corpus.label_map", f"applies to csv/tsv, not {fmt}"))
    if cfg.label_prefix is not None and fmt != "fasttext":
        p.append(Problem("corpus.label_prefix", f"applies to fasttext, not {fmt}"))
    if cfg.label_prefix == "":
        p.append(Problem("corpus.label_prefix", "must not be empty (the default is __label__)"))
    base = (cfg.uri or "").partition("#")[0]
    if "#" in (cfg.uri or "") and not _is_archive(base):
        p.append(Problem("corpus.uri", f"{cfg.uri!r}: '#member' is only for zip/tar archives"))
    if "#" in (cfg.uri or "") and cfg.train:
        p.append(Problem("corpus.train", "give the train member either as uri#member or as train, not both"))
    for fname in ("uri", "train", "dev", "test"):
        value = getattr(cfg, fname)
        if value and "://" in value and not value.startswith(("http://", "https://", "s3://", "file://")):
            p.append(Problem(f"corpus.{fname}", f"{value!r}: use http(s)://, s3://, file:// or a local path"))
    return p


def _delimiter(text: str) -> str:
    return {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}.get(text.lower(), text)


@dataclass(frozen=True)
class SplitStats:
    examples: int
    tokens: int
    sha256: str


@dataclass(frozen=True)
class CorpusResult:
    """What ``run`` wrote: the output URI, the corpus metadata and the per-split counts. ``tokenization``:
    the tokenizer, the sentences written and the throughput of the tokenizing pass (not in corpus.json,
    which stays byte-identical across runs)."""

    out: str
    name: str
    task: str
    label_type: str
    labels: tuple[str, ...]
    tag_scheme: str | None
    splits: Mapping[str, SplitStats]
    metadata: Mapping[str, Any] = field(repr=False, default_factory=dict)
    tokenization: Mapping[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """``<split>_examples`` and ``<split>_tokens`` per split, and ``labels``: what a KFP ``Metrics``
        output shows."""
        out: dict[str, float] = {}
        for split, stats in self.splits.items():
            out[f"{split}_examples"] = stats.examples
            out[f"{split}_tokens"] = stats.tokens
        out["labels"] = len(self.labels)
        return out

    @property
    def summary(self) -> dict[str, Any]:
        """Name, task, label type and label count: the metadata of the pipeline's corpus artifact."""
        return {"name": self.name, "task": self.task, "label_type": self.label_type, "labels": len(self.labels)}


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _SplitFile:
    url: str
    sha256: str | None
    mirror_path: str | None
    member: str | None
    checksum_origin: str  # "registry", "given" or "trust-on-first-use"


@dataclass(frozen=True)
class _Plan:
    name: str
    task: str
    label_type: str
    format: str
    reader_options: Mapping[str, Any]
    splits: Mapping[str, _SplitFile]  # only the splits the corpus has
    info: Mapping[str, Any]
    tokenizer: TokenizerChoice | None = None  # None only where the config is invalid

    @property
    def retokenize(self) -> bool:
        """Whether the tokens are made from the text (else the reader's own tokens are the tokenizer's)."""
        return self.tokenizer is not None and self.tokenizer.to_spec() != default_tokenizer(self.format)


def _plan(cfg: CorpusConfig) -> _Plan:
    if cfg.name:
        entry = get_corpus(cfg.name)
        options = dict(entry.options)
        if cfg.label_map is not None:  # the config's names for the raw labels replace the registry's
            options["label_map"] = {str(k): str(v) for k, v in sorted(cfg.label_map.items())}
        label_type = entry.label_type
        if entry.label_columns:
            column = str(cfg.label_column or entry.default_label_column or "").lower()
            options["column"] = column
            label_type = column
        splits = {}
        for split, src in entry.splits.items():
            f = entry.file(src.file)
            splits[split] = _SplitFile(f.url, f.sha256, f.mirror_path, src.member, "registry")
        info = {"corpus": entry.name, "description": entry.description, "license": entry.license,
                "homepage": entry.homepage, "citation": entry.citation}
        return _Plan(entry.name, entry.task, cfg.label_type or label_type, entry.format, options, splits, info,
                     _effective_tokenizer(cfg)[0])
    fmt = cfg.format or ""
    splits = {}
    shas = {"train": cfg.sha256, "dev": cfg.dev_sha256, "test": cfg.test_sha256}
    base = (cfg.uri or "").partition("#")[0]
    for split, (url, member) in _split_locations(cfg).items():
        sha = cfg.sha256 if url == base else shas[split]  # the uri's own checksum covers its members
        splits[split] = _SplitFile(url, sha.lower() if sha else None, None, member,
                                   "given" if sha else "trust-on-first-use")
    options: dict[str, Any] = {}
    if fmt in ("csv", "tsv"):
        options = {"delimiter": _delimiter(cfg.delimiter) if cfg.delimiter else ("," if fmt == "csv" else "\t"),
                   "header": True if cfg.header is None else cfg.header,
                   "text_columns": tuple(str(c) for c in cfg.text_columns) or ("text",),
                   "label_column": str(cfg.label_column or "label"),
                   "quoting": cfg.quoting or ("minimal" if fmt == "csv" else "none")}
        if cfg.label_map is not None:
            options["label_map"] = {str(k): str(v) for k, v in sorted(cfg.label_map.items())}
    elif fmt == "fasttext":
        options = {"label_prefix": cfg.label_prefix} if cfg.label_prefix else {}
    elif fmt == "trec":
        options = {"level": str(cfg.label_column or "coarse")}
    elif fmt == "conll":
        options = {"token_column": cfg.token_column or 0,
                   "tag_column": -1 if cfg.label_column is None else int(cfg.label_column)}
    elif fmt == "conllu":
        options = {"column": str(cfg.label_column or "upos").lower()}
    if cfg.encoding:
        options["encoding"] = cfg.encoding
    stem = Path(urllib.parse.urlsplit(cfg.uri or "").path).name.split(".")[0] or "corpus"
    default_type = {"conllu": options.get("column"), "conll": "tags"}.get(fmt, "label")
    info = {"corpus": cfg.uri, "description": f"{fmt} corpus given by URI", "license": "unknown (given by URI)",
            "homepage": None, "citation": None}
    return _Plan(stem, TASK_OF_FORMAT[fmt], cfg.label_type or default_type or "label", fmt, options, splits, info,
                 _effective_tokenizer(cfg)[0])


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _is_archive(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).path.lower().endswith(ARCHIVE_SUFFIXES) if "://" in uri else \
        uri.lower().endswith(ARCHIVE_SUFFIXES)


def _is_own_uri(value: str) -> bool:
    return "://" in value or value.startswith("/")


def _split_locations(cfg: CorpusConfig) -> dict[str, tuple[str, str | None]]:
    """``{split: (url, archive member or None)}`` for a URI corpus (rules in the module docstring)."""
    base, _, fragment = (cfg.uri or "").partition("#")
    archive = _is_archive(base)
    out: dict[str, tuple[str, str | None]] = {}
    for split in SPLITS:
        value = getattr(cfg, split)
        if value is None:
            continue
        if _is_own_uri(value):
            url, _, member = value.partition("#")
            out[split] = (url, member or None)
        elif archive:
            out[split] = (base, value)
        elif cfg.train is not None:  # uri is a directory or base URL
            out[split] = (base.rstrip("/") + "/" + value, None)
        else:  # next to the train file
            out[split] = (_sibling(base, value), None)
    if "train" not in out:
        out["train"] = (base, fragment or None)
    return out


def _sibling(file_uri: str, name: str) -> str:
    if "://" in file_uri:
        return urllib.parse.urljoin(file_uri, name)
    return str(Path(file_uri).expanduser().parent / name)


def _reader(plan: _Plan, path: Path, scheme: str | None) -> Iterator[Any]:
    from kftune.nlp import corpora

    o = dict(plan.reader_options)
    if plan.format == "fasttext":
        return corpora.read_fasttext(path, **o)
    if plan.format in ("csv", "tsv"):
        return corpora.read_delimited(path, **o)
    if plan.format == "trec":
        return corpora.read_trec(path, **o)
    if plan.format == "conll":
        return corpora.read_conll(path, scheme=scheme, **o)  # type: ignore[arg-type]
    return corpora.read_conllu(path, **o)


# --------------------------------------------------------------------------- passes
@dataclass
class _Scan:
    """Pass 1 over one source split: one key per usable example, nothing else per example."""

    valid: array = field(default_factory=lambda: array("q"))  # indices of usable examples in the file
    keys: list = field(default_factory=list)  # label (classification) or entity-type set (tagging)
    labels: Counter = field(default_factory=Counter)  # label or tag counts over the usable examples
    empty: int = 0
    total: int = 0


def _scan(plan: _Plan, path: Path, split: str, scheme: str | None) -> _Scan:
    from kftune.nlp.corpora import entity_types

    s = _Scan()
    intern: dict = {}
    with Progress(None, f"scan {split}", unit="ex") as bar:
        for i, ex in enumerate(_reader(plan, path, scheme)):
            s.total += 1
            bar.update(1)
            if plan.task == "text_classification":
                if not ex.tokens:
                    s.empty += 1
                    continue
                key = intern.setdefault(ex.label, ex.label)
                s.labels[key] += 1
            else:
                types = entity_types(ex.tags)
                key = intern.setdefault(types, types)
                s.labels.update(ex.tags)
            s.valid.append(i)
            s.keys.append(key)
    return s


def _select(plan: _Plan, scans: dict[str, _Scan], cfg: CorpusConfig, tag_scheme: str | None
            ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Which source examples go to which output split: ``{source: {output: sorted file indices}}``."""
    import numpy as np

    from kftune.core import sampling

    def strat(keys: Sequence[Any]) -> list[Any]:
        if plan.task == "text_classification":
            return list(keys)
        if tag_scheme is None:
            return [None] * len(keys)
        return sampling.tagging_strata(keys)

    origin = {"train": "official", "dev": "official", "test": "official"}
    train = scans["train"]
    pos = np.arange(len(train.valid), dtype=np.int64)  # positions into train.valid/keys
    carved: dict[str, Any] = {}
    for split, fraction, stream in (("test", cfg.test_fraction, sampling.STREAM_TEST),
                                    ("dev", cfg.dev_fraction, sampling.STREAM_DEV)):
        if split in scans:
            continue
        keys = strat([train.keys[i] for i in pos])
        kept, taken = sampling.split_indices(keys, fraction, cfg.seed, stream=stream)
        carved[split], pos = pos[taken], pos[kept]
        origin[split] = f"carved from train ({fraction:g}, stratified, seed {cfg.seed})"
    members = {"train": pos, **carved}  # positions into train's valid list
    out: dict[str, dict[str, Any]] = {"train": {}}
    valid_train = np.array(train.valid, dtype=np.int64)
    for split, positions in members.items():
        positions = _downsample(split, positions, [train.keys[i] for i in positions], strat, cfg)
        out["train"][split] = np.sort(valid_train[positions])
    for split in ("dev", "test"):
        if split in scans:
            s = scans[split]
            positions = np.arange(len(s.valid), dtype=np.int64)
            positions = _downsample(split, positions, s.keys, strat, cfg)
            valid = np.array(s.valid, dtype=np.int64)
            out[split] = {split: np.sort(valid[positions])}
    return out, origin


def _downsample(split: str, positions: Any, keys: Sequence[Any], strat: Callable, cfg: CorpusConfig) -> Any:
    from kftune.core import sampling

    if cfg.downsample >= 1.0 or (split == "test" and not cfg.downsample_test):
        return positions
    stream = sampling.STREAM_DOWNSAMPLE * 10 + SPLITS.index(split)
    picked = sampling.sample_indices(strat(keys), cfg.downsample, cfg.seed, stream=stream)
    return positions[picked]


@dataclass
class _SplitOut:
    """Pass 2 statistics of one output split."""

    examples: int = 0
    tokens: int = 0
    lengths: array = field(default_factory=lambda: array("q"))
    labels: Counter = field(default_factory=Counter)
    entities: Counter = field(default_factory=Counter)
    sha256: Any = field(default_factory=hashlib.sha256)


def _destinations(selection: Mapping[str, Any], total: int) -> list[int]:
    """Per source example: the output split's number, or -1 for "not selected"."""
    import numpy as np

    dest = np.full(total, -1, dtype=np.int8)
    for split, idx in selection.items():
        dest[idx] = SPLITS.index(split)
    return dest.tolist()


def _selected(plan: _Plan, path: Path, dest: Sequence[int], scheme: str | None) -> Iterator[tuple[str, Any]]:
    """``(output split, example)`` of the selected examples of one source file, in file order."""
    for i, ex in enumerate(_reader(plan, path, scheme)):
        code = dest[i] if i < len(dest) else -1
        if code >= 0:
            yield SPLITS[code], ex


def _train_texts(plan: _Plan, paths: dict[str, Path], selection: dict[str, dict[str, Any]],
                 totals: dict[str, int]) -> Iterator[str]:
    """The texts of the output train split (what a subword tokenizer is trained on: never dev or test)."""
    dest = _destinations({"train": selection["train"]["train"]}, totals["train"])
    for _, ex in _selected(plan, paths["train"], dest, None):
        yield ex.text


def _tokenized(pairs: Iterable[tuple[str, Any]], tokenizer: Any) -> Iterator[tuple[str, Any, list[str]]]:
    """``(split, example, tokens)``: the tokens made by ``tokenizer`` from the example's text (streamed
    through :meth:`tokenize_many`, so it may work ahead on a few examples), or the reader's own."""
    if tokenizer is None:
        for split, ex in pairs:
            yield split, ex, ex.tokens
        return
    ahead: deque[tuple[str, Any]] = deque()

    def texts() -> Iterator[str]:
        for split, ex in pairs:
            ahead.append((split, ex))
            yield ex.text

    for tokens in tokenizer.tokenize_many(texts()):
        split, ex = ahead.popleft()
        yield split, ex, tokens


def _write_splits(plan: _Plan, paths: dict[str, Path], selection: dict[str, dict[str, Any]], totals: dict[str, int],
                  tag_scheme: str | None, workdir: Path, tokenizer: Any = None) -> tuple[dict[str, _SplitOut], int]:
    """Pass 2: stream each source file again and write the selected examples, in file order, tokenized by
    ``tokenizer`` (``None``: the reader's tokens). Returns the statistics and how many classification
    examples the tokenizer left without tokens (dropped)."""
    from kftune.nlp.corpora import split_tag

    stats = {split: _SplitOut() for split in SPLITS}
    dropped = 0
    what = f" ({tokenizer.kind} tokens)" if tokenizer is not None else ""
    handles = {split: open(workdir / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") for split in SPLITS}
    try:
        for source, targets in selection.items():
            dest = _destinations(targets, totals[source])
            with Progress(sum(c >= 0 for c in dest), f"write {source}{what}", unit="ex") as bar:
                pairs = _selected(plan, paths[source], dest, tag_scheme)
                for split, ex, tokens in _tokenized(pairs, tokenizer):
                    bar.update(1)
                    obj = ex.to_json()
                    if plan.task == "text_classification":
                        if not tokens:
                            dropped += 1
                            continue
                        obj["tokens"] = tokens
                    line = json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n"
                    handles[split].write(line)
                    st = stats[split]
                    st.sha256.update(line.encode("utf-8"))
                    st.examples += 1
                    st.tokens += len(tokens)
                    st.lengths.append(len(tokens))
                    if plan.task == "text_classification":
                        st.labels[ex.label] += 1
                    else:
                        st.labels.update(ex.tags)
                        st.entities.update(t for p, t in map(split_tag, ex.tags) if p in ("B", "S") and t)
    finally:
        for h in handles.values():
            h.close()
    return stats, dropped


# --------------------------------------------------------------------------- statistics and card
def length_stats(lengths: Sequence[int]) -> dict[str, float] | None:
    """min / mean / median / p95 (nearest rank) / max of token counts; ``None`` for no examples."""
    if not lengths:
        return None
    ordered = sorted(lengths)
    n = len(ordered)
    return {"min": ordered[0], "mean": round(sum(ordered) / n, 2), "median": float(statistics.median(ordered)),
            "p95": ordered[max(0, math.ceil(0.95 * n) - 1)], "max": ordered[-1]}


def _pct(count: int, total: int) -> str:
    return f"{100.0 * count / total:.1f}%" if total else "-"


def render_card(meta: Mapping[str, Any], stats: Mapping[str, _SplitOut], source_labels: Counter) -> str:
    """The Markdown corpus card (deterministic for the same metadata and statistics)."""
    src, prep = meta["source"], meta["preparation"]
    unit = "examples" if meta["task"] == "text_classification" else "sentences"
    lines = [f"# Corpus card: {meta['name']}", ""]
    if src.get("description"):
        lines += [src["description"], ""]
    lines += ["| | |", "| --- | --- |",
              f"| task | {meta['task']} |", f"| label type | {meta['label_type']} |",
              f"| labels | {len(meta['labels'])} |", f"| tag scheme | {meta['tag_scheme'] or '-'} |",
              f"| format | {src['format']} |", f"| tokenizer | {_tokenizer_text(meta.get('tokenizer'))} |",
              f"| license | {src.get('license') or 'unknown'} |"]
    if src.get("homepage"):
        lines.append(f"| homepage | {src['homepage']} |")
    if src.get("citation"):
        lines.append(f"| citation | {src['citation']} |")
    lines += ["", "## Source files", "", "| split | url | member | bytes | sha256 | checksum from |",
              "| --- | --- | --- | ---: | --- | --- |"]
    for f in src["files"]:
        lines.append(f"| {f['split']} | {f['url']} | {f['member'] or '-'} | {f['bytes']:,} | `{f['sha256']}` | "
                     f"{f['checksum_from']} |")
    lines += ["", "## Preparation", "",
              f"- seed: {meta['seed']}",
              f"- downsample: {meta['downsample']:g} of train and dev"
              + (" and test" if prep["downsample_test"] else "; test kept whole") + " (stratified, rounded half up)",
              f"- dev: {prep['dev']}", f"- test: {prep['test']}",
              f"- stratification: {prep['stratification']}"]
    if prep["skipped_empty"]:
        lines.append(f"- skipped: {prep['skipped_empty']} example(s) with no tokens after tokenisation")
    lines += ["", "## Splits", "", f"| split | {unit} | tokens | jsonl sha256 |", "| --- | ---: | ---: | --- |"]
    for split in SPLITS:
        s = meta["splits"][split]
        lines.append(f"| {split} | {s['examples']:,} | {s['tokens']:,} | `{s['sha256']}` |")
    lines += ["", f"## Length ({'tokens per ' + unit[:-1]})", "", "| split | min | mean | median | p95 | max |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for split in SPLITS:
        ls = meta["splits"][split]["length"]
        lines.append(f"| {split} | " + (" | ".join(f"{ls[k]:g}" for k in ("min", "mean", "median", "p95", "max"))
                                         if ls else "- | - | - | - | -") + " |")
    what = "examples per label" if meta["task"] == "text_classification" else "tokens per tag"
    src_total = sum(source_labels.values())
    lines += ["", f"## Label distribution ({what})", "",
              "| label | train | train % | dev | dev % | test | test % | source train % |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    totals = {split: sum(stats[split].labels.values()) for split in SPLITS}
    for label in meta["labels"]:
        cells = []
        for split in SPLITS:
            c = stats[split].labels.get(label, 0)
            cells += [f"{c:,}", _pct(c, totals[split])]
        lines.append(f"| {_md(label)} | " + " | ".join(cells) + f" | {_pct(source_labels.get(label, 0), src_total)} |")
    if meta["tag_scheme"]:
        types = sorted(set().union(*(stats[s].entities for s in SPLITS)))
        lines += ["", "## Entities per type", "", "| type | train | dev | test |", "| --- | ---: | ---: | ---: |"]
        for t in types:
            lines.append(f"| {_md(t)} | " + " | ".join(f"{stats[s].entities.get(t, 0):,}" for s in SPLITS) + " |")
    lines += ["", f"Prepared by kftune {meta['kftune_version']}.", ""]
    return "\n".join(lines)


def _tokenizer_text(data: Mapping[str, Any] | None) -> str:
    """The tokenizer as the card names it: type, options, and the analyzer or model that made the tokens."""
    if not data:
        return "whitespace"
    skip = {"type", "model", "analyzer", "version", "model_type"} if data.get("type") == "morpheme" else {"type", "model"}
    opts = ", ".join(f"{k}={v}" for k, v in sorted(data.items()) if k not in skip)
    text = str(data.get("type")) + (f" ({opts})" if opts else "")
    if data.get("type") == "morpheme":
        text += f"; {data.get('analyzer')} {data.get('version')}, model {data.get('model_type')}"
    if data.get("type") == "subword":
        text += "; SentencePiece, trained on the train split"
    return _md(text)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


# --------------------------------------------------------------------------- run
def run(config: CorpusConfig, *, downloader: Any = None) -> CorpusResult:
    """Prepare the corpus described by ``config`` and write it to ``config.out`` (see the module docstring).

    Raises :class:`ConfigError` for an unusable config (before any work), :class:`ChecksumError`
    when a file's sha256 differs (nothing is written), :class:`DataError` for malformed data.
    On any failure nothing partial is left at ``config.out`` (a local directory); for a store URI,
    ``corpus.json`` is uploaded last and marks a complete corpus.
    """
    from kftune.io.download import Downloader

    config.validate()
    dl = downloader or Downloader.from_env()
    result = _run_multi(config, dl) if config.corpora else _prepare(config, dl)
    _log_metrics(result.splits)
    log.info("wrote %s: %s", result.out, ", ".join(f"{s} {result.splits[s].examples}" for s in SPLITS))
    return result


def _prepare(config: CorpusConfig, dl: Any) -> CorpusResult:
    """Prepare one corpus (``config`` without ``corpora``) and publish it at ``config.out``."""
    from kftune.io.download import member_path

    config.validate()
    plan = _plan(config)

    # 1. fetch and verify every file (once per URL)
    fetched: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    files_meta = []
    for split in SPLITS:
        sf = plan.splits.get(split)
        if sf is None:
            continue
        if sf.url not in fetched:
            fetched[sf.url] = dl.fetch(sf.url, sf.sha256, mirror_path=sf.mirror_path,
                                       allow_unverified=config.allow_unverified)
        f = fetched[sf.url]
        paths[split] = member_path(dl.extracted(f), sf.member) if sf.member else f.path
        files_meta.append({"split": split, "url": sf.url, "member": sf.member, "sha256": f.sha256,
                           "bytes": f.path.stat().st_size, "checksum_from": sf.checksum_origin})

    # 2. pass 1: keys only
    forced = None if config.tag_scheme in ("auto", "none") else config.tag_scheme
    scan_scheme = None if config.tag_scheme == "none" else (forced or "auto")
    scans = {split: _scan(plan, paths[split], split, scan_scheme) for split in SPLITS if split in paths}
    tag_scheme: str | None = None
    if plan.task == "sequence_labeling" and config.tag_scheme != "none":
        from kftune.nlp.corpora import detect_scheme

        tag_scheme = forced or detect_scheme(set().union(*(set(s.labels) for s in scans.values())))
    if not scans["train"].valid:
        raise DataError(f"{paths['train']}: the train split has no usable examples")

    # 3. split and downsample
    selection, origin = _select(plan, scans, config, tag_scheme)
    if plan.task == "text_classification":
        stratification = "by label"
    elif tag_scheme:
        stratification = "by the sentence's rarest entity type ('O' for sentences without entities)"
    else:
        stratification = "none (plain tags: every sentence holds many)"

    # 4. pass 2: write into a temporary directory, then publish
    out = str(config.out)
    is_store = "://" in out and not out.startswith("file://")
    local_out = None if is_store else Path(out.removeprefix("file://")).expanduser()
    if local_out is not None:  # beside the target (same file system: the final rename is atomic); honours umask
        local_out.parent.mkdir(parents=True, exist_ok=True)
        work = local_out.parent / f".{local_out.name}.tmp-{secrets.token_hex(6)}"
        work.mkdir()
    else:
        work = Path(tempfile.mkdtemp(prefix="kftune-corpus-"))
    try:
        totals = {split: scan.total for split, scan in scans.items()}
        tokenizer = _build_tokenizer(plan, paths, selection, totals)
        started = time.monotonic()
        stats, dropped = _write_splits(plan, paths, selection, totals, tag_scheme, work,
                                       tokenizer if plan.retokenize else None)
        seconds = time.monotonic() - started
        written = sum(stats[s].examples for s in SPLITS) + dropped
        tokenization = {"tokenizer": tokenizer.describe(), "sentences": written, "seconds": round(seconds, 3),
                        "sentences_per_second": round(written / seconds, 1) if seconds > 0 else None}
        log.info("tokenized %d sentences with %s in %.1f s: %.0f sentences/s", written, tokenizer.describe(),
                 seconds, written / max(seconds, 1e-9))
        if stats["train"].examples == 0:
            raise DataError("the train split is empty after splitting and downsampling; raise --downsample")
        labels = sorted(set().union(*(set(stats[s].labels) for s in SPLITS)))
        meta = {
            "name": plan.name,
            "task": plan.task,
            "label_type": plan.label_type,
            "labels": labels,
            "tag_scheme": tag_scheme,
            "splits": {s: {"examples": stats[s].examples, "tokens": stats[s].tokens,
                           "sha256": stats[s].sha256.hexdigest(), "length": length_stats(stats[s].lengths)}
                       for s in SPLITS},
            "tokenizer": tokenizer.to_dict(),
            "seed": config.seed,
            "downsample": config.downsample,
            "dev_fraction": config.dev_fraction,
            "source": {**plan.info, "format": plan.format, "files": files_meta,
                       "reader_options": {k: (list(v) if isinstance(v, tuple) else v)
                                          for k, v in sorted(plan.reader_options.items())}},
            "preparation": {"dev": origin["dev"], "test": origin["test"], "downsample_test": config.downsample_test,
                            "test_fraction": config.test_fraction if "test" not in plan.splits else None,
                            "stratification": stratification,
                            "skipped_empty": sum(s.empty for s in scans.values()) + dropped,
                            "source_examples": {s: scans[s].total for s in scans}},
            "kftune_version": __version__,
        }
        (work / "corpus.json").write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
        (work / "card.md").write_text(render_card(meta, stats, scans["train"].labels), encoding="utf-8")
        _publish(work, out, local_out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if local_out is None:
        shutil.rmtree(work, ignore_errors=True)

    split_stats = {s: SplitStats(stats[s].examples, stats[s].tokens, meta["splits"][s]["sha256"]) for s in SPLITS}
    return CorpusResult(out=out, name=plan.name, task=plan.task, label_type=plan.label_type, labels=tuple(labels),
                        tag_scheme=tag_scheme, splits=split_stats, metadata=meta, tokenization=tokenization)


# --------------------------------------------------------------------------- several corpora
def _run_multi(config: CorpusConfig, dl: Any) -> CorpusResult:
    """Prepare every entry of ``config.corpora`` on its own, check that their tags can be joined, and publish
    their union at ``config.out`` (see the module docstring)."""
    from kftune.nlp.tokenizers import build_tokenizer

    entries = list(config.corpora)
    ids = [_entry_id(e) for e in entries]
    subword = _is_subword(config.tokenizer)
    out = str(config.out)
    is_store = "://" in out and not out.startswith("file://")
    local_out = None if is_store else Path(out.removeprefix("file://")).expanduser()
    parts_root = Path(tempfile.mkdtemp(prefix="kftune-corpora-"))
    work = None
    try:
        parts: list[tuple[str, Path, CorpusResult]] = []
        for i, (cid, entry) in enumerate(zip(ids, entries)):
            log.info("corpus %d of %d: %s", i + 1, len(entries), cid)
            part = parts_root / f"{i}"
            # a subword tokenizer is trained below on the joint train split; the parts keep their own tokens
            sub = _entry_config(config, entry, str(part), None if subword else config.tokenizer)
            parts.append((cid, part, _prepare(sub, dl)))
        first_id, _, first = parts[0]
        for i, (cid, _, result) in enumerate(parts[1:], 1):
            if result.task != first.task:  # the config check makes this unreachable; kept as the last word
                raise ConfigError([Problem(f"corpus.corpora[{i}]", f"{cid} holds {result.task} data but {first_id} "
                                                                   f"(corpus.corpora[0]) holds {first.task} data")])
            if result.tag_scheme != first.tag_scheme:
                raise ConfigError([scheme_problem(f"corpus.corpora[{i}]", cid, result.tag_scheme or "none", first_id,
                                                  "corpus.corpora[0]", first.tag_scheme or "none")])
        if local_out is not None:
            local_out.parent.mkdir(parents=True, exist_ok=True)
            work = local_out.parent / f".{local_out.name}.tmp-{secrets.token_hex(6)}"
            work.mkdir()
        else:
            work = Path(tempfile.mkdtemp(prefix="kftune-corpus-"))
        tokenizer = None
        tokenizer_dict = first.metadata.get("tokenizer")
        if subword:
            choice, _ = parse_tokenizer(config.tokenizer, "corpus.tokenizer")
            started = time.monotonic()
            tokenizer = build_tokenizer(choice, train_texts=(str(obj.get("text") or " ".join(obj["tokens"]))
                                                             for _, obj in _part_objects(parts, "train")))
            log.info("trained %s on the joint train split in %.1f s", tokenizer.describe(), time.monotonic() - started)
            tokenizer_dict = tokenizer.to_dict()
        started = time.monotonic()
        stats, dropped = _write_merged(parts, first.task, work, tokenizer)
        seconds = time.monotonic() - started
        if stats["train"].examples == 0:
            raise DataError("the train split is empty after splitting and downsampling; raise --downsample")
        meta = _merged_meta(config, parts, stats, tokenizer_dict, dropped)
        (work / "corpus.json").write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
        cards = [(cid, (part / "card.md").read_text(encoding="utf-8")) for cid, part, _ in parts]
        (work / "card.md").write_text(render_multi_card(meta, stats, cards), encoding="utf-8")
        _publish(work, out, local_out)
    except BaseException:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(parts_root, ignore_errors=True)
    if local_out is None:
        shutil.rmtree(work, ignore_errors=True)
    sentences = sum(int(r.tokenization.get("sentences") or 0) for _, _, r in parts)
    spent = sum(float(r.tokenization.get("seconds") or 0.0) for _, _, r in parts) + seconds
    tokenization = {"tokenizer": tokenizer.describe() if tokenizer is not None else first.tokenization.get("tokenizer"),
                    "sentences": sentences, "seconds": round(spent, 3),
                    "sentences_per_second": round(sentences / spent, 1) if spent > 0 else None}
    split_stats = {s: SplitStats(stats[s].examples, stats[s].tokens, meta["splits"][s]["sha256"]) for s in SPLITS}
    return CorpusResult(out=out, name=meta["name"], task=meta["task"], label_type=meta["label_type"],
                        labels=tuple(meta["labels"]), tag_scheme=meta["tag_scheme"], splits=split_stats, metadata=meta,
                        tokenization=tokenization)


def _part_objects(parts: Sequence[tuple[str, Path, Any]], split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(corpus id, example object)`` of one split of every part, in the order the corpora are given."""
    for cid, part, _ in parts:
        with open(part / f"{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield cid, json.loads(line)


def _write_merged(parts: Sequence[tuple[str, Path, Any]], task: str, workdir: Path,
                  tokenizer: Any = None) -> tuple[dict[str, _SplitOut], int]:
    """Write each split as the parts' examples, each with its ``corpus``, retokenized by ``tokenizer``
    (``None``: as the parts wrote them). Returns the statistics and the examples dropped with no tokens."""
    from kftune.nlp.corpora import split_tag

    stats = {split: _SplitOut() for split in SPLITS}
    dropped = 0
    for split in SPLITS:
        st = stats[split]
        pairs: Iterable[tuple[tuple[str, dict[str, Any]], list[str]]]
        if tokenizer is None:
            pairs = (((cid, obj), obj["tokens"]) for cid, obj in _part_objects(parts, split))
        else:
            ahead: deque[tuple[str, dict[str, Any]]] = deque()

            def texts(_split: str = split, _ahead: deque = ahead) -> Iterator[str]:
                for cid, obj in _part_objects(parts, _split):
                    _ahead.append((cid, obj))
                    yield str(obj.get("text") or " ".join(obj["tokens"]))

            pairs = ((ahead.popleft(), tokens) for tokens in tokenizer.tokenize_many(texts()))
        with open(workdir / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as handle:
            for (cid, obj), tokens in pairs:
                if task == "text_classification" and not tokens:
                    dropped += 1
                    continue
                obj["tokens"] = list(tokens)
                obj["corpus"] = cid
                line = json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n"
                handle.write(line)
                st.sha256.update(line.encode("utf-8"))
                st.examples += 1
                st.tokens += len(tokens)
                st.lengths.append(len(tokens))
                if task == "text_classification":
                    st.labels[obj["label"]] += 1
                else:
                    st.labels.update(obj["tags"])
                    st.entities.update(t for p, t in map(split_tag, obj["tags"]) if p in ("B", "S") and t)
    return stats, dropped


#: The fields of each part's corpus.json kept in the joint corpus.json's ``corpora`` entries.
_PART_FIELDS = ("name", "task", "label_type", "labels", "tag_scheme", "splits", "source", "preparation")


def _merged_meta(config: CorpusConfig, parts: Sequence[tuple[str, Path, CorpusResult]], stats: Mapping[str, _SplitOut],
                 tokenizer: Any, dropped: int) -> dict[str, Any]:
    """The joint corpus.json: the union's splits, labels and tokenizer, and each corpus' own fields."""
    metas = [(cid, result.metadata) for cid, _, result in parts]
    first = metas[0][1]
    types = {m["label_type"] for _, m in metas}
    label_type = config.label_type or (types.pop() if len(types) == 1 else
                                       "class" if first["task"] == "text_classification" else "tag")
    ids = [cid for cid, _ in metas]
    name = "+".join(ids)
    labels = sorted(set().union(*(set(stats[s].labels) for s in SPLITS)))
    return {
        "name": name,
        "task": first["task"],
        "label_type": label_type,
        "labels": labels,
        "tag_scheme": first["tag_scheme"],
        "splits": {s: {"examples": stats[s].examples, "tokens": stats[s].tokens, "sha256": stats[s].sha256.hexdigest(),
                       "length": length_stats(stats[s].lengths)} for s in SPLITS},
        "tokenizer": tokenizer,
        "seed": config.seed,
        "downsample": config.downsample,
        "dev_fraction": config.dev_fraction,
        "source": {"corpus": name, "description": f"{len(ids)} corpora trained together: {', '.join(ids)}",
                   "license": "; ".join(f"{cid}: {m['source'].get('license') or 'unknown'}" for cid, m in metas),
                   "homepage": None, "citation": None, "format": "multi",
                   "files": [{**f, "corpus": cid} for cid, m in metas for f in m["source"]["files"]],
                   "reader_options": {}},
        "preparation": {"downsample_test": config.downsample_test,
                        "stratification": "per corpus, as each corpus alone",
                        "skipped_empty": sum(m["preparation"]["skipped_empty"] for _, m in metas) + dropped,
                        "source_examples": {cid: m["preparation"]["source_examples"] for cid, m in metas}},
        "corpora": [{"id": cid, **{k: m.get(k) for k in _PART_FIELDS}} for cid, m in metas],
        "kftune_version": __version__,
    }


def render_multi_card(meta: Mapping[str, Any], stats: Mapping[str, _SplitOut], cards: Sequence[tuple[str, str]]) -> str:
    """The card of a corpus prepared from several: the union (per-corpus split sizes, joint labels), then
    each corpus' own card with its headings one level down."""
    unit = "examples" if meta["task"] == "text_classification" else "sentences"
    ids = [c["id"] for c in meta["corpora"]]
    lines = [f"# Corpus card: {meta['name']}", "",
             f"{len(ids)} corpora trained together (Flair's MultiCorpus): one label dictionary, one tokenizer; "
             "each was split and downsampled on its own, and every example names its corpus (`corpus`).", "",
             "| | |", "| --- | --- |",
             f"| task | {meta['task']} |", f"| label type | {meta['label_type']} |",
             f"| labels | {len(meta['labels'])} |", f"| tag scheme | {meta['tag_scheme'] or '-'} |",
             f"| tokenizer | {_tokenizer_text(meta.get('tokenizer'))} |", f"| corpora | {_md(', '.join(ids))} |",
             f"| seed | {meta['seed']} |",
             f"| downsample | {meta['downsample']:g} of each corpus' train and dev"
             + (" and test" if meta["preparation"]["downsample_test"] else "; test kept whole") + " |",
             "", f"## Splits ({unit})", "", "| corpus | train | dev | test |", "| --- | ---: | ---: | ---: |"]
    for c in meta["corpora"]:
        lines.append(f"| {_md(c['id'])} | " + " | ".join(f"{c['splits'][s]['examples']:,}" for s in SPLITS) + " |")
    lines.append("| **all** | " + " | ".join(f"{meta['splits'][s]['examples']:,}" for s in SPLITS) + " |")
    lines += ["", "| split | tokens | jsonl sha256 |", "| --- | ---: | --- |"]
    lines += [f"| {s} | {meta['splits'][s]['tokens']:,} | `{meta['splits'][s]['sha256']}` |" for s in SPLITS]
    what = "examples per label" if meta["task"] == "text_classification" else "tokens per tag"
    lines += ["", f"## Label distribution ({what}, all corpora)", "",
              "| label | train | dev | test | in corpora |", "| --- | ---: | ---: | ---: | --- |"]
    for label in meta["labels"]:
        where = ", ".join(c["id"] for c in meta["corpora"] if label in (c.get("labels") or []))
        lines.append(f"| {_md(label)} | " + " | ".join(f"{stats[s].labels.get(label, 0):,}" for s in SPLITS)
                     + f" | {_md(where)} |")
    for cid, card in cards:
        body = card.split("\n", 1)[1] if card.startswith("# ") else card
        body = re.sub(r"^(#{1,5}) ", lambda m: "#" * (len(m.group(1)) + 1) + " ", body, flags=re.M)
        lines += ["", f"## Corpus {_md(cid)}", body.strip()]
    lines += ["", f"Prepared by kftune {meta['kftune_version']}.", ""]
    return "\n".join(lines)


def settings_from_spec(corpus: Any, task: Any) -> dict[str, Any]:
    """The corpus step's settings (``CorpusConfig`` keyword arguments but ``out``, JSON-shaped) for the spec's
    ``corpus`` block (:class:`kftune.core.spec.CorpusSpec`) and ``task``: what the pipeline's resolve-spec
    task hands to prepare-corpus (the settings are that task's cache key)."""
    def source(c: Any) -> dict[str, Any]:
        text = c.text_column
        return {
            "name": c.name, "uri": c.uri, "train": c.train, "dev": c.dev, "test": c.test, "format": c.format,
            "sha256": c.sha256,
            "text_columns": [str(t) for t in (text if isinstance(text, tuple) else (text,))] if text is not None else [],
            "label_column": None if c.label_column is None else str(c.label_column),
            "label_map": dict(c.label_map) if c.label_map is not None else None, "label_prefix": c.label_prefix,
            "token_column": c.token_column, "delimiter": c.delimiter, "header": c.header, "quoting": c.quoting,
            "encoding": c.encoding, "tag_scheme": c.tag_scheme or "auto",
            # a URI without a sha256 is taken as given: the spec names no checksum to verify it against
            "allow_unverified": c.uri is not None and c.sha256 is None,
        }

    shared = {"label_type": task.label_type, "tokenizer": corpus.tokenizer.to_spec() if corpus.tokenizer is not None
              else None, "downsample": corpus.downsample, "dev_fraction": corpus.dev_fraction, "seed": corpus.seed}
    if not corpus.corpora:
        return {**source(corpus), **shared}
    return {"corpora": [{"id": c.id or default_id(c.name, c.uri), **source(c)} for c in corpus.corpora], **shared}


def _build_tokenizer(plan: _Plan, paths: dict[str, Path], selection: dict[str, dict[str, Any]],
                     totals: dict[str, int]) -> Any:
    """The plan's tokenizer; a subword one is trained here on the output train split's texts."""
    from kftune.nlp.tokenizers import build_tokenizer

    assert plan.tokenizer is not None  # the config was validated
    if plan.tokenizer.type != "subword":
        return build_tokenizer(plan.tokenizer)
    started = time.monotonic()
    tokenizer = build_tokenizer(plan.tokenizer, train_texts=_train_texts(plan, paths, selection, totals))
    log.info("trained %s on the train split in %.1f s", tokenizer.describe(), time.monotonic() - started)
    return tokenizer


def _publish(work: Path, out: str, local_out: Path | None) -> None:
    """Move the finished files to ``out``: a rename for a local directory, uploads for a store URI."""
    if local_out is None:
        from kftune.io.store import open_store

        store = open_store(out)
        for name in OUTPUT_FILES[:-2] + ("card.md", "corpus.json"):  # corpus.json last: it marks completion
            store.put_file(name, work / name)
        return
    old = None
    if local_out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{local_out.name}.old-", dir=local_out.parent))
        os.replace(local_out, old / "previous")
    try:
        os.replace(work, local_out)
    except BaseException:
        if old is not None:
            os.replace(old / "previous", local_out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _log_metrics(stats: Mapping[str, SplitStats]) -> None:
    from kftune.io.metrics import log_final

    values: dict[str, float] = {}
    for split, s in stats.items():
        values[f"{split}_examples"] = float(s.examples)
        values[f"{split}_tokens"] = float(s.tokens)
    log_final("corpus", values)


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune corpus",
        description="Download, verify, split and downsample a corpus into train/dev/test JSONL, corpus.json "
                    "and a card (card.md). KFTUNE_CORPUS_MIRROR (a directory or http(s) base URL) replaces the "
                    "download host; KFTUNE_CACHE_DIR sets the download cache.")
    src = p.add_argument_group("corpus")
    src.add_argument("--name", help="a registered corpus: TREC_6, TREC_50, WNUT_17, UD_ENGLISH, AG_NEWS, NSMC, SST_2")
    src.add_argument("--corpora", type=_corpora_arg,
                     help="several corpora trained as one, instead of --name/--uri: a JSON list of entries with the "
                          "fields of one corpus in snake_case, e.g. '[{\"name\": \"TREC_6\"}, {\"id\": \"mine\", "
                          "\"uri\": \"q.csv\", \"format\": \"csv\", \"text_columns\": [\"text\"]}]'; "
                          "the splitting options and --tokenizer apply to each")
    src.add_argument("--uri", help="http(s)://, s3://, file:// or a path: the train file, a zip/tar archive "
                                   "(URI#member picks the train file in it), or a directory with --train")
    src.add_argument("--train", help="train file: a member of the --uri archive, a path in the --uri directory, "
                                     "or a URI of its own")
    src.add_argument("--dev", help="dev file, like --train (else carved from train)")
    src.add_argument("--test", help="test file, like --train (else carved from train)")
    src.add_argument("--format", choices=FORMATS, help="file format of a URI corpus")
    src.add_argument("--sha256", help="expected sha256 of the --uri file or archive (of the train file when --uri "
                                      "is a directory); without it the file is refused unless --allow-unverified")
    src.add_argument("--dev-sha256", help="expected sha256 of a separate dev file")
    src.add_argument("--test-sha256", help="expected sha256 of a separate test file")
    src.add_argument("--allow-unverified", action="store_true",
                     help="accept files without a known sha256; the checksum seen first is pinned in the cache")
    rd = p.add_argument_group("reading")
    rd.add_argument("--text-column", action="append", dest="text_columns", default=None,
                    help="csv/tsv text column (name or 0-based number); repeat to join several")
    rd.add_argument("--label-column", "--column", dest="label_column",
                    help="csv/tsv label column; trec coarse|fine; conll tag column number; "
                         "conllu column (upos, xpos, deprel, ...; UD_ENGLISH too)")
    rd.add_argument("--label-map", type=_label_map,
                    help="csv/tsv: rename raw labels, e.g. 0=negative,1=positive (an unlisted label is an error); "
                         "for a registered csv/tsv corpus (NSMC) it replaces the registry's names")
    rd.add_argument("--label-prefix", help="fasttext label prefix (default __label__)")
    rd.add_argument("--token-column", type=int, help="conll token column number (default 0)")
    rd.add_argument("--delimiter", help="csv/tsv delimiter (one character, or 'tab')")
    rd.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                    help="csv/tsv: the first row names the columns (default yes)")
    rd.add_argument("--quoting", choices=("minimal", "none"), help="csv/tsv quoting (default: csv minimal, tsv none)")
    rd.add_argument("--encoding", help="text encoding (default utf-8; trec latin-1)")
    rd.add_argument("--label-type", help="name of what the labels are (default from the corpus)")
    rd.add_argument("--tag-scheme", choices=TAG_SCHEMES, default="auto",
                    help="validate tags as BIO/BIOES (auto: detect), or not at all (none)")
    rd.add_argument("--tokenizer", type=_tokenizer_arg,
                    help="regex, whitespace, char, morpheme or subword, or a JSON mapping such as "
                         "'{\"type\": \"subword\", \"vocabSize\": 8000}' (default: the corpus' own; NSMC "
                         "morpheme, else regex for raw text and whitespace for trec/conll/conllu)")
    sp = p.add_argument_group("splitting")
    sp.add_argument("--downsample", type=float, default=1.0, help="fraction of train and dev to keep (default 1.0)")
    sp.add_argument("--downsample-test", action="store_true", help="downsample the test split too")
    sp.add_argument("--dev-fraction", type=float, default=0.1, help="dev carved from train when there is none")
    sp.add_argument("--test-fraction", type=float, default=0.1, help="test carved from train when there is none")
    sp.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, help="output directory or store URI (s3://bucket/key)")
    add_common_arguments(p)
    return p


def _tokenizer_arg(text: str) -> str | dict[str, Any]:
    """A tokenizer name, or a JSON mapping (checked by the config)."""
    if not text.strip().startswith("{"):
        return text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a tokenizer name or a JSON mapping ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON mapping")
    return value


def _corpora_arg(text: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of corpus entries (checked by the config)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON list of corpora ({exc.msg})") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON list of objects (one per corpus)")
    return tuple(value)


def _label_map(text: str) -> dict[str, str]:
    pairs = [item.partition("=") for item in text.split(",") if item.strip()]
    if not pairs or any(not sep or not k.strip() or not v.strip() for k, sep, v in pairs):
        raise argparse.ArgumentTypeError(f"{text!r} is not RAW=NAME[,RAW=NAME...]")
    return {k.strip(): v.strip() for k, _, v in pairs}


def config_from_args(args: argparse.Namespace) -> CorpusConfig:
    return CorpusConfig(
        out=args.out, name=args.name, uri=args.uri, train=args.train, dev=args.dev, test=args.test, format=args.format,
        sha256=args.sha256, dev_sha256=args.dev_sha256, test_sha256=args.test_sha256,
        text_columns=tuple(args.text_columns or ()), label_column=args.label_column, label_map=args.label_map,
        label_prefix=args.label_prefix, token_column=args.token_column,
        delimiter=args.delimiter, header=args.header, quoting=args.quoting, encoding=args.encoding,
        label_type=args.label_type, tag_scheme=args.tag_scheme, tokenizer=args.tokenizer, downsample=args.downsample,
        downsample_test=args.downsample_test, dev_fraction=args.dev_fraction, test_fraction=args.test_fraction,
        seed=args.seed, allow_unverified=args.allow_unverified, corpora=args.corpora or ())


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        result = run(config_from_args(args))
        counts = "  ".join(f"{s}={result.splits[s].examples}" for s in SPLITS)
        print(f"{result.name}: {counts} -> {result.out}")
        tk = result.tokenization
        if tk:
            print(f"tokenizer {tk['tokenizer']}: {tk['sentences']} sentences in {tk['seconds']:.1f} s "
                  f"({tk['sentences_per_second'] or 0:.0f} sentences/s)")
        return 0

    return run_main(body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
