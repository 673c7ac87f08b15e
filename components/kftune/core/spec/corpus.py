"""``spec.corpus`` and ``spec.task``: which corpus (a registered name, a uri with a format, or several
corpora trained as one), how it is split and downsampled, and what is learned from it.

Corpus names are checked against :mod:`kftune.core.corpus_registry`, several corpora against each other with
:mod:`kftune.core.multicorpus`, tokenizers with :mod:`kftune.core.tokenization`; all before any download.
"""

from __future__ import annotations

import codecs
import dataclasses
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Mapping

from kftune.core import limits
from kftune.core.corpus_registry import (
    CONLLU_COLUMNS,
    FORMATS,
    TASK_OF_FORMAT,
    CorpusEntry,
    corpus_names,
    get_corpus,
)
from kftune.core.errors import ConfigError
from kftune.core.limits import Bound
from kftune.core.multicorpus import ID_PATTERN, Source, default_id, joint_problems
from kftune.core.spec.fields import (
    _F,
    _IDENT,
    _INVALID,
    _Ctx,
    _bool,
    _build,
    _dump_section,
    _enum,
    _flag,
    _float,
    _int,
    _is_int,
    _join,
    _section,
    _show,
    _str,
    _str_list,
    _suggest,
    _thaw,
    _type_name,
)
from kftune.core.tokenization import TokenizerChoice, check_tokenizer, default_tokenizer, parse_tokenizer


# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

TaskType = Literal["text_classification", "sequence_labeling"]
CorpusFormat = Literal["fasttext", "csv", "tsv", "trec", "conll", "conllu"]

TASK_TYPES: tuple[str, ...] = ("text_classification", "sequence_labeling")
#: Which task each corpus file format carries (the corpus registry's table).
FORMAT_TASKS: Mapping[str, str] = MappingProxyType(dict(TASK_OF_FORMAT))
CORPUS_FORMATS: tuple[str, ...] = FORMATS
URI_SCHEMES: tuple[str, ...] = ("http", "https", "s3", "file")
#: ``tagScheme`` of a CoNLL corpus: check tags as BIO or BIOES, ``auto`` (what holds in both), ``none``
#: (plain tags such as POS: no span checks, and ``dev_score`` is token accuracy).
TAG_SCHEMES: tuple[str, ...] = ("BIO", "BIOES", "auto", "none")
TREC_LABELS: tuple[str, ...] = ("coarse", "fine")
QUOTING: tuple[str, ...] = ("minimal", "none")
DEFAULT_LABEL_TYPES: Mapping[str, str] = MappingProxyType(
    {"text_classification": "class", "sequence_labeling": "tag"})

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CORPUS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------------------------------
# Config objects
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class CorpusSpec:
    """Which corpus to prepare: a registered ``name`` (see :mod:`kftune.core.corpus_registry`) or a
    ``uri`` with a ``format`` and that format's options, plus how to split and downsample it.

    ``train``/``dev``/``test``: for a ``uri`` that is a directory or an archive, the split files inside
    it (or full URIs of their own). ``label_column``: csv/tsv the label column (header name or 0-based
    index); conll the tag column index (negative counts from the end); conllu the field (upos, xpos,
    ...; also for the registered UD corpus); trec ``coarse`` (6 classes) or ``fine`` (50).
    ``text_column``: csv/tsv, one column or a tuple of columns joined with a space.
    ``tokenizer``: how text becomes tokens (:mod:`kftune.core.tokenization`); ``None`` takes the registered
    corpus' default, else the format's (regex for raw text, whitespace for pre-tokenized formats).
    :meth:`reader_options` gives the keyword arguments of the format's reader in :mod:`kftune.nlp.corpora`.

    Several corpora trained as one (Flair's MultiCorpus, :mod:`kftune.core.multicorpus`): ``corpora`` holds
    one :class:`CorpusSpec` per corpus (its source fields and its ``id``; never set when ``corpora`` is
    empty), and this object only the shared ``tokenizer``, ``downsample``, ``dev_fraction`` and ``seed``.
    :attr:`sources` gives the corpora either way.
    """

    name: str | None = None
    uri: str | None = None
    format: CorpusFormat | None = None
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    sha256: str | None = None
    text_column: str | int | tuple[str | int, ...] | None = None
    label_column: str | int | None = None
    token_column: int | None = None
    tag_scheme: Literal["BIO", "BIOES", "auto", "none"] | None = None
    delimiter: str | None = None
    header: bool | None = None
    quoting: Literal["minimal", "none"] | None = None
    label_map: Mapping[str, str] | None = None
    label_prefix: str | None = None
    encoding: str | None = None
    tokenizer: TokenizerChoice | None = None
    downsample: float = 1.0
    dev_fraction: float = 0.1
    seed: int = 1
    id: str | None = None
    corpora: tuple["CorpusSpec", ...] = ()

    @property
    def sources(self) -> tuple["CorpusSpec", ...]:
        """The corpora this spec trains on: the ``corpora`` entries, or this corpus alone."""
        return self.corpora or (self,)

    def describe(self) -> str:
        """How messages name the corpus: its name or uri; several corpora joined with `` + ``."""
        if self.corpora:
            return " + ".join(c.id or c.name or c.uri or "?" for c in self.corpora)
        return self.name or self.uri or "?"

    def reader_options(self) -> dict[str, Any]:
        """Keyword arguments for the reader of ``format`` (``read_delimited``, ``read_conll``, ...): only
        what the spec sets, so the reader's defaults apply to the rest. Empty for a registered corpus."""
        if self.format is None:
            return {}
        out: dict[str, Any] = {}
        if self.encoding is not None:
            out["encoding"] = self.encoding
        if self.format in ("csv", "tsv"):
            out["delimiter"] = self.delimiter or ("\t" if self.format == "tsv" else ",")
            if self.text_column is not None:
                out["text_columns"] = (self.text_column if isinstance(self.text_column, tuple)
                                       else (self.text_column,))
            optional = {"label_column": self.label_column, "header": self.header, "quoting": self.quoting,
                        "label_map": dict(self.label_map) if self.label_map is not None else None}
        elif self.format == "fasttext":
            optional = {"label_prefix": self.label_prefix}
        elif self.format == "trec":
            optional = {"level": self.label_column}
        elif self.format == "conll":
            scheme = None if self.tag_scheme == "none" else self.tag_scheme
            optional = {"token_column": self.token_column, "tag_column": self.label_column}
            if self.tag_scheme is not None:
                out["scheme"] = scheme
        else:  # conllu
            optional = {"column": self.label_column}
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """What is learned: document labels or one tag per token; ``label_type`` names the label (Flair's)."""

    type: TaskType
    label_type: str


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------

