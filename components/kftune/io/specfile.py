"""Reading TuningJob spec files: YAML in, :class:`kftune.core.spec.TuningJob` out, or every problem at once.

- YAML is read with PyYAML's safe loader (no object construction from tags).
- Limits, checked before and while parsing, so that no input can hang the loader, exhaust its memory or
  end in a traceback: the file's size (:data:`MAX_SPEC_BYTES`, checked before it is read), control
  characters (named with their line and column), nesting depth (:data:`MAX_DEPTH`, aliases expanded),
  the number of values with every alias expanded (:data:`MAX_NODES`: a "billion laughs" document stops at
  the alias that crosses it), recursive aliases (``a: &x [*x]``), and numbers longer than
  :data:`MAX_NUMBER_CHARS` characters. All of them are checked while the document is composed, before any
  Python object is built and before the node graph is walked.
- A YAML syntax error, a limit crossed or a value YAML cannot build (``2001-13-45``) becomes a
  :class:`ConfigError` whose source is ``FILE:LINE:COLUMN``.
- A key written twice in one mapping (YAML silently keeps the last) is a problem too.
- Each problem's message ends with the line it refers to, ``(line 31)`` (for a missing field, the line
  of the block that lacks it), while its path stays the field path; problems come in line order.
- The ``model`` block is checked by ``kftune.nlp.config.validate_model_block`` and search parameter names
  against ``kftune.nlp.config.HYPERPARAMETER_NAMES`` when that module provides them (it imports no torch).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from pathlib import Path
from typing import Any, Collection

import yaml
from yaml.constructor import SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent, CollectionStartEvent, Event
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kftune.core.errors import ConfigError, Problem
from kftune.core.spec import ModelValidator, TuningJob, job_to_dict, parse_spec

log = logging.getLogger(__name__)

_NLP_CONFIG = "kftune.nlp.config"

#: The largest spec file (bytes of UTF-8): the examples are about 5 KiB. PyYAML's pure-Python scanner takes up
#: to about 2 s per MiB of the slowest text (multi-line plain or folded scalars) on a shared CPU, so that 256 KiB
#: keeps every input that passes this check under a second.
MAX_SPEC_BYTES = 256 << 10
#: The deepest nesting of mappings and lists, aliases expanded: a spec needs 6.
MAX_DEPTH = 64
#: The most values (scalars, mappings, lists) in a document with every alias expanded: the examples have
#: about 300. Composing and checking this many takes well under a second.
MAX_NODES = 5_000
#: The longest number (characters): no field takes more than 20 digits; longer ones only cost time
#: (``1:1:1:...`` is a base-60 integer that grows with every part).
MAX_NUMBER_CHARS = 100

# What YAML cannot hold (its reader refuses these): C0 controls but tab, LF and CR; DEL; C1 controls but
# NEL; surrogates; U+FFFE and U+FFFF.
_NOT_PRINTABLE = re.compile(r"[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")
_LINE_BREAK = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")


class _Refused(Exception):
    """Input the loader will not build: a limit crossed, a recursive alias, a value YAML cannot construct."""

    def __init__(self, message: str, mark: Mark | None):
        super().__init__(message)
        self.message, self.mark = message, mark


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting while it composes the node graph.

    Every node is counted as it is composed, and every alias as the number of nodes its anchor stands for
    (known when the alias is met: an anchor's node is complete by then, unless the alias is inside it,
    which is a recursive alias and refused). So the count is the size of the document with every alias
    expanded, reached in time linear in the text, and a "billion laughs" stops at the alias that crosses
    :data:`MAX_NODES`. Depth is tracked the same way: an alias reaches as deep as its anchor's height
    below the alias. Numbers longer than :data:`MAX_NUMBER_CHARS` are refused before ``int()`` sees them,
    and any error a constructor raises (``2001-13-45`` read as a date) is refused with the node's line.
    """

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0                               # collections open now
        self._reach = 0                               # deepest level reached in the node being composed
        self._nodes = 0                               # nodes so far, aliases expanded
        self._open: set[str] = set()                  # anchors of the collections being composed
        self._anchored: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, height) of its node

    def _count(self, nodes: int, event: Event, alias: str | None) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            if alias is not None:
                raise _Refused(f"the alias *{alias} makes the document expand to more than {MAX_NODES:,} values "
                               "(aliases of aliases: a \"billion laughs\"); a spec is far smaller",
                               event.start_mark)
            raise _Refused(f"more than {MAX_NODES:,} values; a spec is far smaller", event.start_mark)

    def _reach_to(self, level: int, event: Event, alias: str | None) -> None:
        self._reach = max(self._reach, level)
        if level > MAX_DEPTH:
            what = f"the alias *{alias} expands to" if alias is not None else "nested"
            raise _Refused(f"{what} more than {MAX_DEPTH} levels deep; a spec needs about 6", event.start_mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            anchor = event.anchor
            if anchor in self._open:
                raise _Refused(f"the alias *{anchor} is inside the node &{anchor} it refers to (a recursive "
                               "alias); a spec cannot contain itself", event.start_mark)
            if anchor in self._anchored:  # else undefined: the composer says so
                nodes, height = self._anchored[anchor]
                self._count(nodes, event, anchor)
                self._reach_to(self._depth + height, event, anchor)
            return super().compose_node(parent, index)
        first, outer_reach = self._nodes, self._reach
        self._reach = self._depth
        self._count(1, event, None)
        anchor = getattr(event, "anchor", None)
        collection = isinstance(event, CollectionStartEvent)
        if collection:
            self._depth += 1
            self._reach_to(self._depth, event, None)
            if anchor is not None:
                self._open.add(anchor)
        node = super().compose_node(parent, index)
        if collection:
            self._depth -= 1
            self._open.discard(anchor)
        if anchor is not None:
            self._anchored[anchor] = (self._nodes - first, self._reach - self._depth)
        self._reach = max(outer_reach, self._reach)
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
            kind = node.tag.rsplit(":", 1)[-1]
            shown = f"{node.value!r} " if isinstance(node, ScalarNode) and len(node.value) <= 40 else ""
            detail = f" ({exc})" if isinstance(exc, ValueError) and str(exc) else ""
            raise _Refused(f"{shown}is not a valid {kind}{detail}", node.start_mark) from None


def _bounded_number(construct: Any) -> Any:
    def check(loader: _BoundedLoader, node: ScalarNode) -> Any:
        if len(node.value) > MAX_NUMBER_CHARS:
            raise _Refused(f"a number of {len(node.value):,} characters; no field takes one longer than "
                           f"{MAX_NUMBER_CHARS}", node.start_mark)
        return construct(loader, node)
    return check


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _bounded_number(SafeConstructor.construct_yaml_int))
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _bounded_number(SafeConstructor.construct_yaml_float))


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of ``text[index]``, counting line breaks as YAML does."""
    line, start = 1, 0
    for match in _LINE_BREAK.finditer(text, 0, index):
        line, start = line + 1, match.end()
    return line, index - start + 1


def _too_large(size: str, source: str) -> None:
    raise ConfigError([Problem("", f"{size} bytes; a spec is at most {MAX_SPEC_BYTES:,} bytes (256 KiB), and "
                                   "nothing was parsed")], source)


def _check_text(text: str, source: str) -> None:
    """The limits on the text itself: its size, and characters YAML cannot hold (with line and column)."""
    if len(text) > MAX_SPEC_BYTES:  # at least as many bytes as characters
        _too_large(f"at least {len(text):,}", source)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        _too_large(f"{size:,}", source)
    match = _NOT_PRINTABLE.search(text)
    if match is None:
        return
    char = match.group()
    line, column = _position(text, match.start())
    name = unicodedata.name(char, "")
    what = (f"control character U+{ord(char):04X}" if unicodedata.category(char) == "Cc"
            else f"character U+{ord(char):04X}" + (f" ({name})" if name else ""))
    more = len(_NOT_PRINTABLE.findall(text)) - 1
    others = f" (and {more:,} more)" if more else ""
    raise ConfigError([Problem("", f"{what} at line {line}, column {column}{others}: YAML cannot hold it; a spec is "
                                   "plain text, so remove it")], f"{source}:{line}:{column}")


def model_hooks() -> tuple[ModelValidator | None, Collection[str] | None]:
    """``(validate_model_block, HYPERPARAMETER_NAMES)`` from ``kftune.nlp.config``; ``None`` for what it lacks."""
    try:
        import importlib

        module = importlib.import_module(_NLP_CONFIG)
    except ModuleNotFoundError as exc:
        if exc.name != _NLP_CONFIG:
            log.warning("cannot check the model block: importing %s failed: %s", _NLP_CONFIG, exc)
        return None, None
    except ImportError as exc:
        log.warning("cannot check the model block: importing %s failed: %s", _NLP_CONFIG, exc)
        return None, None
    validator = getattr(module, "validate_model_block", None)
    names = getattr(module, "HYPERPARAMETER_NAMES", None)
    return (validator if callable(validator) else None), (frozenset(names) if names is not None else None)


def _index(node: Node | None, path: str, lines: dict[str, int], duplicates: list[tuple[int, Problem]]) -> None:
    """Record the 1-based line of every field path under ``node``, and keys set twice in a mapping."""
    if isinstance(node, MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            line = key_node.start_mark.line + 1
            sub = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                if key in seen:
                    duplicates.append((line, Problem(sub, f"set twice (lines {seen[key]} and {line}); YAML "
                                                          "keeps only the last one, so remove one")))
                else:
                    seen[key] = line
            lines.setdefault(sub, line)
            _index(value_node, sub, lines, duplicates)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            lines.setdefault(sub, item.start_mark.line + 1)
            _index(item, sub, lines, duplicates)


_PARENT = re.compile(r"(\.[^.\[\]]*|\[[0-9]+\])$")


def _line_of(path: str, lines: dict[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        shorter = _PARENT.sub("", path)
        if shorter == path:
            break
        path = shorter
    return None


def _in_line_order(located: list[tuple[int | None, Problem]]) -> list[Problem]:
    """Problems sorted by line (stable; those without a line last)."""
    ordered = sorted(enumerate(located), key=lambda item: (item[1][0] is None, item[1][0] or 0, item[0]))
    return [problem for _, (_, problem) in ordered]


def parse_spec_text(text: str, source: str = "<string>", *,
                    model_validator: ModelValidator | None = None,
                    hyperparameter_names: Collection[str] | None = None,
                    use_model_hooks: bool = True) -> TuningJob:
    """Parse and validate YAML text as a TuningJob. ``source`` names it in messages.

    Unless given, the model validator and hyperparameter names come from :func:`model_hooks`
    (``use_model_hooks=False`` turns that off). Raises :class:`ConfigError` with every problem.
    """
    try:
        return _parse(text, source, model_validator, hyperparameter_names, use_model_hooks)
    except RecursionError:  # not reachable within the limits above: a last line of defence
        raise ConfigError([Problem("", f"nested too deeply to check (more than {MAX_DEPTH} levels?)")],
                          source) from None
    except MemoryError:
        raise ConfigError([Problem("", "too large to check in the memory available")], source) from None


def _load(text: str, source: str) -> tuple[Node | None, Any]:
    """The YAML document as a node graph (for lines) and as Python data, within the limits."""
    _check_text(text, source)
    loader = None
    try:
        loader = _BoundedLoader(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        if exc.mark is None:
            raise ConfigError([Problem("", exc.message)], source) from None
        line, column = exc.mark.line + 1, exc.mark.column + 1
        raise ConfigError([Problem("", f"{exc.message} (line {line})")], f"{source}:{line}:{column}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        detail = exc.problem or exc.context or "cannot be parsed"
        if exc.context and exc.problem:
            cmark = exc.context_mark
            at = f" that starts at line {cmark.line + 1}, column {cmark.column + 1}" if cmark is not None else ""
            detail = f"{exc.problem} ({exc.context}{at})"
        raise ConfigError([Problem("", f"YAML syntax error: {detail}")], where) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"YAML syntax error: {exc}")], source) from exc
    finally:
        if loader is not None:
            loader.dispose()
    return node, data


def _parse(text: str, source: str, model_validator: ModelValidator | None,
           hyperparameter_names: Collection[str] | None, use_model_hooks: bool) -> TuningJob:
    node, data = _load(text, source)
    if data is None:
        raise ConfigError([Problem("", "the file is empty; a TuningJob spec starts with "
                                       "`apiVersion: kftune.dev/v1alpha1` (see examples/)")], source)
    lines: dict[str, int] = {}
    duplicates: list[tuple[int, Problem]] = []
    _index(node, "", lines, duplicates)
    if use_model_hooks and (model_validator is None or hyperparameter_names is None):
        hook_validator, hook_names = model_hooks()
        model_validator = model_validator or hook_validator
        hyperparameter_names = hyperparameter_names if hyperparameter_names is not None else hook_names
    located: list[tuple[int | None, Problem]] = list(duplicates)
    try:
        job = parse_spec(data, source=source, model_validator=model_validator,
                         hyperparameter_names=hyperparameter_names)
    except ConfigError as exc:
        for problem in exc.problems:
            line = _line_of(problem.path, lines)
            located.append((line, problem if line is None else
                            Problem(problem.path, f"{problem.message} (line {line})")))
    if located:
        raise ConfigError(_in_line_order(located), source)
    return job


def load_spec(path: str | Path, **kwargs: Any) -> TuningJob:
    """Read and validate the spec file at ``path`` (keyword arguments as :func:`parse_spec_text`).

    Raises :class:`ConfigError` for a missing or unreadable file, a YAML syntax error (with
    ``FILE:LINE:COLUMN``), or any problem in the spec (all of them, with field paths and lines).
    """
    source = str(path)
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_SPEC_BYTES:  # before reading any of it
            _too_large(f"{size:,}", source)
        with file.open("rb") as stream:  # a pipe or a device may say 0 and never end: read one byte more
            data = stream.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            _too_large(f"more than {MAX_SPEC_BYTES:,}", source)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem("", "no such file; give the path of a TuningJob spec "
                                       "(examples/ has specs to start from)")], source) from None
    except IsADirectoryError:
        raise ConfigError([Problem("", "is a directory, not a spec file")], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("", f"not UTF-8 text (byte {exc.start}); save the spec as UTF-8")],
                          source) from None
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read: {exc.strerror or exc}")], source) from None
    return parse_spec_text(text, source, **kwargs)


def dump_spec(job: TuningJob) -> str:
    """The job as YAML with every default spelled out (``load`` of it gives the same job)."""
    return yaml.safe_dump(job_to_dict(job), sort_keys=False, allow_unicode=True, width=100)
