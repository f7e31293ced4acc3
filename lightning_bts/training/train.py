"""``train(args) -> TrainResult``: the one training function behind fit.py, cross-validation and Ray Tune."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from lightning_bts.training.cli import BTSCLI, MONITOR
from lightning_bts.training.preview import ValidationPreview


@dataclass(frozen=True)
class TrainResult:
    """Validation metrics of the last epoch, and where the run's files are."""

    metrics: dict[str, float]
    log_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    preview: Path | None = None  # validation_preview.png (lightning_bts.training.preview), if one was drawn


def train(args: Sequence[str] | None = None, callbacks: Sequence[Callback] = (),
          trainer_overrides: Mapping[str, Any] | None = None) -> TrainResult:
    """Parse ``args`` like ``scripts/fit.py`` does, train, and return the final validation metrics.

    The dataset is read and validated before the Trainer writes anything, so bad input leaves no run folder.
    ``trainer_overrides`` are Trainer arguments that win over the config (see :class:`BTSCLI`).
    """
    cli = BTSCLI(args=args, extra_callbacks=callbacks, trainer_overrides=trainer_overrides)
    try:
        cli.datamodule.load()
    except Exception:
        cli.release_run_dir()  # bad data leaves no run folder behind
        raise
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    checkpoints = [cb for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    last = next((cb.best_model_path for cb in checkpoints if cb.monitor is None and cb.best_model_path), None)
    best = next((cb.best_model_path for cb in checkpoints if cb.monitor == MONITOR and cb.best_model_path), None)
    metrics = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    preview = next((cb.path for cb in cli.trainer.callbacks if isinstance(cb, ValidationPreview)), None)
    return TrainResult(
        metrics=metrics,
        log_dir=Path(cli.trainer.log_dir),
        last_checkpoint=Path(last) if last else None,
        best_checkpoint=Path(best) if best else None,
        preview=preview,
    )
