"""Optimisers and learning-rate schedules, as plain functions you can plot.

Each schedule is a pure function of the optimiser step, ``factor(step) -> float``, the
multiplier of the base learning rate; `build_scheduler` wraps it in a
``torch.optim.lr_scheduler.LambdaLR`` that the `Trainer` steps once per optimiser step
(per batch). ``"plateau"`` is the exception: ``ReduceLROnPlateau`` watches the validation
Dice and is stepped after each validation. `lr_curve` returns the learning rate of every
step and `plot_lr_curve` draws it, so a notebook can look at a schedule before training.

* cosine with linear warm-up (Loshchilov & Hutter 2017, "SGDR"; warm-up: Goyal et al. 2017):
  ``factor = (s + 1) / W`` for ``s < W``, then ``m + (1 - m) (1 + cos(pi t)) / 2`` with
  ``t = (s - W) / (T - W)``, ``m`` = ``min_factor``;
* step: ``factor = gamma ** (s // step_size)``;
* poly (nnU-Net, Isensee et al. 2021): ``factor = (1 - s / T) ** power``;
* constant: ``factor = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("constant", "cosine", "step", "poly", "plateau")

__all__ = ["OPTIMIZERS", "SCHEDULERS", "build_optimizer", "build_scheduler", "constant_factor",
           "cosine_warmup_factor", "lr_curve", "plot_lr_curve", "poly_factor", "step_factor"]


def constant_factor(step: int) -> float:
    """1.0 at every step."""
    return 1.0


def cosine_warmup_factor(step: int, total_steps: int, warmup_steps: int = 0,
                         min_factor: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_factor`` at ``total_steps``.

    Args:
        step: optimiser steps taken so far (0 for the first step).
        total_steps: steps of the whole run.
        warmup_steps: steps of linear warm-up; step ``s < W`` gets ``(s + 1) / W``.
        min_factor: final multiplier (e.g. 0.01 ends at 1 % of the base rate).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_factor(step: int, step_size: int, gamma: float = 0.1) -> float:
    """Multiply by ``gamma`` every ``step_size`` steps."""
    return gamma ** (step // step_size)


def poly_factor(step: int, total_steps: int, power: float = 0.9) -> float:
    """``(1 - step / total_steps) ** power``, nnU-Net's default; 0 from ``total_steps`` on."""
    return max(0.0, 1.0 - step / max(1, total_steps)) ** power


@dataclass
class _Schedule:
    """A picklable ``step -> factor``; LambdaLR stores its fields in its state dict."""

    name: str
    total_steps: int
    warmup_steps: int = 0
    min_factor: float = 0.0
    step_size: int = 1
    gamma: float = 0.1
    power: float = 0.9

    def __call__(self, step: int) -> float:
        if self.name == "cosine":
            return cosine_warmup_factor(step, self.total_steps, self.warmup_steps, self.min_factor)
        if self.name == "step":
            return step_factor(step, self.step_size, self.gamma)
        if self.name == "poly":
            return poly_factor(step, self.total_steps, self.power)
        return constant_factor(step)


def build_optimizer(params: Iterable[torch.nn.Parameter] | Iterable[dict], name: str = "adamw",
                    lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.99,
                    nesterov: bool = True) -> torch.optim.Optimizer:
    """``torch.optim`` Adam, AdamW or SGD by name.

    Args:
        params: ``model.parameters()`` or parameter groups.
        name: ``"adam"`` (L2 penalty added to the gradient), ``"adamw"`` (decoupled weight
            decay, Loshchilov & Hutter 2019) or ``"sgd"``.
        lr: base learning rate.
        weight_decay: L2 / decoupled weight decay.
        momentum: SGD momentum (nnU-Net uses 0.99 with nesterov); ignored by Adam(W).
        nesterov: SGD Nesterov momentum.

    Raises:
        ValueError: unknown name, or ``lr <= 0``.
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                               nesterov=nesterov and momentum > 0)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, name: str = "cosine", *,
                    total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0,
                    step_size: int | None = None, gamma: float = 0.1, power: float = 0.9,
                    plateau_patience: int = 5, plateau_factor: float = 0.5
                    ) -> LRScheduler | ReduceLROnPlateau:
    """A learning-rate scheduler by name; all lengths count optimiser steps (batches).

    Args:
        optimizer: the optimiser whose rate is scheduled.
        name: one of `SCHEDULERS`.
        total_steps: optimiser steps in the whole run (``max_epochs * len(train_loader)``).
        warmup_steps: linear warm-up for ``"cosine"``.
        min_factor: final multiplier for ``"cosine"``.
        step_size: steps between decays for ``"step"`` (default: a third of the run).
        gamma: decay per ``"step"``.
        power: exponent of ``"poly"``.
        plateau_patience: validations without improvement before ``"plateau"`` lowers the rate.
        plateau_factor: multiplier applied by ``"plateau"``.

    Returns:
        ``LambdaLR`` (call ``.step()`` after each optimiser step) or, for ``"plateau"``,
        ``ReduceLROnPlateau(mode="max")`` (call ``.step(val_dice)`` after each validation).

    Raises:
        ValueError: unknown name or non-positive ``total_steps``.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if name == "plateau":
        return ReduceLROnPlateau(optimizer, mode="max", factor=plateau_factor,
                                 patience=plateau_patience)
    schedule = _Schedule(name, total_steps, warmup_steps, min_factor,
                         step_size or max(1, total_steps // 3), gamma, power)
    return LambdaLR(optimizer, schedule)


def lr_curve(name: str, lr: float = 1e-3, *, total_steps: int,
             metrics: Sequence[float] | None = None, **kwargs: Any) -> list[float]:
    """The learning rate used at each optimiser step, exactly as the `Trainer` applies it.

    Args:
        name: one of `SCHEDULERS`.
        lr: base learning rate.
        total_steps: number of steps to return.
        metrics: for ``"plateau"`` only, the validation Dice seen after each step (the
            curve then has one value per metric, and ``total_steps`` only sizes defaults).
        **kwargs: passed to `build_scheduler`.

    Returns:
        ``total_steps`` learning rates (``len(metrics)`` for ``"plateau"``).
    """
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = build_scheduler(optimizer, name, total_steps=total_steps, **kwargs)
    rates = []
    steps = len(metrics) if name == "plateau" and metrics is not None else total_steps
    for step in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(metrics[step] if metrics is not None else 0.0)
        else:
            scheduler.step()
    return rates


def plot_lr_curve(schedules: dict[str, dict[str, Any]] | None = None, lr: float = 1e-3,
                  total_steps: int = 1000, ax: Any = None) -> Any:
    """Plot several schedules' `lr_curve` on one axis.

    Args:
        schedules: ``{label: build_scheduler keyword arguments incl. "name"}``; default:
            cosine with 5 % warm-up, step, poly and constant.
        lr: base learning rate.
        total_steps: steps to draw.
        ax: a matplotlib axis to draw on (default: a new figure).

    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    schedules = schedules or {
        "cosine + warm-up": {"name": "cosine", "warmup_steps": total_steps // 20},
        "step": {"name": "step"},
        "poly (0.9)": {"name": "poly"},
        "constant": {"name": "constant"},
    }
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    for label, kwargs in schedules.items():
        kwargs = dict(kwargs)
        ax.plot(lr_curve(kwargs.pop("name"), lr, total_steps=total_steps, **kwargs), label=label)
    ax.set(xlabel="optimiser step", ylabel="learning rate", title="Learning-rate schedules")
    ax.legend()
    return fig
