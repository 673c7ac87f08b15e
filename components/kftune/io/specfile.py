"""Reading TuningJob spec files: YAML in, :class:`kftune.core.spec.TuningJob` out, or every problem at once.

- YAML is read with PyYAML's safe loader (no object construction from tags).
- A YAML syntax error becomes a :class:`ConfigError` whose source is ``FILE:LINE:COLUMN``.
- A key written twice in one mapping (YAML silently keeps the last) is a problem too.
- Each problem's message ends with the line it refers to, ``(line 31)`` (for a missing field, the line
  of the block that lacks it), while its path stays the field path; problems come in line order.
- The ``model`` block is checked by ``kftune.nlp.config.validate_model_block`` and search parameter names
  against ``kftune.nlp.config.HYPERPARAMETER_NAMES`` when that module provides them (it imports no torch).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Collection

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kftune.core.errors import ConfigError, Problem
from kftune.core.spec import ModelValidator, TuningJob, job_to_dict, parse_spec

log = logging.getLogger(__name__)

_NLP_CONFIG = "kftune.nlp.config"


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
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
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
        loader.dispose()
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
        text = file.read_text(encoding="utf-8")
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
