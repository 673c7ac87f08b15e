"""Upper bounds on the numbers a spec may set, with their units: one table for every layer.

A number that passes validation is used as it is, in a pod, possibly hours later: an embedding with
``hidden_size: 9223372036854775808`` units or ``maxEpochs: 1e12`` would exhaust memory or time there instead
of failing here. So every count, size, seed and rate has an upper bound as well as a lower one. The bounds
are generous (far above what the models, the corpora and a cluster make sensible) and only stop values
that cannot be meant; ``docs/spec.md`` lists them, and ``tests/core/test_limits.py`` keeps that list and
this module in step.

:class:`Bound` is one interval with its unit; :meth:`Bound.problem` gives the message for a value outside
it, naming the bound that is broken and the unit (``"9000 is out of range: must be <= 8192 (units: hidden
units)"``). ``kftune.core.spec`` (the spec's own fields) and ``kftune.nlp.config`` (the model's
hyperparameters) both take their bounds from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Seeds are 32-bit: numpy's legacy ``RandomState`` (and so hyperopt) takes no more.
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 10_000
MAX_TRIALS = 10_000
MAX_PARALLEL_TRIALS = 1_000
MAX_TRAINING_RUNS = 100
MAX_BATCH_SIZE = 65_536
MAX_THREADS = 1_024
MAX_GPUS = 64
#: No optimizer kftune has trains at a learning rate above 10 (AdamW works near 1e-3, SGD near 0.1); the LR
#: range test may go far higher: its point is to find where training diverges.
MAX_LEARNING_RATE = 10.0
MAX_RANGE_TEST_LR = 1e6
#: The smallest learning rate the LR range test starts from (a denormal start makes ``end/start`` overflow).
MIN_RANGE_TEST_LR = 1e-12
MAX_RANGE_TEST_ITERATIONS = 100_000
#: Column indices of csv/tsv/conll corpora.
MAX_COLUMN = 10_000
#: Search parameters, values of one ``feasibleSpace.list``, values between ``min`` and ``max`` at ``step``.
MAX_PARAMETERS = 100
MAX_LIST_VALUES = 1_000
MAX_GRID_STEPS = 100_000_000
#: Entries of one ``algorithmSettings`` list (an algorithm takes at most a handful).
MAX_SETTINGS = 100
#: Corpora trained together (``spec.corpus.corpora``, Flair's MultiCorpus).
MAX_CORPORA = 16


@dataclass(frozen=True)
class Bound:
    """The interval a number must lie in (``None``: unbounded on that side), and its unit."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    unit: str = ""

    def contains(self, value: float) -> bool:
        """Whether ``value`` (a finite number, or a Python int of any size) lies in the interval."""
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return True

    def problem(self, value: Any, shown: str | None = None) -> str | None:
        """``None`` when ``value`` is inside, else ``"<value> is out of range: must be <= 8192 (units: ...)"``
        naming the side it breaks (the whole interval for a fraction that cannot be 0: ``must be in (0, 1]``). ``shown`` is how
        the value is written in the message (default ``repr``, shortened)."""
        if self.contains(value):
            return None
        if self.lo is not None and self.hi is not None and self.lo_open and self.hi - self.lo <= 1:
            side = f"in {self.text()}"  # a fraction that cannot be 0: the interval says it best
        elif self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            side = f"{'>' if self.lo_open else '>='} {fmt(self.lo)}"
        else:
            side = f"{'<' if self.hi_open else '<='} {fmt(self.hi)}"  # type: ignore[arg-type]
        shown = shown if shown is not None else short(value)
        return f"{shown} is out of range: must be {side}{self.units()}"

    def units(self) -> str:
        return f" (units: {self.unit})" if self.unit else ""

    def text(self) -> str:
        """The interval as docs write it: ``[1, 8192]``, ``(0, 10]``, ``>= 0``."""
        if self.lo is not None and self.hi is not None:
            return (f"{'(' if self.lo_open else '['}{fmt(self.lo)}, {fmt(self.hi)}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {fmt(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {fmt(self.hi)}"
        return "any number"


def fmt(x: float) -> str:
    """A bound as people write it: ``8192``, ``4294967295``, ``1e-12``, ``0.5``."""
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}"


def short(value: Any) -> str:
    """A value for a message, shortened: a 400-digit integer is not printed whole."""
    if isinstance(value, int) and value.bit_length() > 128:  # repr of one over 4300 digits even raises
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
