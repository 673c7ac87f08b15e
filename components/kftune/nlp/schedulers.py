"""Optimizers and learning-rate schedules from :class:`~kftune.nlp.config.Hyperparameters`.

| ``scheduler``   | what                                                       | stepped       |
| --------------- | ---------------------------------------------------------- | ------------- |
| plateau         | lr *= anneal_factor after ``anneal_patience`` epochs without a better dev score (Flair's AnnealOnPlateau) | per epoch, on the dev score |
| onecycle        | Smith's 1cycle: warm up to ``learning_rate`` for ``warmup_fraction`` of all steps, anneal (cosine) | per batch |
| linear_warmup   | linear warm-up for ``warmup_fraction`` of all steps, then linear decay to 0 (Flair's LinearSchedulerWithWarmup) | per batch |
| cyclic          | triangular cyclical lr between ``cyclic_base_lr`` and ``cyclic_max_lr`` (bounds from the LR range test), half-cycle of 2 epochs | per batch |
| none            | constant ``learning_rate``                                  | -             |

All schedules are built for ``max_epochs * steps_per_epoch`` steps, so stopping at an epoch
budget and resuming later follows the very same schedule.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import CyclicLR, LambdaLR, OneCycleLR, ReduceLROnPlateau

from kftune.nlp.config import Hyperparameters


def build_optimizer(params: Iterable[torch.nn.Parameter], hp: Hyperparameters) -> Optimizer:
    params = [p for p in params if p.requires_grad]
    if hp.optimizer == "sgd":
        return SGD(params, lr=hp.learning_rate, momentum=hp.momentum, weight_decay=hp.weight_decay)
    return AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)


class _LinearWarmupDecay:
    """lr factor: ``step / warmup`` while warming up, then linear decay to 0 at ``total``.
    A class (not a lambda) so ``LambdaLR.state_dict`` saves it."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


class Schedule:
    """One wrapper over torch's schedulers: ``after_batch()`` and ``after_epoch(dev_score)``."""

    def __init__(self, optimizer: Optimizer, hp: Hyperparameters, steps_per_epoch: int, max_epochs: int):
        self.kind = hp.scheduler
        self.optimizer = optimizer
        total = max(1, steps_per_epoch * max_epochs)
        self.scheduler: Any = None
        if self.kind == "plateau":
            self.scheduler = ReduceLROnPlateau(optimizer, mode="max", factor=hp.anneal_factor,
                                               patience=hp.anneal_patience, eps=0.0)
        elif self.kind == "onecycle":
            self.scheduler = OneCycleLR(optimizer, max_lr=hp.learning_rate, total_steps=total + 1,
                                        pct_start=max(hp.warmup_fraction, 1e-3), anneal_strategy="cos",
                                        cycle_momentum=hp.optimizer == "sgd" and hp.momentum > 0)
        elif self.kind == "linear_warmup":
            warmup = max(1, int(round(hp.warmup_fraction * total)))
            self.scheduler = LambdaLR(optimizer, _LinearWarmupDecay(warmup, total))
        elif self.kind == "cyclic":
            base = hp.cyclic_base_lr if hp.cyclic_base_lr is not None else hp.learning_rate / 10
            top = hp.cyclic_max_lr if hp.cyclic_max_lr is not None else hp.learning_rate
            self.scheduler = CyclicLR(optimizer, base_lr=base, max_lr=top, step_size_up=max(1, 2 * steps_per_epoch),
                                      mode="triangular",
                                      cycle_momentum=hp.optimizer == "sgd" and hp.momentum > 0)

    @property
    def per_batch(self) -> bool:
        return self.kind in ("onecycle", "linear_warmup", "cyclic")

    def after_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, dev_score: float) -> None:
        if self.kind == "plateau":
            self.scheduler.step(dev_score)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)
