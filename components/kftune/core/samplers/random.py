"""Random search: independent draws from the space's distributions (``hyperopt.rand``), as Katib's
``random`` algorithm (``pkg/suggestion/v1beta1/hyperopt/base_service.py``) does.

Settings: ``random_state`` (int) fixes the stream instead of the ``seed`` argument.
The draw for a call is seeded with ``(seed, len(history))``, so consecutive calls of a running search
give fresh points and a restarted search gives the same ones.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kftune.core.samplers.base import Sampler, SettingsReader, derive_seed
from kftune.core.space import SearchSpace
from kftune.core.trials import Assignment, Objective, Trial


class RandomSampler(Sampler):
    """Katib ``random``: ignores results; every point is an independent draw."""

    name = "random"
    known_settings = {"random_state": "int; seeds the draws instead of the search seed"}

    def _read_settings(self, space: SearchSpace, settings: Mapping[str, Any] | None,
                       max_trials: int | None) -> int | None:
        r = SettingsReader(settings, known=self.known_settings, algorithm=self.name)
        random_state = r.seed("random_state")
        r.done()
        return random_state

    def _suggest(self, space: SearchSpace, history: Sequence[Trial], n: int, *, seed: int, config: Any,
                 objective: Objective, max_trials: int | None) -> list[Assignment]:
        base = seed if config is None else config
        return space.sample(n, derive_seed(base, len(history)))


suggest = RandomSampler().suggest
"""The sampler as a plain function: ``suggest(space, history, n, *, seed, settings, objective, max_trials)``."""
