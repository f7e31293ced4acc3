"""What a training run prints: what a user can act on, nothing else.

Lightning prints a few lines on every run that say nothing to someone training on a CPU: "GPU available: False",
"TPU available: False", and an advertisement for a cloud logger. :func:`quiet_lightning` drops exactly those
(lines that report an accelerator in use, or any other message, still come through), and
:class:`RunHeader` prints the one line that matters instead: the device and precision the run trains with.
"""

from __future__ import annotations

import logging
import os
import sys
import types
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info

UNINFORMATIVE = ("GPU available: False", "TPU available: False", "HPU available: False", "💡 Tip:")


class _DropUninformative(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(UNINFORMATIVE)


_FILTER = _DropUninformative()


def tensorboard_without_tensorflow() -> None:
    """Make TensorBoard write its event files with its own TensorFlow stub, even where TensorFlow is installed.

    TensorBoard imports all of TensorFlow when it finds it (here it comes with the ``keras`` extra, for the parity
    checks): seconds of start-up and oneDNN banners for nothing, since writing scalars needs no TensorFlow.
    An importable ``tensorboard.compat.notf`` is TensorBoard's own switch for "always use the stub".
    """
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def quiet_lightning() -> None:
    """Drop Lightning's lines about absent accelerators and its advertisement (idempotent).

    Also silences the CSV logger's "exists and is not empty" warning: a run folder here is claimed fresh by
    :func:`lightning_bts.training.cli.claim_run_dir` and already holds ``config.yaml`` when the logger looks at it;
    and the model summary's note that it cannot size bf16-mixed parameters (autocast keeps them fp32, as it counts).
    """
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    # bf16 runs (the default on CPUs with AMX): the summary sizes parameters as fp32, which they are; nothing to act on.
    warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model summary")


class RunHeader(Callback):
    """Prints, once when fitting starts, where and how the run trains: ``device: cpu (2 threads), bf16-mixed``."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        if device.type == "cpu":
            where = f"cpu ({torch.get_num_threads()} threads of {os.cpu_count()} cores)"
        elif device.type == "cuda":
            where = f"{device} ({torch.cuda.get_device_name(device)})"
        else:
            where = str(device)
        devices = f", {trainer.world_size} processes" if trainer.world_size > 1 else ""
        rank_zero_info(f"device: {where}{devices}; precision: {trainer.precision}")