def _column(value: Any, path: str, ctx: _Ctx) -> Any:
    if _is_int(value):
        message = _COLUMN_INDEX.problem(value)
        return value if message is None else ctx.add(path, message)
    if isinstance(value, str) and value.strip():
        return value
    return ctx.add(path, f"{_show(value)} is {_type_name(value)}; give a column name or a 0-based index")


_COLUMN_INDEX = Bound(-limits.MAX_COLUMN, limits.MAX_COLUMN, unit="column index")


def _columns(value: Any, path: str, ctx: _Ctx) -> Any:
    """One column, or a list of columns (joined with a space)."""
    if isinstance(value, (list, tuple)):
        if not value:
            return ctx.add(path, "must name at least one column")
        return _str_list(_column)(value, path, ctx)
    return _column(value, path, ctx)


def _uri(value: Any, path: str, ctx: _Ctx) -> Any:
    if _str()(value, path, ctx) is _INVALID:
        return _INVALID
    match = _SCHEME.match(value)
    if match and match.group(1).lower() not in URI_SCHEMES:
        return ctx.add(path, f"{_show(value)}: scheme {match.group(1)}:// is not supported; use "
                             f"{', '.join(s + '://' for s in URI_SCHEMES)} or a local path")
    return value


def _encoding(value: Any, path: str, ctx: _Ctx) -> Any:
    if _str()(value, path, ctx) is _INVALID:
        return _INVALID
    try:
        codecs.lookup(value)
    except LookupError:
        return ctx.add(path, f"{_show(value)} is not a text encoding Python knows (e.g. utf-8, latin-1)")
    return value


def _delimiter(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, str) or len(value) != 1:
        return ctx.add(path, f"{_show(value)} is not a single character (e.g. \",\" or \"\\t\")")
    return value


def _label_map(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, Mapping) or not value:
        return ctx.add(path, f"{_show(value)} is not a mapping of raw label to label "
                             '(e.g. {"0": negative, "1": positive})')
    out, ok = {}, True
    for k, v in value.items():
        if isinstance(k, bool) or isinstance(v, bool) or not isinstance(k, (str, int)) \
                or not isinstance(v, (str, int)) or not str(v).strip():
            ok = _flag(ctx, _join(path, str(k)), f"{_show(v)}: raw labels and labels are strings")
        else:
            out[str(k)] = str(v)
    return MappingProxyType(out) if ok else _INVALID


