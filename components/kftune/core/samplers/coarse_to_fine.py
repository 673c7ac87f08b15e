"""Coarse-to-fine: a random round over the whole space, then random rounds in ever smaller boxes.

Round 0 draws at random from the whole space. Each later round draws at random from the previous
round's space narrowed (:func:`kftune.core.space.narrow`) around the ``top_k`` best trials so far:
each numeric range shrinks to ``shrink`` times its width (log-aware for logUniform/logNormal) around
their values, never past the previous, and so never past the original, bounds; categoricals keep the
values the top-k used; discrete lists keep the values between the smallest and largest used.

Everything is derived from the history: trial ``i`` (in suggestion order) belongs to round
``min(i // round_size, rounds - 1)``; the last round takes every trial after the others. The round
size is the ``round_size`` setting, else ``ceil(maxTrialCount / rounds)``. Round ``r > 0`` starts only
when no trial of an earlier round is running (a barrier: its box depends on their results); until
then ``suggest`` returns fewer points than asked, or none, and the caller waits for a running trial.

"Best" ranks trials that reached a larger budget first (with successive halving, the survivors of the
highest rung), then by objective; completed and pruned trials with a finite objective take part,
failed ones do not. If no earlier trial has a result, the space is not narrowed.

Settings: ``rounds`` (3), ``top_k`` (3), ``shrink`` (0.5), ``round_size`` (from maxTrialCount),
``random_state`` (seeds the draws instead of the search seed).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kftune.core import limits
from kftune.core.errors import ConfigError, Problem
from kftune.core.samplers.base import SETTINGS_PATH, Sampler, SettingsReader, derive_seed
from kftune.core.space import SearchSpace, narrow
from kftune.core.trials import Assignment, Objective, Trial, sign

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoarseToFineConfig:
    """Validated coarse-to-fine settings; ``round_size`` resolved from maxTrialCount when not given."""

    rounds: int = 3
    top_k: int = 3
    shrink: float = 0.5
    round_size: int = 0
    random_state: int | None = None

    def round_of(self, index: int) -> int:
        """The round of the ``index``-th trial of a history (0-based)."""
        return min(index // self.round_size, self.rounds - 1)

    def round_start(self, r: int) -> int:
        """The history index where round ``r`` begins."""
        return r * self.round_size


def top_trials(history: Sequence[Trial], objective: Objective, k: int) -> list[Trial]:
    """The ``k`` best trials with a result: larger budget first, then better objective, then older."""
    s = sign(objective)
    pool = [(i, t) for i, t in enumerate(history) if t.state in ("completed", "pruned") and t.has_objective]
    pool.sort(key=lambda it: (-it[1].budget_used, -s * float(it[1].objective), it[0]))  # type: ignore[arg-type]
    return [t for _, t in pool[:k]]


class CoarseToFineSampler(Sampler):
    """kftune ``coarse-to-fine``: random rounds in boxes that shrink around the best trials."""

    name = "coarse-to-fine"
    known_settings = {
        "rounds": "int >= 1; number of rounds, the first over the whole space (default 3)",
        "top_k": "int >= 1; best trials each later round is centred on (default 3)",
        "shrink": "float in (0, 1]; factor each numeric range shrinks by per round (default 0.5)",
        "round_size": "int >= 1; trials per round (default ceil(maxTrialCount / rounds))",
        "random_state": "int; seeds the draws instead of the search seed",
    }

    def _read_settings(self, space: SearchSpace, settings: Mapping[str, Any] | None,
                       max_trials: int | None) -> CoarseToFineConfig:
        r = SettingsReader(settings, known=self.known_settings, algorithm=self.name)
        d = CoarseToFineConfig()
        rounds = r.int("rounds", d.rounds, minimum=1, maximum=limits.MAX_TRIALS, unit="rounds")
        top_k = r.int("top_k", d.top_k, minimum=1, maximum=limits.MAX_TRIALS, unit="trials")
        shrink = r.float("shrink", d.shrink, low=0, high=1)
        round_size = r.int("round_size", None, minimum=1, maximum=limits.MAX_TRIALS, unit="trials")
        random_state = r.seed("random_state")
        r.done()
        if round_size is None:
            if max_trials is None:
                raise ConfigError([Problem(f"{SETTINGS_PATH}.round_size",
                                           "coarse-to-fine needs the round size: set maxTrialCount (rounds share "
                                           "it) or the algorithm setting round_size")])
            round_size = max(1, math.ceil(max_trials / rounds))  # type: ignore[operator]
        return CoarseToFineConfig(rounds=rounds, top_k=top_k, shrink=shrink, round_size=round_size,  # type: ignore[arg-type]
                                  random_state=random_state)

    def config(self, space: SearchSpace, settings: Mapping[str, Any] | None = None, *,
               max_trials: int | None = None) -> CoarseToFineConfig:
        """The validated settings, with the round size resolved."""
        return self._read_settings(space, settings, max_trials)

    def round_spaces(self, space: SearchSpace, history: Sequence[Trial], config: CoarseToFineConfig,
                     objective: Objective, upto: int | None = None) -> list[SearchSpace]:
        """The space of each round ``0..upto`` (default: the round the next trial belongs to).

        Round ``r``'s space is round ``r-1``'s narrowed around the top-k of the trials of rounds
        ``< r`` (see the module docstring).
        """
        if upto is None:
            upto = config.round_of(len(history))
        spaces = [space]
        for r in range(1, upto + 1):
            earlier = list(history[: config.round_start(r)])
            top = top_trials(earlier, objective, config.top_k)
            if not top:
                log.warning("coarse-to-fine round %d: no earlier trial has a result; the space is not narrowed", r)
                spaces.append(spaces[-1])
                continue
            centre = {p.name: [t.assignment[p.name] for t in top if p.name in t.assignment] for p in space}
            spaces.append(narrow(spaces[-1], centre, config.shrink,
                                 reason=f"round {r}: top {len(top)} of {len(earlier)} trials "
                                        f"({', '.join(t.id for t in top)})"))
        return spaces

    def _suggest(self, space: SearchSpace, history: Sequence[Trial], n: int, *, seed: int, config: Any,
                 objective: Objective, max_trials: int | None) -> list[Assignment]:
        cfg: CoarseToFineConfig = config
        k = len(history)
        r = cfg.round_of(k)
        if r > 0:
            waiting = [t.id for t in history[: cfg.round_start(r)] if t.state == "running"]
            if waiting:
                log.info("coarse-to-fine round %d waits for %d running trial(s) of earlier rounds: %s",
                         r, len(waiting), ", ".join(waiting[:5]))
                return []
        if r < cfg.rounds - 1:
            n = min(n, cfg.round_start(r + 1) - k)  # the rest of this round; the next needs its results
        round_space = self.round_spaces(space, history, cfg, objective, upto=r)[-1]
        base = seed if cfg.random_state is None else cfg.random_state
        return round_space.sample(n, derive_seed(base, k))


suggest = CoarseToFineSampler().suggest
"""The sampler as a plain function: ``suggest(space, history, n, *, seed, settings, objective, max_trials)``."""
