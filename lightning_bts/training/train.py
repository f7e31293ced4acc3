"""``train(config) -> TrainResult``: the one training function behind fit.py, cross-validation, Ray Tune, the XLA
check and the benchmarks. ``config`` is a parsed configuration (:mod:`lightning_bts.training.config`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from lightning_bts.host_memory import keep_freed_memory
from lightning_bts.training.cli import BTSCLI, MONITOR
from lightning_bts.training.config import Config
from lightning_bts.training.preview import ValidationPreview


@dataclass(frozen=True)
class TrainResult:
    """Validation metrics of the last epoch, and where the run's files are."""

    metrics: dict[str, float]
    log_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    preview: Path | None = None  # validation_preview.png (lightning_bts.training.preview), if one was drawn


def train(config: Config | Mapping[str, Any], callbacks: Sequence[Callback] = (),
          trainer_overrides: Mapping[str, Any] | None = None) -> TrainResult:
    """Train on ``config`` and return the final validation metrics.

    ``config`` is what :func:`~lightning_bts.training.config.parse_config` returns (or its ``as_dict()``), changed
    at will; it is checked again here and not modified. The dataset is read and validated before the Trainer
    writes anything, so bad input leaves no run folder. ``trainer_overrides`` are Trainer arguments that win over
    the config (see :class:`BTSCLI`).

    Raises:
        ConfigError: an unknown key or a value of the wrong type in ``config``, named in the message.
        TypeError: ``config`` is a list of arguments (parse it first: ``train(parse_config(args))``).
    """
    if not isinstance(config, (Config, Mapping)):
        raise TypeError(f"train() takes a parsed configuration, got {type(config).__name__}; for command-line "
                        "arguments use train(parse_config(args)) (lightning_bts.training.config)")
    keep_freed_memory()  # a CPU step would page-fault its activations in again otherwise
    cli = BTSCLI(args=config, extra_callbacks=callbacks, trainer_overrides=trainer_overrides)
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