_CORPUS_FIELDS = (
    _F("name", "name", _str(_CORPUS_NAME, "a corpus name (e.g. TREC_6)")),
    _F("uri", "uri", _uri),
    _F("format", "format", _enum(CORPUS_FORMATS)),
    _F("train", "train", _str()), _F("dev", "dev", _str()), _F("test", "test", _str()),
    _F("sha256", "sha256", _str(_SHA256, "a sha256 checksum (64 lowercase hex digits)")),
    _F("textColumn", "text_column", _columns),
    _F("labelColumn", "label_column", _column),
    _F("tokenColumn", "token_column", _int(-limits.MAX_COLUMN, limits.MAX_COLUMN, "column index")),
    _F("tagScheme", "tag_scheme", _enum(TAG_SCHEMES)),
    _F("delimiter", "delimiter", _delimiter),
    _F("header", "header", _bool),
    _F("quoting", "quoting", _enum(QUOTING)),
    _F("labelMap", "label_map", _label_map),
    _F("labelPrefix", "label_prefix", _str()),
    _F("encoding", "encoding", _encoding),
    _F("tokenizer", "tokenizer", lambda v, p, c: _tokenizer(v, p, c), dump=lambda t: t.to_spec()),
    _F("downsample", "downsample", _float(0, 1, lo_open=True, unit="fraction of the training examples")),
    _F("devFraction", "dev_fraction", _float(0, 1, lo_open=True, hi_open=True, unit="fraction of train")),
    _F("seed", "seed", _int(0, limits.MAX_SEED, "seed (32-bit)")),
    _F("corpora", "corpora", lambda v, p, c: _corpora(v, p, c),
       dump=lambda entries: [_dump_section(e, _ENTRY_FIELDS) for e in entries]),
)
#: Fields of spec.corpus that several corpora share (the rest belong to each entry of corpora).
_SHARED_CORPUS_KEYS = ("tokenizer", "downsample", "devFraction", "seed")
#: spec.corpus with corpora: the shared fields and the list.
_MULTI_CORPUS_FIELDS = tuple(f for f in _CORPUS_FIELDS if f.key in _SHARED_CORPUS_KEYS + ("corpora",))
#: One entry of spec.corpus.corpora: an id and the source fields of one corpus.
_ENTRY_FIELDS = (_F("id", "id", _str(ID_PATTERN, "an id of letters, digits, _, . and - (at most 64)")),
                 *(f for f in _CORPUS_FIELDS if f.key not in _SHARED_CORPUS_KEYS + ("corpora",)))
#: Format options and the formats that take them.
FORMAT_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "textColumn": ("csv", "tsv"), "delimiter": ("csv", "tsv"), "header": ("csv", "tsv"),
    "quoting": ("csv", "tsv"), "labelMap": ("csv", "tsv"), "labelPrefix": ("fasttext",),
    "labelColumn": ("csv", "tsv", "trec", "conll", "conllu"),
    "tokenColumn": ("conll",), "tagScheme": ("conll",),
})
#: Fields that only a corpus given by uri takes (a registered corpus takes labelColumn where it has a choice,
#: and labelMap where it is csv/tsv: it replaces the registry's map of raw label to label).
_URI_ONLY = ("format", "train", "dev", "test", "sha256", "encoding",
             *(k for k in FORMAT_OPTIONS if k not in ("labelColumn", "labelMap")))


def _tokenizer(value: Any, path: str, ctx: _Ctx) -> Any:
    """A tokenizer name or ``{type: NAME, option: value}`` (checked against the format in :func:`_corpus`)."""
    choice, problems = parse_tokenizer(_thaw(value), path)
    ctx.problems.extend(problems)
    return _INVALID if problems else choice


def _registered(name: str) -> CorpusEntry | None:
    try:
        return get_corpus(name)
    except ConfigError:
        return None


