"""Several corpora trained as one (Flair's ``MultiCorpus``): the rules they must follow together.

A spec names them in ``spec.corpus.corpora`` (each entry a corpus of its own: a registered ``name`` or a
``uri`` with a ``format``, plus an ``id``); the corpus step prepares each one as it would alone (the same
split, downsampling and stratification, with the spec's shared ``downsample``, ``devFraction``, ``seed``
and ``tokenizer``) and writes the union: one label dictionary, one tokenizer, every example tagged with its
corpus' id. So they must agree on what one model can learn from all of them:

- one task: text classification, or sequence labelling (not both);
- for tagging, one kind of tag: entity spans in one scheme (``BIO`` or ``BIOES``) or plain tags (POS);
  spans and plain tags, or two span schemes, cannot share one tag dictionary and one scorer;
- one tokenizer: the spec's ``tokenizer``, or the corpora's own defaults when they are the same;
- distinct ids (they name the corpora in the training log, ``loss.tsv``, ``result.json`` and the evaluation).

Pure functions (no I/O): :mod:`kftune.core.spec` checks a spec with them before any download, and
:mod:`kftune.steps.corpus` checks its config and, once the tags are read, the tag schemes it detected.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Sequence

from kftune.core.errors import Problem

#: How an id may be written in a spec (a derived one is cleaned to these characters).
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SPAN_SCHEMES = ("BIO", "BIOES")


def default_id(name: str | None, uri: str | None) -> str:
    """The id of a corpus that sets none: its registered name, else the file name of its ``uri`` without
    extensions (``data/questions.csv`` -> ``questions``), made of letters, digits, ``_``, ``.``, ``-``."""
    if name:
        return name
    path = urllib.parse.urlsplit((uri or "").partition("#")[0]).path
    stem = PurePosixPath(path.rstrip("/")).name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:64] or "corpus"


def scheme_text(scheme: str | None) -> str:
    """How a tag scheme is named in messages."""
    if scheme in SPAN_SCHEMES:
        return f"{scheme} tags (entity spans)"
    return "plain tags (no span scheme, e.g. POS)"


@dataclass(frozen=True)
class Source:
    """What the joint checks need of one corpus. ``task``: its task (``None``: unknown, reported elsewhere);
    ``tag_scheme``: ``BIO``, ``BIOES`` or ``none`` when known before reading (the registry's, or one the
    entry sets), else ``None``; ``tokenizer``: the tokenizer it gets when none is given (the registry's or the
    format's default); ``scheme_key``: the entry's field that set the scheme (for the problem's path)."""

    id: str
    task: str | None
    tag_scheme: str | None = None
    tokenizer: str | None = None
    scheme_key: str | None = None


def joint_problems(sources: Sequence[Source], path: str, *, tokenizer_path: str,
                   tokenizer_given: bool) -> list[Problem]:
    """The problems of ``sources`` trained together; ``path`` is the list's (``spec.corpus.corpora``)."""
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(sources):
        if s.id in seen:
            out.append(Problem(f"{path}[{i}].id", f"{s.id!r} is also the id of {path}[{seen[s.id]}]; give each "
                                                  "corpus its own id (ids name the corpora in the training log, "
                                                  "loss.tsv and the evaluation)"))
        else:
            seen[s.id] = i
    known = [(i, s) for i, s in enumerate(sources) if s.task is not None]
    if known:
        i0, first = known[0]
        for i, s in known[1:]:
            if s.task != first.task:
                out.append(Problem(f"{path}[{i}]", f"{s.id} holds {s.task} data but {first.id} ({path}[{i0}]) holds "
                                                   f"{first.task} data: corpora trained together share one task and "
                                                   "one label dictionary; train them in separate jobs"))
        if all(s.task == "sequence_labeling" for _, s in known):
            out += _scheme_problems([(i, s.id, s.tag_scheme, s.scheme_key) for i, s in known], path)
    if not tokenizer_given:
        defaults = [(s.id, s.tokenizer) for s in sources if s.tokenizer is not None]
        if len({t for _, t in defaults}) > 1:
            shown = ", ".join(f"{cid}: {t}" for cid, t in defaults)
            out.append(Problem(tokenizer_path, f"the corpora tokenize differently by default ({shown}); one model "
                                               f"needs one tokenizer: set {tokenizer_path} (e.g. regex)"))
    return out


def _scheme_problems(items: Sequence[tuple[int, str, str | None, str | None]], path: str) -> list[Problem]:
    out = []
    known = [(i, cid, scheme, key) for i, cid, scheme, key in items if scheme is not None]
    if not known:
        return out
    i0, id0, scheme0, _ = known[0]
    for i, cid, scheme, key in known[1:]:
        if scheme != scheme0:
            out.append(scheme_problem(f"{path}[{i}]" + (f".{key}" if key else ""), cid, scheme, id0,
                                      f"{path}[{i0}]", scheme0))
    return out


def scheme_problem(path: str, corpus: str, scheme: str | None, other: str, other_path: str,
                   other_scheme: str | None) -> Problem:
    """The problem of two corpora whose tags cannot be joined (``None`` and ``"none"``: plain tags)."""
    if scheme in SPAN_SCHEMES and other_scheme in SPAN_SCHEMES:
        fix = "convert one corpus to the other's scheme, or train them in separate jobs"
    else:
        fix = "pair corpora with the same kind of tags (entity spans with entity spans, POS with POS)"
    return Problem(path, f"{corpus} has {scheme_text(scheme)} but {other} ({other_path}) has "
                         f"{scheme_text(other_scheme)}: corpora trained together share one tag dictionary and one "
                         f"scorer; {fix}")
