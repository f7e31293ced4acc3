"""``train(args) -> TrainResult``: the one training function behind fit.py, cross-validation and Ray Tune."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from lightning_bts.cli import BTSCLI


@dataclass(frozen=True)
class TrainResult:
    """Validation metrics of the last epoch, and where the run's files are."""

    metrics: dict[str, float]
    log_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None


def train(args: Sequence[str] | None = None, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Parse ``args`` like ``scripts/fit.py`` does, train, and return the final validation metrics.

    The dataset is read and validated before the Trainer writes anything, so bad input leaves no run folder.
    """
    cli = BTSCLI(args=args, extra_callbacks=callbacks)
    cli.datamodule.load()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    checkpoint = next((cb for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
    metrics = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    return TrainResult(
        metrics=metrics,
        log_dir=Path(cli.trainer.log_dir),
        last_checkpoint=Path(checkpoint.last_model_path) if checkpoint and checkpoint.last_model_path else None,
        best_checkpoint=Path(checkpoint.best_model_path) if checkpoint and checkpoint.best_model_path else None,
    )