def _corpus(value: Any, path: str, ctx: _Ctx, *, as_entry: bool = False) -> Any:
    """``spec.corpus`` (one corpus, or ``corpora``), or with ``as_entry`` one entry of ``spec.corpus.corpora``."""
    if not as_entry and isinstance(value, Mapping) and value.get("corpora") is not None:
        return _multi_corpus(value, path, ctx)
    if as_entry:
        shared = {k: f"set once in {path.rpartition('.corpora[')[0]}, not per corpus: it applies to every corpus"
                  for k in _SHARED_CORPUS_KEYS}
        values = _section(value, path, _ENTRY_FIELDS, ctx, extra=shared)
    else:
        values = _section(value, path, _CORPUS_FIELDS, ctx)
    if values is None:
        return _INVALID
    raw = value
    has_name, has_uri = raw.get("name") is not None, raw.get("uri") is not None
    if has_name == has_uri:
        ctx.add(_join(path, "name" if has_name else "uri"),
                "set either name (a registered corpus, e.g. TREC_6) or uri with format, not both"
                if has_name else "required: name (a registered corpus, e.g. TREC_6) or uri with format")
    if has_name and "name" in values:
        entry = _registered(values["name"])
        if entry is None:
            names = corpus_names()
            guess = _suggest(values["name"], names)
            ctx.add(_join(path, "name"), f"{_show(values['name'])} is not a registered corpus"
                    + (f'; did you mean "{guess}"?' if guess else "")
                    + f" (registered: {', '.join(names)}); or give uri and format")
        else:
            values["name"] = entry.name  # the registry's spelling: trec-6 -> TREC_6
            label = values.get("label_column")
            if raw.get("labelColumn") is not None and label is not None and label not in entry.label_columns:
                ctx.add(_join(path, "labelColumn"),
                        f"{_show(label)} is not one of: {', '.join(map(str, entry.label_columns))}"
                        if entry.label_columns else
                        f"{entry.name} has one label column; labelColumn is for corpora given by uri")
            if raw.get("labelMap") is not None and values.get("label_map") is not None:
                ctx.problems.extend(entry.label_map_problems(values["label_map"], _join(path, "labelMap")))
        for key in _URI_ONLY:
            if raw.get(key) is not None:
                ctx.add(_join(path, key), "only for a corpus given by uri; a registered corpus "
                                          "(name) knows its files, format and checksums")
    if has_uri and raw.get("format") is None:
        ctx.add(_join(path, "format"), f"required with uri: one of {', '.join(CORPUS_FORMATS)}")
    fmt = values.get("format") if has_uri else None
    if fmt is not None:
        for key, formats in FORMAT_OPTIONS.items():
            if raw.get(key) is not None and fmt not in formats:
                ctx.add(_join(path, key), f"not an option of format {fmt} (only of {', '.join(formats)})")
        label = values.get("label_column")
        lpath = _join(path, "labelColumn")
        if fmt in ("csv", "tsv"):
            text = values.get("text_column")
            texts = text if isinstance(text, tuple) else (text,)
            for key in ("textColumn", "labelColumn"):
                if raw.get(key) is None:
                    ctx.add(_join(path, key), f"required for format {fmt} (a column name or 0-based index)")
            for key, cols in (("textColumn", texts), ("labelColumn", (label,))):
                if any(_is_int(c) and c < 0 for c in cols):
                    ctx.add(_join(path, key), "a column index is >= 0")
            if label is not None and label in texts:
                ctx.add(lpath, "is also a text column")
            by_name = [c for c in (*texts, label) if isinstance(c, str) and not c.lstrip("-").isdigit()]
            if values.get("header") is False and by_name:
                ctx.add(_join(path, "header"), f"false, but column {_show(by_name[0])} is given by name; "
                                               "columns of a file without a header row are 0-based indices")
        elif fmt == "conll":
            if label is not None and not _is_int(label):
                ctx.add(lpath, f"{_show(label)} is not an integer: format conll takes the tag column's "
                               "index (0-based; -1 is the last column)")
            token = values.get("token_column")
            if token is not None and label is not None and token == label:
                ctx.add(lpath, "is the same column as tokenColumn")
        elif fmt == "conllu":
            if label is not None and label not in CONLLU_COLUMNS:
                ctx.add(lpath, f"{_show(label)} is not one of: {', '.join(CONLLU_COLUMNS)}")
        elif fmt == "trec":
            if label is not None and label not in TREC_LABELS:
                ctx.add(lpath, f"{_show(label)} is not one of: coarse (6 classes), fine (50 classes)")
    if not as_entry and (raw.get("tokenizer") is None or "tokenizer" in values):
        # the tokenizer against the format (conll/conllu: whitespace only) and the installed packages; with
        # none written, the registered corpus' default (NSMC: morpheme) must be usable too
        entry = _registered(values["name"]) if has_name and "name" in values else None
        fmt = fmt if fmt is not None else entry.format if entry is not None else None
        _, problems = check_tokenizer(values.get("tokenizer"), _join(path, "tokenizer"), fmt=fmt,
                                      registry_default=entry.tokenizer if entry is not None else None,
                                      corpus=entry.name if entry is not None else None)
        ctx.problems.extend(problems)
    return _build(CorpusSpec, values, ())


