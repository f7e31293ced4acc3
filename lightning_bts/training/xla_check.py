"""The XLA compile check behind ``scripts/xla_check.py``: a short training with a :class:`CompileMonitor` that counts
graph compilations and times steps per epoch (torch_xla's metrics). It runs a training, so it sits in the training
layer; the accelerator itself (:mod:`lightning_bts.xla.accelerator`) knows no training loop.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from lightning_bts.xla.accelerator import XLA_NAME, mark_step


def compile_stats() -> tuple[int, float]:
    """Graphs compiled so far in this process, and their total compile time in seconds (torch_xla metrics)."""
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    if data is None:
        return 0, 0.0
    count, total_ns = data[0], data[1]
    return int(count), float(total_ns) / 1e9


@dataclass
class EpochStats:
    """One training epoch (its validation included) as XLA saw it."""

    epoch: int
    compiles: int
    compile_s: float
    steps: int
    train_s: float

    @property
    def step_ms(self) -> float:
        return 1000.0 * self.train_s / max(self.steps, 1)


@dataclass
class CompileReport:
    """What :class:`CompileMonitor` measured: compiles before training (sanity validation), then per epoch."""

    setup_compiles: int = 0
    epochs: list[EpochStats] = field(default_factory=list)

    @property
    def compiles_after_warmup(self) -> int:
        """New graphs after the first epoch: 0 when shapes are fixed and nothing syncs in a step."""
        return sum(stats.compiles for stats in self.epochs[1:])

    @property
    def steps_after_warmup(self) -> int:
        return sum(stats.steps for stats in self.epochs[1:])

    @property
    def step_ms(self) -> float:
        """Mean training step time after the first epoch (the first epoch when there is only one)."""
        epochs = self.epochs[1:] or self.epochs
        steps = sum(stats.steps for stats in epochs)
        return 1000.0 * sum(stats.train_s for stats in epochs) / max(steps, 1)

    def summary_line(self) -> str:
        return (f"compiles_after_warmup={self.compiles_after_warmup} steps={self.steps_after_warmup} "
                f"step_ms={self.step_ms:.1f}")

    def lines(self) -> list[str]:
        rows = [f"before training (sanity validation): {self.setup_compiles} compiles"]
        rows += [f"epoch {s.epoch}: {s.compiles} compiles ({s.compile_s:.1f} s compiling), {s.steps} steps, "
                 f"{s.step_ms:.1f} ms/step" for s in self.epochs]
        return rows + [self.summary_line()]

    def to_json(self, path: Path) -> None:
        payload = {"setup_compiles": self.setup_compiles, "epochs": [asdict(stats) for stats in self.epochs]}
        Path(path).write_text(json.dumps(payload, indent=2))

    @classmethod
    def from_json(cls, path: Path) -> CompileReport:
        payload = json.loads(Path(path).read_text())
        return cls(payload["setup_compiles"], [EpochStats(**stats) for stats in payload["epochs"]])


class CompileMonitor(Callback):
    """Counts XLA graph compilations and times training steps per epoch, from ``torch_xla.debug.metrics``.

    An epoch's window runs from its start to the next epoch's start (or the end of training), so work that
    Lightning runs after ``on_train_epoch_end`` (epoch-level metric reduction, checkpoints) counts in the epoch
    that caused it. Step time is the training part of the epoch (to the start of validation, after waiting for
    the device) over its steps. With ``path``, global rank zero writes the report there as JSON after every epoch:
    under ``XLAStrategy`` training runs in spawned workers, and the file is how the report reaches the caller.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.report = CompileReport()
        self._mark: tuple[int, float] = (0, 0.0)
        self._epoch_start = 0.0
        self._train_s = 0.0
        self._steps = 0

    def _close_epoch(self, trainer: pl.Trainer) -> None:
        if self._steps == 0:
            return
        mark_step()  # the epoch's pending work compiles in its own window, whatever the callback order
        count, seconds = compile_stats()
        self.report.epochs.append(EpochStats(len(self.report.epochs), count - self._mark[0],
                                             seconds - self._mark[1], self._steps, self._train_s))
        self._mark, self._steps = (count, seconds), 0
        if self.path is not None and trainer.is_global_zero:
            self.report.to_json(self.path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = compile_stats()
        self.report = CompileReport(setup_compiles=self._mark[0])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_epoch(trainer)
        self._epoch_start = time.perf_counter()
        self._train_s = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._steps += 1

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._steps == 0:
            return
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()  # lazy execution is asynchronous: time the steps, not their tracing
        self._train_s = time.perf_counter() - self._epoch_start

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._steps and not self._train_s:  # no validation ran: time to the end of the epoch
            self._train_s = time.perf_counter() - self._epoch_start
        self._close_epoch(trainer)


def xla_check_config(epochs: int, image_size: int, devices: str | int, output_dir: str, batch_size: int,
                     extra: list[str] | tuple[str, ...] = ()) -> Any:
    """The XLA check's training configuration: a short fit of the default model on the sample, on the ``xla``
    accelerator. ``extra`` (fit.py arguments, e.g. ``--data.root``) apply on top and win.
    """
    from lightning_bts.training.config import parse_config

    config = parse_config([])
    config.accelerator, config.precision = XLA_NAME, "32-true"
    config.devices = int(devices) if str(devices).isdigit() else devices  # as --devices parses "1"
    config.trainer.max_epochs, config.trainer.log_every_n_steps = epochs, 1
    config.trainer.enable_progress_bar = False
    config.data.image_size, config.data.batch_size, config.data.num_workers = image_size, batch_size, 0
    config.model.hausdorff = False
    config.output_dir, config.run_name, config.version = output_dir, "xla_check", "0"
    return parse_config(extra, base=config)


def run_xla_check(config: Any, report_path: Path) -> tuple[CompileReport, Any]:
    """Trains on ``config`` (:func:`xla_check_config`) with a :class:`CompileMonitor`; returns its report and the
    :class:`~lightning_bts.training.train.TrainResult`. Without ``PJRT_DEVICE`` torch_xla picks TPU if attached,
    else CPU.
    """
    from lightning_bts.training.train import train

    result = train(config, callbacks=[CompileMonitor(report_path)])
    return CompileReport.from_json(report_path), result
