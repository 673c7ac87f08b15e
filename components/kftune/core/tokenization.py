"""The tokenizer choices of ``spec.corpus.tokenizer``: names, options, defaults and the packages they need.

Pure data and checks; the tokenizers themselves are :mod:`kftune.nlp.tokenizers`. The only thing this
module asks of the outside world is :func:`importlib.util.find_spec` (is an optional package installed?),
so that a spec naming a tokenizer whose package is missing fails at validation, before any work starts.

Choices (``type``, with options as the spec writes them):

- ``regex``: words (``\\w`` runs with inner ``'``/``-``) and single punctuation marks; the default for
  raw-text formats (csv, tsv, fasttext). No options.
- ``whitespace``: ``text.split()``; what the pre-tokenized formats (trec, conll, conllu) are, and their
  default. The only choice for conll/conllu (sequence labelling: the tags belong to those tokens).
- ``char``: characters, spaces dropped; ``boundaries: true`` puts a ``▁`` token between words.
- ``morpheme``: Korean morphemes from kiwipiepy's analyzer, as ``form/TAG`` (``영화/NNG``);
  ``tags: false`` gives the forms only. Needs ``pip install 'kftune[korean]'``.
- ``subword``: a SentencePiece model trained on the train split only; ``vocabSize`` (default 8000),
  ``modelType`` ``unigram`` (default) or ``bpe``. Needs ``pip install 'kftune[subword]'``.

A choice is written as a name (``morpheme``) or a mapping (``{type: subword, vocabSize: 8000}``).
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from kftune.core.errors import Problem


@dataclass(frozen=True)
class TokenizerOption:
    """One option of a tokenizer: its spec key (camelCase), its attribute (snake_case), type and default."""

    key: str
    attr: str
    type: str  # "bool", "int" or "choice"
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    lo: int | None = None
    hi: int | None = None


@dataclass(frozen=True)
class TokenizerKind:
    """One tokenizer choice: what it does, its options, and the optional packages it needs."""

    name: str
    doc: str
    options: tuple[TokenizerOption, ...] = ()
    modules: tuple[str, ...] = ()       # import names checked with find_spec
    distributions: tuple[str, ...] = ()  # their pip names
    extra: str | None = None            # the kftune extra that installs them

    @property
    def install(self) -> str | None:
        """The install command for the packages this tokenizer needs (``None``: nothing to install)."""
        return f"pip install 'kftune[{self.extra}]'" if self.extra else None

    def option(self, key_or_attr: str) -> TokenizerOption | None:
        return next((o for o in self.options if key_or_attr in (o.key, o.attr)), None)


TOKENIZERS: Mapping[str, TokenizerKind] = MappingProxyType({k.name: k for k in (
    TokenizerKind("regex", "words and single punctuation marks (the default for csv, tsv and fasttext)"),
    TokenizerKind("whitespace", "split on whitespace (what trec, conll and conllu are; their default)"),
    TokenizerKind("char", "characters, spaces dropped", (
        TokenizerOption("boundaries", "boundaries", "bool", False, "put a ▁ token between words"),)),
    TokenizerKind("morpheme", "Korean morphemes from the kiwipiepy analyzer, as form/TAG", (
        TokenizerOption("tags", "tags", "bool", True, "append the part-of-speech tag: 영화/NNG (false: 영화)"),),
        modules=("kiwipiepy", "kiwipiepy_model"), distributions=("kiwipiepy", "kiwipiepy-model"), extra="korean"),
    TokenizerKind("subword", "SentencePiece subwords trained on the train split", (
        TokenizerOption("vocabSize", "vocab_size", "int", 8000, "size of the subword vocabulary", lo=100,
                        hi=1_000_000),
        TokenizerOption("modelType", "model_type", "choice", "unigram", "SentencePiece model type",
                        choices=("unigram", "bpe"))),
        modules=("sentencepiece",), distributions=("sentencepiece",), extra="subword"),
)})
TOKENIZER_TYPES: tuple[str, ...] = tuple(TOKENIZERS)
#: Formats whose files come tokenized: their default is ``whitespace`` (their own tokens).
PRETOKENIZED_FORMATS: tuple[str, ...] = ("trec", "conll", "conllu")
#: Formats whose tokens carry tags (sequence labelling): ``whitespace`` is the only choice.
TAGGED_FORMATS: tuple[str, ...] = ("conll", "conllu")


@dataclass(frozen=True)
class TokenizerChoice:
    """A checked choice: ``type`` and every option (snake_case attributes, defaults filled in)."""

    type: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_spec(self) -> str | dict[str, Any]:
        """As the spec writes it: the bare name when every option is at its default, else a mapping."""
        kind = TOKENIZERS[self.type]
        changed = {o.key: self.options[o.attr] for o in kind.options if self.options.get(o.attr, o.default) != o.default}
        return {"type": self.type, **changed} if changed else self.type

    def to_dict(self) -> dict[str, Any]:
        """``{"type": ..., option attr: value, ...}`` (snake_case, every option)."""
        return {"type": self.type, **dict(self.options)}


def default_tokenizer(fmt: str) -> str:
    """The tokenizer a corpus of file format ``fmt`` gets when neither the spec nor the registry names one."""
    return "whitespace" if fmt in PRETOKENIZED_FORMATS else "regex"


def _choices_text() -> str:
    return ", ".join(TOKENIZER_TYPES)


def _type_problem(value: Any, path: str) -> Problem:
    guess = None
    if isinstance(value, str):
        close = difflib.get_close_matches(value.lower(), TOKENIZER_TYPES, n=1, cutoff=0.6)
        guess = close[0] if close else None
    return Problem(path, f"{value!r} is not a tokenizer" + (f'; did you mean "{guess}"?' if guess else "")
                   + f" (choices: {_choices_text()})")


def _check_option(opt: TokenizerOption, value: Any, path: str) -> tuple[Any, Problem | None]:
    if opt.type == "bool":
        if not isinstance(value, bool):
            return None, Problem(path, f"{value!r} is not a boolean (true or false)")
    elif opt.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, Problem(path, f"{value!r} is not an integer")
        if (opt.lo is not None and value < opt.lo) or (opt.hi is not None and value > opt.hi):
            return None, Problem(path, f"{value} is out of range: must be in [{opt.lo}, {opt.hi}]")
    elif value not in opt.choices:
        return None, Problem(path, f"{value!r} is not one of: {', '.join(opt.choices)}")
    return value, None


def parse_tokenizer(value: Any, path: str) -> tuple[TokenizerChoice | None, list[Problem]]:
    """A tokenizer choice from its spec form: a name or a mapping ``{type: NAME, option: value, ...}``
    (options in the spec's camelCase). ``(None, [])`` for ``None``; ``(None, problems)`` when invalid."""
    if value is None:
        return None, []
    if isinstance(value, TokenizerChoice):
        return value, []
    if isinstance(value, str):
        if value not in TOKENIZERS:
            return None, [_type_problem(value, path)]
        kind = TOKENIZERS[value]
        return TokenizerChoice(value, MappingProxyType({o.attr: o.default for o in kind.options})), []
    if not isinstance(value, Mapping):
        return None, [Problem(path, f"{value!r} is neither a tokenizer name ({_choices_text()}) nor a mapping "
                                    "such as {type: subword, vocabSize: 8000}")]
    name = value.get("type")
    if name is None:
        return None, [Problem(f"{path}.type", f"required: one of {_choices_text()}")]
    if not isinstance(name, str) or name not in TOKENIZERS:
        return None, [_type_problem(name, f"{path}.type")]
    kind = TOKENIZERS[name]
    problems: list[Problem] = []
    options = {o.attr: o.default for o in kind.options}
    keys = [o.key for o in kind.options]
    for key, raw in value.items():
        if key == "type":
            continue
        opt = next((o for o in kind.options if o.key == key), None)
        if opt is None:
            close = kind.option(str(key))
            guess = close.key if close else (difflib.get_close_matches(str(key), keys, n=1, cutoff=0.6) or [None])[0]
            problems.append(Problem(f"{path}.{key}", f"not an option of tokenizer {name}"
                                    + (f'; did you mean "{guess}"?' if guess else "")
                                    + f" ({'its options: ' + ', '.join(keys) if keys else 'it has no options'})"))
            continue
        parsed, problem = _check_option(opt, raw, f"{path}.{key}")
        if problem is not None:
            problems.append(problem)
        else:
            options[opt.attr] = parsed
    if problems:
        return None, problems
    return TokenizerChoice(name, MappingProxyType(options)), []


def missing_packages(name: str) -> list[str]:
    """The pip names of the packages tokenizer ``name`` needs that are not importable here."""
    kind = TOKENIZERS[name]
    missing = []
    for module, dist in zip(kind.modules, kind.distributions):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(dist)
    return missing


def missing_package_problem(name: str, path: str, why: str = "") -> Problem | None:
    """A problem naming the missing package(s) and the install command, or ``None`` when all are there."""
    missing = missing_packages(name)
    if not missing:
        return None
    kind = TOKENIZERS[name]
    return Problem(path, f"{why}tokenizer {name} needs the Python package {' and '.join(missing)}, which is not "
                         f"installed: run {kind.install} (or pip install {' '.join(kind.distributions)})")


def check_tokenizer(value: Any, path: str, *, fmt: str | None, registry_default: str | None = None,
                    corpus: str | None = None) -> tuple[TokenizerChoice | None, list[Problem]]:
    """The effective tokenizer of a corpus and every problem with it: ``value`` as the spec or config gives
    it (``None``: the registry's default for the corpus, else the format's), checked against the format
    (conll/conllu take only ``whitespace``) and against the installed packages."""
    choice, problems = parse_tokenizer(value, path)
    if problems:
        return None, problems
    why = ""
    if choice is None:
        if fmt is None:
            return None, []
        name = registry_default or default_tokenizer(fmt)
        choice, _ = parse_tokenizer(name, path)
        assert choice is not None
        why = f"{corpus or 'the corpus'}'s default tokenizer is {name} (set {path} to choose another); "
    if fmt in TAGGED_FORMATS and choice.type != "whitespace":
        problems.append(Problem(path, f"format {fmt} comes tokenized (one token per line, each with its tag), so "
                                      f"the tokenizer must be whitespace, not {choice.type}"))
        return None, problems
    missing = missing_package_problem(choice.type, path, why)
    if missing is not None:
        problems.append(missing)
        return None, problems
    return choice, []
