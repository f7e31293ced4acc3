"""Learning-rate schedules that end exactly when the run's budget does.

A run's budget is its step count (``trainer.max_epochs`` or ``max_steps``, as ``trainer.estimated_stepping_batches``
counts optimizer steps) and/or its wall-clock limit (``trainer.max_time``). The schedule's *progress* is the larger
of the two fractions spent, so a time-budgeted run reaches its final learning rate when time runs out, and an
epoch-budgeted one at its last step; whichever budget ends first ends the schedule.

Progress of optimizer step ``i`` (0-based) is ``i / (total_steps - 1)``: the last step runs *at* the end value. By
time, the scheduler sees only the time spent before the step, so it extrapolates one step ahead with the mean
time per step so far (validation included): ``f * i / (i - f)`` for a spent fraction ``f`` after ``i`` steps,
which equals ``i / (total_steps - 1)`` when steps take equal time. With uneven steps the last one lands within
about a step's worth of the end value, and progress never exceeds 1 (an overrun stays at the end value).

After ``warmup_steps`` steps of linear warm-up (step ``i`` scaled by ``(i + 1) / (warmup_steps + 1)``) the
scheduled rate is ``min_lr + (lr - min_lr) * decay(progress)``:

* ``cosine``: ``(1 + cos(pi * progress)) / 2``;
* ``poly``: ``(1 - progress) ** 0.9``, nnU-Net's polynomial decay;
* ``none`` and ``plateau``: constant (``plateau`` then lets ``ReduceLROnPlateau`` lower it, epoch by epoch).

The decay runs over the whole budget, warm-up included (the warm-up multiplies it), as timm's schedulers do by
default; so warm-up never shifts where the schedule ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from lightning_bts.errors import ConfigError

SCHEDULERS = ("none", "cosine", "poly", "plateau")
POLY_EXPONENT = 0.9  # nnU-Net's


def decay_factor(kind: str, progress: float) -> float:
    """The fraction of ``lr - min_lr`` left at ``progress`` in [0, 1]: 1 at the start, 0 at the end."""
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "poly":
        return (1.0 - progress) ** POLY_EXPONENT
    return 1.0


def time_progress(spent: float, steps: int) -> float:
    """Progress by time before step ``steps``, given the ``spent`` fraction of the time budget (module docstring)."""
    if steps <= 0 or spent <= 0:
        return 0.0
    if spent >= steps:  # one step took more than the whole budget
        return 1.0
    return min(1.0, spent * steps / (steps - spent))


class BudgetSchedule(LRScheduler):
    """Linear warm-up, then ``cosine``/``poly`` decay to ``min_lr`` that ends with the budget, or a constant.

    Step it after every optimizer step (Lightning: ``interval="step"``).

    Args:
        optimizer: its groups' ``lr`` are the peak rates.
        kind: one of :data:`SCHEDULERS`.
        total_steps: optimizer steps in the budget (``inf`` when only time bounds the run).
        warmup_steps: steps of linear warm-up (0: none).
        min_lr: the rate at the last step (``cosine``/``poly``).
        time_spent: returns the spent fraction of the time budget (0 at the start, 1 when time is up), or
            ``None`` without a time budget. Not saved with the scheduler's state: the caller passes it again.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str = "cosine", total_steps: float = math.inf,
                 warmup_steps: int = 0, min_lr: float = 0.0,
                 time_spent: Callable[[], float] | None = None) -> None:
        if kind not in SCHEDULERS:
            raise ConfigError(f"model.scheduler: unknown schedule {kind!r}; choose one of {', '.join(SCHEDULERS)}")
        if kind in ("cosine", "poly") and math.isinf(total_steps) and time_spent is None:
            raise ConfigError(f"model.scheduler={kind} needs a budget to end with: set trainer.max_epochs, "
                              "trainer.max_steps or trainer.max_time")
        self.kind, self.total_steps, self.warmup_steps, self.min_lr = kind, total_steps, warmup_steps, min_lr
        self.time_spent = time_spent
        super().__init__(optimizer)

    def progress(self) -> float:
        """Fraction of the budget spent when the coming step runs: 0 at the first step, 1 at the last."""
        step = self.last_epoch
        by_steps = step / (self.total_steps - 1) if 1 < self.total_steps < math.inf else 0.0
        by_time = time_progress(self.time_spent(), step) if self.time_spent is not None else 0.0
        return min(1.0, max(by_steps, by_time))

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        ramp = (step + 1) / (self.warmup_steps + 1) if step < self.warmup_steps else 1.0
        if self.kind in ("none", "plateau"):
            if step > self.warmup_steps:  # after warm-up, leave the rate to ReduceLROnPlateau (or constant)
                return [group["lr"] for group in self.optimizer.param_groups]
            return [base * ramp for base in self.base_lrs]
        factor = decay_factor(self.kind, self.progress())
        return [(self.min_lr + (base - self.min_lr) * factor) * ramp for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state without the clock (a function of the running Trainer, not picklable)."""
        return {key: value for key, value in super().state_dict().items() if key != "time_spent"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        time_spent = self.time_spent
        super().load_state_dict(state_dict)
        self.time_spent = time_spent


def steps_per_epoch(trainer: Any) -> int:
    """Optimizer steps per training epoch of ``trainer`` (loads the training data if not loaded yet, as
    ``trainer.estimated_stepping_batches`` does)."""
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    return max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))


def time_budget(trainer: Any) -> Callable[[], float] | None:
    """The spent fraction of ``trainer.max_time`` as a function, read from the Trainer's own ``Timer`` (the clock
    that stops the run, which also resumes with the run); ``None`` without ``max_time``."""
    from pytorch_lightning.callbacks import Timer

    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    if timer is None or timer.time_remaining() is None:
        return None
    duration = timer.time_elapsed() + timer.time_remaining()
    return lambda: timer.time_elapsed() / duration


def lightning_schedulers(optimizer: torch.optim.Optimizer, trainer: Any, kind: str, warmup_epochs: float = 0.0,
                         min_lr: float = 0.0, monitor: str = "val/dice") -> list[dict[str, Any]]:
    """Lightning's ``lr_scheduler`` configs for ``kind`` with ``warmup_epochs`` (fractional: rounded to steps).

    ``cosine``/``poly``/warm-up: one :class:`BudgetSchedule` stepped after every optimizer step, its budget from
    ``trainer.estimated_stepping_batches`` and ``trainer.max_time``. ``plateau``: ``ReduceLROnPlateau`` on
    ``monitor`` (halve after 2 epochs without improvement, not below ``min_lr``), after the warm-up if any.
    """
    warmup_steps = round(warmup_epochs * steps_per_epoch(trainer)) if warmup_epochs > 0 else 0
    configs = []
    if kind in ("cosine", "poly") or warmup_steps:
        schedule = BudgetSchedule(optimizer, kind, float(trainer.estimated_stepping_batches), warmup_steps, min_lr,
                                  time_budget(trainer))
        configs.append({"scheduler": schedule, "interval": "step", "frequency": 1})
    if kind == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2,
                                                             min_lr=min_lr)
        configs.append({"scheduler": plateau, "interval": "epoch", "monitor": monitor})
    return configs
