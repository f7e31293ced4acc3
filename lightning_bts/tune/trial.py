"""One trial, the Tune trainable: a fit.py run (or one per fold with cross-validation) reporting ``val_dice`` to
Tune, resuming from its last Tune checkpoint when retried.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_bts.tune.cluster import _register_xla
from lightning_bts.tune.space import METRIC
from lightning_bts.tune.trial_args import override_args

CHECKPOINT_FILE = "checkpoint.ckpt"
FAIL_ONCE_ENV = "BTS_TUNE_FAIL_ONCE"  # fault injection for tests: the first trial to see it raises once


# ------------------------------------------------------------------------------------------------- a trial


def run_trial(config: dict[str, Any], base_args: list[str], folds: list[int] | None, env: dict[str, str],
              experiment_dir: str) -> None:
    """The Tune trainable: one fit.py run (or one run per fold), reporting ``val_dice`` to Tune.

    Lightning's logs and checkpoints go to ``EXPERIMENT_DIR/TRIAL/lightning/`` (``--output_dir``), beside Tune's
    files for the trial, as a fit.py run would write them.

    A retried trial resumes from its last Tune checkpoint: mid-training with ``--ckpt_path`` for one fold,
    after the last finished fold for cross-validation.
    """
    from ray import tune

    os.environ.update(env)
    if env.get("PJRT_DEVICE"):
        _register_xla()
    _fail_once_if_asked()
    trial_dir = Path(experiment_dir) / Path(tune.get_context().get_trial_dir()).name
    args = base_args + override_args(config) + ["--output_dir", str(trial_dir / "lightning")]
    checkpoint = tune.get_checkpoint()
    if folds is None:
        _train_one(args, checkpoint)
    else:
        _train_folds(args, folds, checkpoint)


def _fail_once_if_asked() -> None:
    marker = os.environ.get(FAIL_ONCE_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    raise RuntimeError(f"injected trial failure ({FAIL_ONCE_ENV}={marker}); Tune should retry this trial")


def _train_one(args: list[str], checkpoint: Any) -> None:
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

    from lightning_bts.training.train import train

    report = TuneReportCheckpointCallback(metrics={METRIC: "val/dice", "val_loss": "val/loss"},
                                          filename=CHECKPOINT_FILE, on="validation_end")
    if checkpoint is None:
        train(args + ["--run_name", "train"], callbacks=[report])
        return
    with checkpoint.as_directory() as folder:
        train(args + ["--run_name", "train", "--ckpt_path", str(Path(folder) / CHECKPOINT_FILE)], callbacks=[report])


FoldFit = Callable[[list[str], int], tuple[float, Path | None]]  # (fold args, fold) -> (val/dice, last checkpoint)


def _fit_fold_here(args: list[str], fold: int) -> tuple[float, Path | None]:
    from lightning_bts.training.train import train

    result = train(args)
    return result.metrics["val/dice"], result.last_checkpoint


def _train_folds(args: list[str], folds: list[int], checkpoint: Any, fit_fold: FoldFit = _fit_fold_here) -> None:
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
            score, last_checkpoint = fit_fold(args + ["--data.fold", str(fold), "--run_name", f"fold{fold}"], fold)
            scores[str(fold)] = score
            if last_checkpoint is not None:
                shutil.copy2(last_checkpoint, state / f"fold{fold}.ckpt")
            (state / "folds.json").write_text(json.dumps(scores))
            tune.report({METRIC: statistics.fmean(scores.values()), "folds_done": len(scores),
                         "fold": fold, "fold_val_dice": scores[str(fold)]},
                        checkpoint=tune.Checkpoint.from_directory(state))
