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
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import CyclicLR, LambdaLR, OneCycleLR, ReduceLROnPlateau

from kftune.nlp.config import Hyperparameters


def build_optimizer(params: Iterable[torch.nn.Parameter], hp: Hyperparameters,
                    sparse: Iterable[torch.nn.Parameter] = ()) -> Optimizer:
    """The optimizer the hyperparameters name: ``sgd``, ``adam`` or ``adamw``.

    ``adam`` is ``torch.optim.Adam``: its ``weight_decay`` is an L2 penalty added to the gradient, so it
    passes through the adaptive scaling (parameters with large gradient variance are decayed less);
    ``adamw`` is ``torch.optim.AdamW``, whose decay is decoupled from the gradient (Loshchilov and Hutter):
    every weight shrinks by ``lr * weight_decay`` per step. The same ``weight_decay`` value therefore means
    different things in the two (under Adam the penalty is rescaled per weight by the moments).

    Parameters in ``sparse`` get sparse gradients (the n-gram bag's ``EmbeddingBag``): Adam and AdamW then
    update only their touched rows, lazily (:class:`LazyAdam`, :class:`LazyAdamW`, as
    ``torch.optim.SparseAdam`` does; rows a batch did not touch are neither moved nor decayed), and SGD
    leaves them out of weight decay (torch's SGD cannot decay a sparse gradient)."""
    params = [p for p in params if p.requires_grad]
    sparse_ids = {id(p) for p in sparse}
    if not sparse_ids:
        if hp.optimizer == "sgd":
            return SGD(params, lr=hp.learning_rate, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.optimizer == "adam":
            return Adam(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        return AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    groups = [{"params": [p for p in params if id(p) not in sparse_ids]},
              {"params": [p for p in params if id(p) in sparse_ids]}]
    groups = [g for g in groups if g["params"]]
    if hp.optimizer == "sgd":
        groups[-1]["weight_decay"] = 0.0
        return SGD(groups, lr=hp.learning_rate, momentum=hp.momentum, weight_decay=hp.weight_decay)
    lazy = LazyAdam if hp.optimizer == "adam" else LazyAdamW
    return lazy(groups, lr=hp.learning_rate, weight_decay=hp.weight_decay)


def sparse_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of ``model`` that receive sparse gradients (``EmbeddingBag``/``Embedding`` with
    ``sparse=True``)."""
    out = []
    for module in model.modules():
        if isinstance(module, (torch.nn.EmbeddingBag, torch.nn.Embedding)) and module.sparse:
            out.append(module.weight)
    return out


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse gradients: the total 2-norm over
    every gradient (a sparse one's stored values, coalesced), then every gradient scaled by the same
    factor when it is above ``max_norm``."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    if not any(g.is_sparse for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    squares = []
    for g in grads:
        values = g.coalesce()._values() if g.is_sparse else g
        squares.append(values.detach().float().pow(2).sum())
    total = torch.stack(squares).sum().sqrt()
    factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.to(g.dtype))
    return total


class _LazyAdam(Optimizer):
    """Adam whose sparse-gradient parameters are updated lazily: only the rows a batch touched get their
    moments and weights updated (and decayed), with ``torch.optim.SparseAdam``'s arithmetic; dense
    parameters follow ``torch.optim.Adam`` / ``AdamW``. One optimizer, so every schedule and checkpoint of
    the trainer works unchanged. ``decoupled``: AdamW's decay (weights shrink by ``lr * weight_decay``)
    rather than Adam's L2 penalty (``weight_decay * w`` added to the gradient before the moments)."""

    decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        decoupled = self.decoupled
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()
                    rows, values = grad._indices()[0], grad._values()
                    w = p[rows]
                    if decay and not decoupled:  # L2: the touched rows' penalty joins their gradient
                        values = values.add(w, alpha=decay)
                    m = exp_avg[rows].mul_(beta1).add_(values, alpha=1 - beta1)
                    v = exp_avg_sq[rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
                    exp_avg[rows], exp_avg_sq[rows] = m, v
                    update = (m / bias1) / ((v / bias2).sqrt_().add_(eps))
                    if decay and decoupled:
                        w.mul_(1 - lr * decay)
                    p[rows] = w.add_(update, alpha=-lr)
                else:
                    grad = p.grad
                    if decay:
                        if decoupled:
                            p.mul_(1 - lr * decay)
                        else:
                            grad = grad.add(p, alpha=decay)
                    exp_avg.lerp_(grad, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (exp_avg_sq / bias2).sqrt_().add_(eps)
                    p.addcdiv_(exp_avg, denom, value=-lr / bias1)
        return loss


class LazyAdamW(_LazyAdam):
    """AdamW with lazy sparse rows (see :class:`_LazyAdam`): dense parameters follow ``torch.optim.AdamW``."""

    decoupled = True


class LazyAdam(_LazyAdam):
    """Adam with lazy sparse rows (see :class:`_LazyAdam`): dense parameters follow ``torch.optim.Adam``
    (L2 ``weight_decay``); a sparse row's L2 penalty is applied only in steps that touch it."""

    decoupled = False


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
