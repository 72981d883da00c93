"""The optimizer and the learning-rate schedule of a run, built from ``train.*``.

Defaults are every method's authors': Adam at a constant learning rate. The schedule is a pure
function of the step (no state of its own), so a resumed run takes exactly the learning rate an
uninterrupted one takes at every step.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from wtal.errors import WtalError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "step")

LearningRate = Callable[[int], float]  # step (1-based) -> the learning rate of that step


def make_optimizer(train, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``parameters`` at ``train.lr`` with ``train.weight_decay``:
    Adam (L2 added to the gradient, the authors' choice), AdamW (decoupled decay) or SGD with
    ``train.momentum``."""
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    raise WtalError(f"train.optimizer: expected one of {list(OPTIMIZERS)}, found {train.optimizer!r}")


def make_scheduler(train) -> LearningRate | None:
    """The learning rate at each step, or None for a constant ``train.lr`` (no warm-up).

    ``train.warmup`` steps rise linearly to ``train.lr`` (step s of the warm-up: lr * s / warmup);
    then ``none`` keeps it, ``cosine`` anneals it to ``train.min_lr`` at the last step
    (``train.iterations``), ``step`` multiplies it by ``train.gamma`` at each of ``train.milestones``
    (from that step on). A resumed run with other ``train.iterations`` stretches the cosine.
    """
    if train.scheduler not in SCHEDULERS:
        raise WtalError(f"train.scheduler: expected one of {list(SCHEDULERS)}, found {train.scheduler!r}")
    if train.scheduler == "none" and train.warmup == 0:
        return None
    base, warmup, iterations = train.lr, train.warmup, train.iterations
    milestones = sorted(train.milestones)

    def lr_at(step: int) -> float:
        if step <= warmup:
            return base * step / warmup
        if train.scheduler == "cosine":
            done = (step - warmup - 1) / max(1, iterations - warmup - 1)  # 0 at the first step after warm-up, 1 at the last
            return train.min_lr + (base - train.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
        if train.scheduler == "step":
            return base * train.gamma ** sum(step >= m for m in milestones)
        return base

    return lr_at


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