def _corpora(value: Any, path: str, ctx: _Ctx) -> Any:
    """The entries of ``spec.corpus.corpora``, each with its id (the default one written in)."""
    if not isinstance(value, (list, tuple)):
        return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a list of corpora "
                             "(e.g. [{name: TREC_6}, {uri: ..., format: csv, ...}])")
    if len(value) < 2:
        return ctx.add(path, f"holds {len(value)} corpus; list two or more, or write the one corpus' fields in "
                             f"{path.rpartition('.')[0]} itself")
    if len(value) > limits.MAX_CORPORA:
        return ctx.add(path, f"holds {len(value)} corpora; at most {limits.MAX_CORPORA}")
    entries, ok = [], True
    for i, item in enumerate(value):
        before = len(ctx.problems)
        parsed = _corpus(item, f"{path}[{i}]", ctx, as_entry=True)
        if parsed is _INVALID or len(ctx.problems) > before:  # the joint checks need every entry clean
            ok = False
        elif parsed.id is None:
            parsed = dataclasses.replace(parsed, id=default_id(parsed.name, parsed.uri))
        entries.append(parsed)
    return tuple(entries) if ok else _INVALID


def _entry_source(c: CorpusSpec) -> Source:
    """What :func:`kftune.core.multicorpus.joint_problems` needs of one parsed entry."""
    registered = _registered(c.name) if c.name is not None else None
    fmt = c.format if c.format is not None else registered.format if registered is not None else None
    task = FORMAT_TASKS[fmt] if fmt is not None else None
    scheme, key = None, None
    if registered is not None:
        scheme = registered.tag_scheme
    elif c.tag_scheme in ("BIO", "BIOES", "none"):
        scheme, key = c.tag_scheme, "tagScheme"
    default = (registered.tokenizer if registered is not None else None) or (default_tokenizer(fmt) if fmt else None)
    return Source(id=c.id or default_id(c.name, c.uri), task=task, tag_scheme=scheme, tokenizer=default,
                  scheme_key=key)


def _multi_corpus(value: Mapping[str, Any], path: str, ctx: _Ctx) -> Any:
    """``spec.corpus`` with ``corpora``: the shared fields here, the sources in the entries."""
    source_keys = {f.key: f"with corpora, each corpus' fields go into its entry of {path}.corpora; "
                          f"{path} itself takes only {', '.join(_SHARED_CORPUS_KEYS)} and corpora"
                   for f in _ENTRY_FIELDS}
    values = _section(value, path, _MULTI_CORPUS_FIELDS, ctx, extra=source_keys)
    if values is None:
        return _INVALID
    entries = values.get("corpora")
    if entries is None:
        return _INVALID
    sources = [_entry_source(e) for e in entries]
    tokenizer_ok = value.get("tokenizer") is None or "tokenizer" in values
    ctx.problems.extend(joint_problems(sources, _join(path, "corpora"), tokenizer_path=_join(path, "tokenizer"),
                                       tokenizer_given=value.get("tokenizer") is not None))
    if tokenizer_ok:
        seen: set[tuple[str, str]] = set()
        for e in entries:  # the shared tokenizer against every corpus' format and the installed packages
            registered = _registered(e.name) if e.name is not None else None
            fmt = e.format if e.format is not None else registered.format if registered is not None else None
            _, problems = check_tokenizer(values.get("tokenizer"), _join(path, "tokenizer"), fmt=fmt,
                                          registry_default=registered.tokenizer if registered is not None else None,
                                          corpus=e.id)
            for problem in problems:
                if (problem.path, problem.message) not in seen:
                    seen.add((problem.path, problem.message))
                    ctx.problems.append(problem)
    return _build(CorpusSpec, values, ())


def corpus_task(corpus: CorpusSpec) -> str | None:
    """The task a (parsed) corpus block holds: its format's, or its registered corpus'; for several corpora,
    the first one's (the others are checked to match)."""
    c = corpus.sources[0]
    if c.format is not None:
        return FORMAT_TASKS[c.format]
    registered = _registered(c.name) if c.name is not None else None
    return registered.task if registered is not None else None


_TASK_FIELDS = (
    _F("type", "type", _enum(TASK_TYPES), required=True, hint="text_classification or sequence_labeling"),
    _F("labelType", "label_type", _str(_IDENT, "a label name made of letters, digits and _")),
)


def _task(value: Any, path: str, ctx: _Ctx) -> Any:
    values = _section(value, path, _TASK_FIELDS, ctx)
    if values is None or "type" not in values:
        return _INVALID
    values.setdefault("label_type", DEFAULT_LABEL_TYPES[values["type"]])
    return TaskSpec(**values)
