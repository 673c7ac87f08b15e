"""Weight statistics during training: Flair's ``write_weights`` (``train.writeWeights`` in the spec).

A :class:`WeightTracker` records, every :func:`record_interval` optimizer steps (a tenth of an epoch, as
Flair's trainer logs its ``weights.txt``), at the end of each epoch and once before the first step, one row
per tracked parameter tensor (the trainer calls :meth:`WeightTracker.record`):

    run, iteration (optimizer steps so far), epoch, parameter (its name in the model), numel,
    mean, std (population), norm (L2), and the values at ``samples`` fixed positions of the tensor

The positions are drawn once per tensor from a generator seeded with ``seed`` and the tensor's name (the
same positions in every run and process), so each ``sample_i`` column follows one weight through
training. :func:`weights_tsv` renders the rows (``weights.tsv``); :func:`kftune.nlp.plots.plot_weights`
draws them (``weights.png``).

Cost is bounded: at most ``max_tensors`` tensors are tracked (the first ones in the model's order; the
rest are counted in :attr:`WeightTracker.skipped`), and a record is one mean/std/norm reduction per tracked
tensor plus a gather of ``samples`` values, read back to the host in one transfer. Rows stay in memory
(about ``12 * epochs * tensors`` of them) and go into the trainer's checkpoints, so a resumed run writes
the same file as an uninterrupted one. Nothing here does I/O.
"""

from __future__ import annotations

import math
import random
from typing import Any, Iterable, Sequence

import torch

#: Values sampled per tensor (Flair's ``WeightExtractor`` takes 10).
DEFAULT_SAMPLES = 10
#: Tensors tracked at most (a BiLSTM-CRF with character features has about 20).
MAX_TENSORS = 64
#: Records per epoch: one every ``steps // RECORDS_PER_EPOCH`` optimizer steps (at least every step).
RECORDS_PER_EPOCH = 10
STAT_COLUMNS = ("run", "iteration", "epoch", "parameter", "numel", "mean", "std", "norm")


def record_interval(steps_per_epoch: int) -> int:
    """Optimizer steps between two records: a tenth of an epoch, at least 1 (Flair's ``modulo``)."""
    return max(1, steps_per_epoch // RECORDS_PER_EPOCH)


class WeightTracker:
    """Collects weight statistics of ``model``'s trainable parameters (see the module docstring).

    ``run`` is written into every row (several training runs share one file). Rows are lists:
    ``[run, iteration, epoch, name, numel, mean, std, norm, [sampled values]]``.
    """

    def __init__(self, model: torch.nn.Module, *, run: int = 1, samples: int = DEFAULT_SAMPLES,
                 max_tensors: int = MAX_TENSORS, seed: int = 0):
        if samples < 0 or max_tensors < 1:
            raise ValueError(f"samples ({samples}) must be >= 0 and max_tensors ({max_tensors}) >= 1")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.run = run
        self.samples = samples
        self.tensors = named[:max_tensors]
        self.skipped = len(named) - len(self.tensors)
        self.positions: dict[str, list[int]] = {}
        for name, p in self.tensors:
            numel = p.numel()
            rng = random.Random(f"{seed}:{name}")  # str seeds hash the same in every process
            self.positions[name] = sorted(rng.sample(range(numel), min(samples, numel)))
        self._index = {name: torch.tensor(pos, dtype=torch.long) for name, pos in self.positions.items()}
        self.rows: list[list[Any]] = []

    @torch.no_grad()
    def record(self, iteration: int, epoch: int) -> None:
        """Append one row per tracked tensor for the weights as they are now."""
        if not self.tensors:
            return
        stats, picked = [], []
        for name, p in self.tensors:
            w = p.detach()
            w = w.coalesce().to_dense() if w.is_sparse else w
            flat = w.reshape(-1).float()
            std = flat.std(unbiased=False) if flat.numel() > 1 else flat.new_zeros(())
            stats.append(torch.stack([flat.mean(), std, flat.norm()]))
            index = self._index[name]
            if index.device != flat.device:
                index = self._index[name] = index.to(flat.device)
            picked.append(flat[index])
        values = torch.cat([torch.cat(stats), *picked]).cpu().tolist()  # one transfer for all tensors
        offset = 3 * len(self.tensors)
        for i, (name, p) in enumerate(self.tensors):
            n = len(self.positions[name])
            mean, std, norm = values[3 * i:3 * i + 3]
            self.rows.append([self.run, int(iteration), int(epoch), name, p.numel(), mean, std, norm,
                              values[offset:offset + n]])
            offset += n

    def state_dict(self) -> dict[str, Any]:
        """The rows so far (a copy: checkpoints may be written in the background)."""
        return {"rows": [list(r[:8]) + [list(r[8])] for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.rows = [list(r[:8]) + [list(r[8])] for r in (state or {}).get("rows", [])]


def _num(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def weights_tsv(rows: Iterable[Sequence[Any]], samples: int = DEFAULT_SAMPLES) -> str:
    """``weights.tsv``: a header (:data:`STAT_COLUMNS`, then ``sample_0`` ... ``sample_{samples-1}``) and
    one line per row; a tensor with fewer elements than ``samples`` leaves the last cells empty."""
    lines = ["\t".join(STAT_COLUMNS + tuple(f"sample_{i}" for i in range(samples)))]
    for run, iteration, epoch, name, numel, mean, std, norm, values in rows:
        cells = [str(run), str(iteration), str(epoch), str(name), str(numel), _num(mean), _num(std), _num(norm)]
        cells += [_num(v) for v in values[:samples]] + [""] * max(0, samples - len(values))
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def read_weights_tsv(text: str) -> list[list[Any]]:
    """The rows of a ``weights.tsv`` (as :meth:`WeightTracker.record` makes them)."""
    lines = text.splitlines()
    out: list[list[Any]] = []
    for line in lines[1:]:
        if not line.strip():
            continue
        cells = line.split("\t")
        values = [float(c) for c in cells[8:] if c != ""]
        out.append([int(cells[0]), int(cells[1]), int(cells[2]), cells[3], int(cells[4]), float(cells[5]),
                    float(cells[6]), float(cells[7]), values])
    return out
