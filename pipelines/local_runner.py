"""KFP's local runner for ``kftune run``: the pipeline function, run on this machine, one line per task.

``kftune.commands.run`` reaches KFP only through :func:`run_pipeline` and :class:`PipelineFailed` (no ``kfp``
import under ``components/``). Every task is a subprocess of this Python (``kfp.local.SubprocessRunner(
use_venv=False)``), so the installed kftune is what runs. Its own output and the steps' logs go to
``<out>/run.log``; task start and end lines are echoed (:class:`TaskProgress`); the runner's temporary files
live in ``<out>/tmp`` and are removed at the end.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_LINE = re.compile(r"Executing task '([^']+)'|Task '([^']+)' finished with status (\w+)")
_ERROR_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupted|Exit)\b.*)$")


class TaskProgress(io.TextIOBase):
    """A stdout replacement: everything goes to ``log``; task start/finish lines are echoed to ``echo``.

    KFP's local runner logs its progress to stdout with ANSI colours, and the task subprocesses'
    output is printed there too; this keeps the terminal to one line per event.
    """

    def __init__(self, log_file: TextIO, echo: TextIO, started: float):
        self.log, self.echo, self.buffer_text, self.started = log_file, echo, "", started
        self.failed: list[str] = []
        self.finished = 0
        self.last_error: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.buffer_text += text
        while "\n" in self.buffer_text:
            line, self.buffer_text = self.buffer_text.split("\n", 1)
            clean = _ANSI.sub("", line)
            error = _ERROR_LINE.match(clean)
            if error is not None:
                self.last_error = error.group(1).strip()
            m = _TASK_LINE.search(clean)
            if m is None:
                continue
            elapsed = time.monotonic() - self.started
            if m.group(1):
                self.echo.write(f"[kftune {elapsed:6.1f}s] start  {m.group(1)}\n")
            else:
                self.finished += 1
                status = m.group(3)
                if status != "SUCCESS":
                    self.failed.append(m.group(2))
                self.echo.write(f"[kftune {elapsed:6.1f}s] {'done' if status == 'SUCCESS' else status.lower():6} "
                                f"{m.group(2)}\n")
            self.echo.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def failure(self, exc: BaseException) -> str:
        """One line for a failed run: the failed task and the last error a task printed."""
        task = ", ".join(self.failed) or None
        what = f"task {task} failed" if task else "failed"
        detail = self.last_error or (_ANSI.sub("", str(exc)).strip().splitlines() or [type(exc).__name__])[0]
        return f"{what}: {detail}"


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Any:
    """Set environment variables for the duration (the task subprocesses inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class PipelineFailed(Exception):
    """A task of a local run failed; the message is one line (the task and its last error)."""


def run_pipeline(pipeline: Any, arguments: dict[str, Any], out: Path, echo: TextIO) -> Any:
    """Run ``pipeline(**arguments)`` with KFP's local runner under ``out`` (see the module docstring)
    and return the pipeline task. Raises :class:`PipelineFailed` when a task fails, after cleaning up.
    """
    from kfp import local

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "tmp"
    tmp.mkdir(exist_ok=True)
    started = time.monotonic()
    threads = str(max(1, (os.cpu_count() or 1) // max(1, min(2, int(arguments.get("parallel_trials") or 1)))))
    env = {"TMPDIR": str(tmp)}
    if "OMP_NUM_THREADS" not in os.environ:  # local trials run two at a time: share the cores
        env["OMP_NUM_THREADS"] = threads
    root = logging.getLogger()
    with open(out / "run.log", "a", encoding="utf-8") as log_file:
        progress = TaskProgress(log_file, echo, started)
        # The runner swaps the root logger's handlers per task and puts back what it found, from
        # several threads at once: what it finds must be the capture, or lines escape to stderr.
        saved_handlers = root.handlers[:]
        # It also swaps builtins.print for an indenting one per task, from several threads: put it back.
        saved_print = builtins.print
        capture = logging.StreamHandler(progress)
        capture.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.handlers[:] = [capture]
        try:
            with _environment(env), contextlib.redirect_stdout(progress), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "custom image" and "accelerator has no effect" notes
                local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"),
                           workspace_root=str(tmp / "workspace"), raise_on_error=True)
                task = pipeline(**arguments)
        except Exception as exc:  # noqa: BLE001 - the runner raises RuntimeError/ValueError for a failed task
            raise PipelineFailed(progress.failure(exc)) from exc
        finally:
            root.handlers[:] = saved_handlers
            builtins.print = saved_print
            shutil.rmtree(tmp, ignore_errors=True)
    return task
