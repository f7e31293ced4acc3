"""Wall-clock minutes beside every validation score, so that quality can be plotted against time.

Recipes are compared at equal time budgets (issue 13: "validation Dice against wall-clock minutes"), and an epoch
count says little when one recipe's epoch costs twice another's. :class:`WallClock` logs ``time/minutes``, the
minutes since training started (after the sanity check; validation time included), with each epoch's
validation metrics, so ``metrics.csv`` holds both columns in one row.
"""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

WALL_CLOCK_KEY = "time/minutes"


class WallClock(Callback):
    """Logs ``time/minutes`` (since the first training step's epoch began) at the end of each validation."""

    def __init__(self) -> None:
        self.start: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.monotonic()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.start is None:
            return
        # A CPU tensor: Lightning keeps a logged value's running reduction on the value's device, and a Python
        # float would become a tensor on the module's device: on XLA, new graphs to compile every epoch.
        pl_module.log(WALL_CLOCK_KEY, torch.tensor((time.monotonic() - self.start) / 60.0))
