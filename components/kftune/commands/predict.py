"""``kftune predict --model URI``: predict with a trained model from the shell.

Input, one text per record: ``--text`` (repeatable), else ``--input FILE`` (``-`` for stdin), else stdin.
A file is plain text (one text per line; empty lines give an empty-text record) or JSONL (``*.jsonl``,
or every line a JSON object) with the text in ``--text-field`` (default ``text``); the JSONL line's other
fields are copied to its output record, so ids survive.

Output: JSONL on stdout (or ``--output FILE``), one record per input, in input order, with the same fields
as the model server answers: classifiers give ``label`` (the spec's label name, e.g. 긍정), ``raw_label``
(as the corpus writes it), ``score`` and ``probabilities`` (the ``--top-k`` most probable); taggers give
``tokens``, ``tags``, ``tag_scores`` and ``spans``. Texts are read and predicted in chunks, so any input
size runs in bounded memory, with progress on stderr for large inputs.

Exit status: 0 done, 1 the model cannot be read, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

from kftune.core.errors import ConfigError, Problem
from kftune.steps._common import EXIT_OK, add_common_arguments, run_main

CHUNK = 4096  # texts read and predicted at a time
PROGRESS_FROM = 1000  # show progress from this many texts (when the count is known) or after it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kftune predict", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="URI",
                   help="the model file (model.pt of `kftune train` / `kftune run`): a path, a directory, or s3://...")
    p.add_argument("--text", action="append", default=[], help="a text to predict (repeatable)")
    p.add_argument("--input", metavar="FILE", help="a text file (one per line) or JSONL; '-' reads stdin")
    p.add_argument("--text-field", default="text", help="the JSONL field that holds the text (default: text)")
    p.add_argument("--output", metavar="FILE", help="write the JSONL here instead of stdout")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most probable labels in probabilities")
    p.add_argument("--batch-size", type=int, default=64, help="texts per model call (default 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    add_common_arguments(p)
    return p


def _check(args: argparse.Namespace) -> None:
    problems = []
    if args.text and args.input:
        problems.append(Problem("--input", "give texts with --text or --input, not both"))
    if args.top_k is not None and args.top_k < 1:
        problems.append(Problem("--top-k", f"{args.top_k} must be at least 1"))
    if args.batch_size < 1:
        problems.append(Problem("--batch-size", f"{args.batch_size} must be at least 1"))
    if args.input and args.input != "-" and not Path(args.input).is_file():
        problems.append(Problem("--input", f"{args.input}: no such file"))
    if problems:
        raise ConfigError(problems)


def _records(lines: Iterator[str], jsonl: bool | None, field: str, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(text, fields to copy) per input line. ``jsonl=None``: decided by the first non-empty line."""
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if jsonl is None and line.strip():
            jsonl = line.lstrip().startswith("{")
        if not jsonl:
            yield line, {}
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError([Problem(f"{source}:{n}", f"not a JSON object ({exc.msg}); write one JSON object "
                                                        "per line, or plain text without a leading '{'")]) from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise ConfigError([Problem(f"{source}:{n}", f"has no string field {field!r} (set --text-field)")])
        yield obj[field], {k: v for k, v in obj.items() if k != field}


def _chunks(items: Iterator[tuple[str, dict[str, Any]]], size: int) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    chunk: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _input(args: argparse.Namespace) -> tuple[Iterator[tuple[str, dict[str, Any]]], int | None, TextIO | None]:
    """The records to predict, their count when it is cheap to know, and a file to close."""
    if args.text:
        return ((t, {}) for t in args.text), len(args.text), None
    if args.input and args.input != "-":
        path = Path(args.input)
        with path.open("rb") as f:
            total = sum(1 for _ in f)
        handle = path.open(encoding="utf-8", errors="strict", newline="")
        jsonl = True if path.suffix == ".jsonl" else None
        return _records(handle, jsonl, args.text_field, args.input), total, handle
    if sys.stdin.isatty():
        raise ConfigError([Problem("--text", "no input: pass --text, --input FILE, or pipe texts to stdin")])
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="strict", newline="")
    return _records(stdin, None, args.text_field, "stdin"), None, None


def _body(args: argparse.Namespace) -> int:
    _check(args)
    from kftune._progress import Progress
    from kftune.io.store import open_store
    from kftune.nlp.model_io import load_model
    from kftune.nlp.predict import predict_records
    from kftune.nlp.trainer import resolve_device

    items, total, handle = _input(args)
    model = load_model(args.model, device=resolve_device(args.device), open_store=open_store)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    progress = Progress(total, "predict", unit="text") if total is None or total >= PROGRESS_FROM else None
    done = 0
    try:
        for chunk in _chunks(items, CHUNK):
            records = predict_records(model, [t for t, _ in chunk], batch_size=args.batch_size, top_k=args.top_k)
            for (text, extra), record in zip(chunk, records):
                out.write(json.dumps({**extra, "text": text, **record}, ensure_ascii=False) + "\n")
            out.flush()
            done += len(chunk)
            if progress is not None:
                progress.update(len(chunk))
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(args.input or "stdin", f"is not UTF-8 text ({exc.reason} at byte {exc.start} "
                                                          f"of a read block, after {done} texts)")]) from None
    finally:
        if progress is not None:
            progress.close()
        if handle is not None:
            handle.close()
        if args.output:
            out.close()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
