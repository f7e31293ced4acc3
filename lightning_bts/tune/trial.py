"""One trial, the Tune trainable: a fit.py run (or one per fold with cross-validation) reporting ``val_dice`` to
Tune, resuming from its last Tune checkpoint when retried.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import Callback

from lightning_bts.training.config import Config
from lightning_bts.tune.cluster import _register_xla
from lightning_bts.tune.space import METRIC
from lightning_bts.tune.trial_args import with_overrides

CHECKPOINT_FILE = "checkpoint.ckpt"


# ------------------------------------------------------------------------------------------------- a trial


def run_trial(overrides: dict[str, Any], base_config: Config, folds: list[int] | None, env: dict[str, str],
              experiment_dir: str, callbacks: Sequence[Callback] = ()) -> None:
    """The Tune trainable: one fit.py run (or one run per fold) on ``base_config`` with the sampled ``overrides``,
    reporting ``val_dice`` to Tune. ``callbacks`` are added to every training's Trainer.

    Lightning's logs and checkpoints go to ``EXPERIMENT_DIR/TRIAL/lightning/`` (``output_dir``), beside Tune's
    files for the trial, as a fit.py run would write them.

    A retried trial resumes from its last Tune checkpoint: mid-training with ``ckpt_path`` for one fold,
    after the last finished fold for cross-validation.
    """
    from ray import tune

    os.environ.update(env)
    if env.get("PJRT_DEVICE"):
        _register_xla()
    trial_dir = Path(experiment_dir) / Path(tune.get_context().get_trial_dir()).name
    config = with_overrides(base_config, overrides)
    config.output_dir = str(trial_dir / "lightning")
    checkpoint = tune.get_checkpoint()
    if folds is None:
        _train_one(config, checkpoint, callbacks)
    else:
        _train_folds(config, folds, checkpoint, _fit_fold_here(callbacks))


def _train_one(config: Config, checkpoint: Any, callbacks: Sequence[Callback]) -> None:
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

    from lightning_bts.training.train import train

    report = TuneReportCheckpointCallback(metrics={METRIC: "val/dice", "val_loss": "val/loss"},
                                          filename=CHECKPOINT_FILE, on="validation_end")
    config.run_name = "train"
    if checkpoint is None:
        train(config, callbacks=[report, *callbacks])
        return
    with checkpoint.as_directory() as folder:
        config.ckpt_path = str(Path(folder) / CHECKPOINT_FILE)
        train(config, callbacks=[report, *callbacks])


FoldFit = Callable[[Config, int], tuple[float, Path | None]]  # (fold config, fold) -> (val/dice, last checkpoint)


def _fit_fold_here(callbacks: Sequence[Callback]) -> FoldFit:
    def fit_fold(config: Config, fold: int) -> tuple[float, Path | None]:
        from lightning_bts.training.train import train

        result = train(config, callbacks=callbacks)
        return result.metrics["val/dice"], result.last_checkpoint

    return fit_fold


def _train_folds(config: Config, folds: list[int], checkpoint: Any, fit_fold: FoldFit) -> None:
    """Train the folds not yet in ``checkpoint``, reporting the running mean of their Dice after each one."""
    from ray import tune

    with tempfile.TemporaryDirectory() as state_dir:
        state = Path(state_dir)
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                shutil.copytree(folder, state, dirs_exist_ok=True)
        scores = json.loads((state / "folds.json").read_text()) if (state / "folds.json").is_file() else {}
        for fold in folds:
            if str(fold) in scores:
                continue
            fold_config = config.clone()
            fold_config.data.fold, fold_config.run_name = fold, f"fold{fold}"
            score, last_checkpoint = fit_fold(fold_config, fold)
            scores[str(fold)] = score
            if last_checkpoint is not None:
                shutil.copy2(last_checkpoint, state / f"fold{fold}.ckpt")
            (state / "folds.json").write_text(json.dumps(scores))
            tune.report({METRIC: statistics.fmean(scores.values()), "folds_done": len(scores),
                         "fold": fold, "fold_val_dice": scores[str(fold)]},
                        checkpoint=tune.Checkpoint.from_directory(state))
