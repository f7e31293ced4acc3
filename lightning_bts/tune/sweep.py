"""Ray Tune sweeps over the Lightning trainer, on a local Ray or an existing Ray cluster.

A trial is exactly a ``scripts/fit.py`` run: it calls :func:`lightning_bts.training.train.train` on the
configuration of the sweep's ``--config`` files and forwarded fit.py options (parsed once, here) with the sampled
values set (``config.model.lr = 0.0004`` ...), plus a callback that reports ``val/dice`` to Tune after every
validation epoch. With ``cv=True`` a trial trains the folds one after another and reports the running mean after
each fold (ASHA then stops bad trials after a fold). With ``workers_per_trial > 1`` a trial is instead a Ray Train
run of that many DDP workers (:mod:`lightning_bts.tune.ddp`).

Tune names the metric ``val_dice``: a ``/`` in a result key would be read as nesting by Tune's result tables.

Everything that can be checked before a trial starts is checked first (search-space keys and values, fit.py
options, per-trial resources against the cluster's nodes, the cluster address), so bad input fails in seconds
with a :class:`TuneSetupError` instead of a queue of trials that can never run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_bts.tune.cluster import (
    _live_node_resources,
    _ray_is_connected,
    _worker_room,
    accelerator_for,
    check_resources,
    check_workers,
    cluster_is_this_machine,
    connect,
    trial_env,
)
from lightning_bts.tune.results import write_results
from lightning_bts.tune.settings import SweepResult, SweepSettings
from lightning_bts.tune.space import METRIC, MODE, TuneSetupError, tune_space, validate_space
from lightning_bts.tune.trial import run_trial
from lightning_bts.tune.trial_args import TrainConfig, base_train_config

# ------------------------------------------------------------------------------------------------- a sweep


def run_sweep(settings: SweepSettings, tune_callbacks: Sequence[Any] = ()) -> SweepResult:
    """Run (or with ``settings.resume``, continue) a sweep on the connected Ray, then write its results.

    Uses the Ray this process is connected to, else joins ``settings.address`` or starts a local Ray, after
    the input has been checked. Results land in
    ``OUTPUT_DIR/NAME/``: trials.csv, trials.md, best_config.yaml (a fit.py ``--config``) and best_checkpoint/.
    ``tune_callbacks`` are :class:`ray.tune.Callback` objects for the driver (progress hooks, tests).
    """
    space = validate_space(settings.space)
    if settings.num_samples < 1:
        raise TuneSetupError(f"--num-samples must be >= 1, got {settings.num_samples}")
    if settings.search not in ("random", "optuna") or settings.scheduler not in ("asha", "fifo"):
        raise TuneSetupError(f"search must be random|optuna and scheduler asha|fifo, got {settings.search!r}, "
                             f"{settings.scheduler!r}")
    accelerator = accelerator_for(settings.resources, settings.accelerator)
    check_workers(settings.workers_per_trial, accelerator)
    parsed = base_train_config(SweepSettings(**{**settings.__dict__, "accelerator": accelerator}))
    config = parsed.config
    configured = config.get("accelerator") or config.trainer.get("accelerator")
    if isinstance(configured, str):  # e.g. trainer.accelerator: gpu in a config needs --gpus-per-trial too
        accelerator = accelerator_for(settings.resources, configured)
        check_workers(settings.workers_per_trial, accelerator)
    root = Path(config.data.root).expanduser().resolve()
    experiment_dir = Path(settings.output_dir).expanduser().resolve() / settings.name
    folds = list(range(config.data.num_folds)) if settings.cv else None
    for key, entry in space.items():  # each sampled value must also pass fit.py's checks
        for value in next(iter(entry.values())):
            parsed.check({key: value})

    local = not settings.address and not _ray_is_connected()
    if local:
        _check_root(root)  # before the seconds a local Ray takes to start
    connect(settings.address, settings.num_cpus, settings.connect_timeout_s)
    if not local and cluster_is_this_machine():
        _check_root(root)
    check_resources(settings.resources, settings.workers_per_trial)
    env = trial_env(settings.resources, accelerator, settings.trial_env)
    trainable = _trainable(parsed, folds, env, settings, experiment_dir)

    from ray import tune

    if settings.resume and tune.Tuner.can_restore(str(experiment_dir)):
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        if (experiment_dir / "tuner.pkl").exists() and not settings.resume:
            raise TuneSetupError(f"a sweep already exists in {experiment_dir}; pass --resume to continue it, "
                                 "or choose another --name/--output-dir")
        max_t = len(folds) if folds else int(config.trainer.max_epochs or 1)
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(space),
            tune_config=_tune_config(settings, max_t, _max_concurrent(settings)),
            run_config=tune.RunConfig(
                name=settings.name,
                storage_path=str(experiment_dir.parent),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=_checkpoint_config(cv=bool(folds)),
                callbacks=list(tune_callbacks),
                verbose=1,
            ),
        )
    grid = tuner.fit()
    return write_results(grid, experiment_dir, parsed, list(space), settings.num_samples, cv=bool(folds),
                         ddp=settings.workers_per_trial > 1)


def _checkpoint_config(cv: bool) -> Any:
    """Per trial: the best epoch's checkpoint; with ``cv`` the latest, the only one holding every fold (the
    metric after fold k is the mean of folds 0..k, so an early checkpoint can score higher than the full one)."""
    from ray import tune

    if cv:
        return tune.CheckpointConfig(num_to_keep=1)
    return tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE)


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise TuneSetupError(f"data.root {root} is not a directory (a relative data.root is read from the current "
                             "directory, as fit.py does)")


def _trainable(parsed: TrainConfig, folds: list[int] | None, env: dict[str, str], settings: SweepSettings,
               experiment_dir: Path) -> Any:
    """The trial function with everything but the sampled values bound (pickled to the trial processes)."""
    from ray import tune

    shared = {"base_config": parsed.config, "folds": folds, "env": env, "experiment_dir": str(experiment_dir),
              "callbacks": list(settings.callbacks)}
    if settings.workers_per_trial > 1:
        from lightning_bts.tune.ddp import DRIVER_RESOURCES, run_ddp_trial

        trainable = tune.with_parameters(run_ddp_trial, workers=settings.workers_per_trial,
                                         resources=settings.resources, **shared)
        return tune.with_resources(trainable, DRIVER_RESOURCES)
    trainable = tune.with_parameters(run_trial, **shared)
    return tune.with_resources(trainable, tune.PlacementGroupFactory([settings.resources.bundle()]))


def _max_concurrent(settings: SweepSettings) -> int | None:
    """For multi-worker trials, as many trials as the cluster has room for all their workers at once.

    Their Tune trials reserve nothing (Ray Train's workers do), so without a limit Tune would start every trial
    and leave most waiting for workers.
    """
    if settings.max_concurrent is not None or settings.workers_per_trial == 1:
        return settings.max_concurrent
    room = _worker_room(settings.resources.bundle(), _live_node_resources())
    return max(1, room // settings.workers_per_trial)


def _tune_config(settings: SweepSettings, max_t: int, max_concurrent: int | None) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    scheduler = (ASHAScheduler(max_t=max_t, grace_period=1, reduction_factor=2) if settings.scheduler == "asha"
                 else FIFOScheduler())
    search = None
    if settings.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(seed=settings.seed)
    return tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=settings.num_samples, scheduler=scheduler,
                           search_alg=search, max_concurrent_trials=max_concurrent, reuse_actors=False)
