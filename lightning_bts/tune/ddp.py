"""Multi-worker Tune trials: each trial is one Ray Train run of N data-parallel workers (``--workers-per-trial``).

The Tune trial itself reserves nothing and only drives a :class:`ray.train.torch.TorchTrainer`; its N workers
(each with the per-worker resources, on any nodes of the cluster) run the same
:func:`~lightning_bts.training.train.train` as fit.py, with Ray's ``RayDDPStrategy`` and ``RayLightningEnvironment``
in place of Lightning's own launcher.
Metrics reach Tune through Ray's ``TuneReportCallback``, so ASHA stops a multi-worker trial as it stops any other.

Where things go, per trial ``EXPERIMENT_DIR/TRIAL/``: Lightning's logs under ``lightning/`` (written by rank 0),
Ray Train's runs and checkpoints under ``ray_train/train`` (``ray_train/fold<k>`` with ``--cv``). A retried trial
starts a Ray Train run with the same name and storage, which Ray Train restores, so the workers resume from its
latest checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pytorch_lightning import Callback, LightningModule, Trainer

from lightning_bts.training.config import Config
from lightning_bts.tune.settings import Resources
from lightning_bts.tune.space import METRIC, MODE
from lightning_bts.tune.trial import CHECKPOINT_FILE, _train_folds
from lightning_bts.tune.trial_args import with_overrides

RUNS_DIR = "ray_train"  # per trial: Ray Train's storage
# The Tune trial only waits on its Ray Train run, so it reserves memory, not a CPU (Ray's default of 1 CPU
# would keep 2 workers of 1 CPU off a 2-CPU machine). Ray Train's workers reserve the per-worker resources.
DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}


class RayTrainReport(Callback):
    """After every validation epoch, each worker calls ``ray.train.report`` (a collective) with Tune's metric
    names; rank 0 attaches the checkpoint. ``val/dice`` is the same on every rank: torchmetrics syncs on compute.
    """

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        import ray.train

        logged = trainer.callback_metrics
        metrics = {METRIC: float(logged["val/dice"]), "val_loss": float(logged["val/loss"]),
                   "epoch": trainer.current_epoch, "world_size": trainer.world_size}
        with tempfile.TemporaryDirectory() as folder:
            trainer.save_checkpoint(Path(folder) / CHECKPOINT_FILE)  # every rank calls it; rank 0 writes
            checkpoint = ray.train.Checkpoint.from_directory(folder) if trainer.is_global_zero else None
            ray.train.report(metrics, checkpoint=checkpoint)


def fit_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: fit.py's training of ``loop_config["config"]`` with Ray's DDP strategy, resumed from
    Ray Train's latest checkpoint; ``loop_config["callbacks"]`` are added to its Trainer after the report."""
    import ray.train
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

    from lightning_bts.training.train import train

    os.environ.update(loop_config["env"])
    overrides = {"strategy": RayDDPStrategy(), "plugins": [RayLightningEnvironment()], "devices": "auto"}
    config = loop_config["config"].clone()
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else nullcontext() as folder:
        if folder:
            config.ckpt_path = str(Path(folder) / CHECKPOINT_FILE)
        train(config, callbacks=[RayTrainReport(), *loop_config["callbacks"]], trainer_overrides=overrides)


def fit_workers(config: Config, storage: Path, name: str, workers: int, resources: Resources,
                env: dict[str, str], report_to_tune: bool, callbacks: Sequence[Callback] = ()) -> Any:
    """One data-parallel fit.py run of ``config`` on ``workers`` Ray Train workers; returns Ray Train's ``Result``.

    Keeps the best checkpoint by ``val_dice`` (and Ray Train always keeps the latest, to resume from).
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    config = config.clone()
    config.version = time.strftime("%Y%m%d-%H%M%S")  # one log folder for all ranks
    trainer = TorchTrainer(
        fit_worker,
        train_loop_config={"config": config, "env": env, "callbacks": list(callbacks)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=resources.gpus > 0,
                                     resources_per_worker=resources.bundle()),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC,
                                                                checkpoint_score_order=MODE),
                             callbacks=[TuneReportCallback()] if report_to_tune else []),
    )
    return trainer.fit()


def run_ddp_trial(overrides: dict[str, Any], base_config: Config, folds: list[int] | None, env: dict[str, str],
                  experiment_dir: str, workers: int, resources: Resources, callbacks: Sequence[Callback] = ()) -> None:
    """The Tune trainable for multi-worker trials: one Ray Train run (or one per fold, reporting the running
    mean of the folds' Dice, as :func:`lightning_bts.tune.trial.run_trial` does)."""
    from ray import tune

    trial_dir = Path(experiment_dir) / Path(tune.get_context().get_trial_dir()).name
    config = with_overrides(base_config, overrides)
    config.output_dir = str(trial_dir / "lightning")
    storage = trial_dir / RUNS_DIR
    if folds is None:
        config.run_name = "train"
        fit_workers(config, storage, "train", workers, resources, env, report_to_tune=True, callbacks=callbacks)
        return

    def fit_fold(fold_config: Config, fold: int) -> tuple[float, Path | None]:
        result = fit_workers(fold_config, storage, f"fold{fold}", workers, resources, env, report_to_tune=False,
                             callbacks=callbacks)
        last = Path(result.checkpoint.path) / CHECKPOINT_FILE if result.checkpoint is not None else None
        return float(result.metrics[METRIC]), last

    _train_folds(config, folds, tune.get_checkpoint(), fit_fold)


def best_checkpoint(trial_dir: Path) -> Any:
    """The best-scoring checkpoint of a multi-worker trial's Ray Train run, or None."""
    from ray.train import Result

    run = trial_dir / RUNS_DIR / "train"
    if not run.is_dir():
        return None
    ray_train_log = logging.getLogger("ray.train")
    level = ray_train_log.level
    ray_train_log.setLevel(logging.WARNING)  # reading a run logs "A run snapshot was found ... start a new job?"
    try:
        result = Result.from_path(str(run))
    finally:
        ray_train_log.setLevel(level)
    return result.get_best_checkpoint(METRIC, MODE) if result.best_checkpoints else None
