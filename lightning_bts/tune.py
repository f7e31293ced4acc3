"""Ray Tune sweeps over the Lightning trainer, on a local Ray or an existing Ray cluster.

A trial is exactly a ``scripts/fit.py`` run: it calls :func:`lightning_bts.train.train` with the sweep's
``--config`` files, the forwarded fit.py options and the sampled overrides (``--model.lr 0.0004`` ...), plus a
callback that reports ``val/dice`` to Tune after every validation epoch. With ``cv=True`` a trial trains the
folds one after another and reports the running mean after each fold (ASHA then stops bad trials after a fold).
With ``workers_per_trial > 1`` a trial is instead a Ray Train run of that many DDP workers
(:mod:`lightning_bts.tune_ddp`).

Tune names the metric ``val_dice``: a ``/`` in a result key would be read as nesting by Tune's result tables.

Everything that can be checked before a trial starts is checked first (search-space keys and values, fit.py
options, per-trial resources against the cluster's nodes, the cluster address), so bad input fails in seconds
with a :class:`TuneSetupError` instead of a queue of trials that can never run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import statistics
import tempfile
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_bts.cli import BTSCLI
from lightning_bts.errors import UserError
from lightning_bts.losses import LOSS_NAMES

METRIC = "val_dice"  # Tune's name for Lightning's val/dice
MODE = "max"
CHECKPOINT_FILE = "checkpoint.ckpt"
FAIL_ONCE_ENV = "BTS_TUNE_FAIL_ONCE"  # fault injection for tests: the first trial to see it raises once
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _non_negative(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# The options a sweep may tune, each with a check for one of its values (the same rules the classes enforce,
# checked here so a bad space fails before any trial starts). Extend by adding a key and its check.
TUNABLE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.lr": (_positive, "a number > 0"),
    "data.batch_size": (_positive_int, "an integer > 0"),
    "model.loss": (lambda v: v in LOSS_NAMES, f"one of {', '.join(LOSS_NAMES)}"),
    "model.focal_gamma": (_non_negative, "a number >= 0"),
    "model.focal_alpha": (lambda v: v is None or (_non_negative(v) and v <= 1), "null or a number in [0, 1]"),
    "model.dropout_scale": (_non_negative, "a number >= 0"),
    "model.base_filters": (_positive_int, "an integer > 0"),
    "data.augment": (_non_negative, "a number >= 0"),
}


class TuneSetupError(UserError):
    """Bad sweep input, found before any trial started."""


@dataclass(frozen=True)
class Resources:
    """What one trial reserves: CPUs, GPUs (fractions share a GPU) and TPU chips (Ray's custom ``TPU``)."""

    cpus: float = 1.0
    gpus: float = 0.0
    tpus: float = 0.0

    def bundle(self) -> dict[str, float]:
        """The Ray resource bundle, without zero entries."""
        wanted = {"CPU": self.cpus, "GPU": self.gpus, "TPU": self.tpus}
        return {name: float(amount) for name, amount in wanted.items() if amount}


@dataclass
class SweepSettings:
    """One sweep. ``train_args`` are fit.py options applied to every trial (``["--trainer.max_epochs", "2"]``)."""

    configs: Sequence[str | Path]
    space: Mapping[str, Mapping[str, Any]]
    output_dir: str | Path = "tune_runs"
    name: str = "sweep"
    train_args: Sequence[str] = ()
    num_samples: int = 8
    cv: bool = False
    search: str = "random"  # random | optuna
    scheduler: str = "asha"  # asha | fifo
    resources: Resources = field(default_factory=Resources)  # per worker with workers_per_trial > 1
    workers_per_trial: int = 1  # > 1: data-parallel trials through Ray Train (RayDDPStrategy), see run_ddp_trial
    accelerator: str | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    resume: bool = False
    seed: int = 42
    trial_env: Mapping[str, str] = field(default_factory=dict)
    address: str | None = None  # join this cluster; None: the connected Ray, else a new local one
    num_cpus: int | None = None  # CPUs of a new local Ray (None: all)
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class SweepResult:
    """Where a sweep's results are, and whether every trial finished (False after an interruption)."""

    experiment_dir: Path
    trials_csv: Path
    trials_md: Path
    best_config: Path | None
    best_checkpoint: Path | None
    best_metrics: dict[str, Any]
    best_overrides: dict[str, Any]
    complete: bool


# ----------------------------------------------------------------------------------------------- search space


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and validate a search-space YAML (see configs/tune_space.yaml)."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise TuneSetupError(f"cannot read search space {path}: {error}") from error
    return validate_space(spec, source=str(path))


def validate_space(spec: Any, source: str = "search space") -> dict[str, dict[str, Any]]:
    """Check every key is tunable and every distribution well-formed with valid values; return a plain dict."""
    if not isinstance(spec, Mapping) or not spec:
        raise TuneSetupError(f"{source}: expected a non-empty mapping KEY: {{DISTRIBUTION: ARGS}}, got {spec!r}")
    unknown = sorted(set(spec) - set(TUNABLE))
    if unknown:
        raise TuneSetupError(f"{source}: unknown search-space key(s) {', '.join(map(str, unknown))}; "
                             f"tunable keys are {', '.join(TUNABLE)}")
    space = {}
    for key, entry in spec.items():
        if not isinstance(entry, Mapping) or len(entry) != 1 or next(iter(entry)) not in DISTRIBUTIONS:
            raise TuneSetupError(f"{source}: {key} must be one of {{choice: [...]}}, {{uniform: [low, high]}}, "
                                 f"{{loguniform: [low, high]}}, {{randint: [low, high]}}; got {entry!r}")
        kind, args = next(iter(entry.items()))
        if not isinstance(args, list) or not args or (kind != "choice" and len(args) != 2):
            wanted = "a list of values" if kind == "choice" else "[low, high]"
            raise TuneSetupError(f"{source}: {key}: {kind} takes {wanted}, got {args!r}")
        numbers = all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
        if kind != "choice" and not (numbers and args[0] < args[1]):
            raise TuneSetupError(f"{source}: {key}: {kind} needs numbers low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise TuneSetupError(f"{source}: {key}: loguniform needs low > 0, got {args!r}")
        check, expected = TUNABLE[key]
        values = args if kind == "choice" else [args[0], args[1] - 1 if kind == "randint" else args[1]]
        bad = [v for v in values if not check(v)]
        if bad:
            raise TuneSetupError(f"{source}: {key} must be {expected}; {kind} {args!r} allows {bad[0]!r}")
        space[str(key)] = {kind: list(args)}
    return space


def tune_space(space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The validated space as Ray Tune samplers (OptunaSearch converts these itself)."""
    from ray import tune

    samplers = {"choice": lambda a: tune.choice(a), "uniform": lambda a: tune.uniform(*a),
                "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a)}
    return {key: samplers[kind](args) for key, entry in space.items() for kind, args in entry.items()}


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """Sampled values as fit.py options: ``{"model.lr": 0.001}`` -> ``["--model.lr=0.001"]``."""
    args = []
    for key, value in overrides.items():
        text = "null" if value is None else str(value.item() if hasattr(value, "item") else value)
        args.append(f"--{key}={text}")
    return args


# ------------------------------------------------------------------------------------------- fit.py options


class _ParseOnlyCLI(BTSCLI):
    """BTSCLI that parses its arguments and stops: no model, data or Trainer is built."""

    def _set_seed(self) -> None:
        pass

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


class TrainArgs:
    """Parses fit.py arguments on the driver, so errors show before trials start and paths can be resolved."""

    def __init__(self, args: Sequence[str]) -> None:
        try:
            with warnings.catch_warnings():  # "args and sys.argv both given": sys.argv is the sweep's own
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                self._cli = _ParseOnlyCLI(list(args))
        except SystemExit as error:  # jsonargparse printed the reason above
            raise TuneSetupError(f"fit.py options do not parse: {' '.join(args)}") from error
        self._cli.parser.exit_on_error = False
        self.config = self._cli.config

    def parse(self, args: Sequence[str]) -> Any:
        try:
            return self._cli.parser.parse_args(list(args))
        except ArgumentError as error:
            raise TuneSetupError(f"fit.py options do not parse ({error}): {' '.join(args)}") from error

    def dump(self, args: Sequence[str]) -> str:
        """The full LightningCLI config (what fit.py saves as config.yaml) that ``args`` describe."""
        return self._cli.parser.dump(self.parse(args))


def base_train_args(settings: SweepSettings) -> tuple[list[str], Any]:
    """Every trial's fit.py arguments before its overrides, with paths made absolute, and the parsed config.

    Trials run in their own working directory (and on a cluster, on another node), so config files, the data
    root and the preprocessing cache are resolved here, where they were written relative to.
    """
    if not settings.configs:
        raise TuneSetupError("a sweep needs at least one --config (the fit.py config the trials start from)")
    args = []
    for config in settings.configs:
        path = Path(config).expanduser()
        if not path.is_file():
            raise TuneSetupError(f"config file not found: {config}")
        args += ["--config", str(path.resolve())]
    args += list(settings.train_args)
    if settings.accelerator:
        args += ["--accelerator", settings.accelerator]
    parsed = TrainArgs(args)
    config = parsed.config
    for key in ("data.root", "data.cache_dir", "ckpt_path"):
        value = config.get(key)
        if value and not Path(value).is_absolute():
            args += [f"--{key}", str(Path(value).expanduser().resolve())]
    return args, parsed


# --------------------------------------------------------------------------------------------- Ray cluster


def connect(address: str | None = None, num_cpus: int | None = None, timeout_s: float = 10.0) -> None:
    """Join the Ray cluster at ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``), or start a local Ray.

    A TCP probe with a timeout comes first, because ``ray.init`` on an unreachable address retries for minutes.
    Does nothing when this process is already connected.
    """
    import ray

    if ray.is_initialized():
        return
    if num_cpus is not None and num_cpus <= 0:
        raise TuneSetupError(f"--num-cpus must be > 0, got {num_cpus}")
    if address:
        if address != "auto":
            host, _, port = address.removeprefix("ray://").rpartition(":")
            if not host or not port.isdigit():
                raise TuneSetupError(f"Ray address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
            try:
                socket.create_connection((host, int(port)), timeout=timeout_s).close()
            except OSError as error:
                raise TuneSetupError(f"cannot reach the Ray cluster at {address} within {timeout_s:g} s: {error}. "
                                     "Is `ray start --head` running there, and the port open?") from error
        package = str(Path(__file__).resolve().parent)
        try:  # ship this package's code to the workers; they need the same Python packages installed
            ray.init(address=address, runtime_env={"py_modules": [package]}, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            hint = ("" if os.environ.get("RAY_AUTH_MODE") else " If the cluster uses token authentication (recent "
                    "Ray versions enable it by default), set RAY_AUTH_MODE=token here, with the cluster's token in "
                    "RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head node prints it).")
            raise TuneSetupError(f"cannot join the Ray cluster at {address}: {error}.{hint}") from error
    else:
        # "local": a new Ray even where `ray start` left a cluster that ray.init() would otherwise join
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=256 * 1024**2)


def accelerator_for(resources: Resources, accelerator: str | None) -> str | None:
    """The accelerator trials use, checked against what they reserve (Ray hides unreserved GPUs from a trial)."""
    for name, amount in (("--cpus-per-trial", resources.cpus), ("--gpus-per-trial", resources.gpus),
                         ("--tpus-per-trial", resources.tpus)):
        if amount < 0 or math.isnan(amount):
            raise TuneSetupError(f"{name} must be >= 0, got {amount:g}")
    if resources.cpus <= 0:
        raise TuneSetupError(f"--cpus-per-trial must be > 0 (data loading and the training loop need a CPU), "
                             f"got {resources.cpus:g}")
    if resources.gpus > 1 and resources.gpus != int(resources.gpus):
        raise TuneSetupError(f"--gpus-per-trial above 1 must be a whole number, got {resources.gpus:g}")
    if resources.tpus != int(resources.tpus):
        raise TuneSetupError(f"--tpus-per-trial must be a whole number of chips, got {resources.tpus:g}")
    name = accelerator.lower() if accelerator else None
    if name in (None, "auto"):
        name = "gpu" if resources.gpus else "tpu" if resources.tpus else accelerator
    if name in ("gpu", "cuda") and not resources.gpus:
        raise TuneSetupError(f"--accelerator {name} needs --gpus-per-trial > 0: Ray hides GPUs from trials "
                             "that did not reserve one")
    if name == "tpu" and not resources.tpus:
        raise TuneSetupError("--accelerator tpu needs --tpus-per-trial > 0")
    if name == "cpu" and (resources.gpus or resources.tpus):
        raise TuneSetupError("--accelerator cpu would leave the reserved GPUs/TPUs idle; drop --gpus-per-trial/"
                             "--tpus-per-trial or pick --accelerator gpu/xla")
    _check_accelerator_known(name)
    return name


def check_workers(workers: Any, accelerator: str | None) -> None:
    """Multi-worker trials run Lightning's DDP through Ray Train: CPU or GPU workers, not XLA devices."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise TuneSetupError(f"--workers-per-trial must be an integer >= 1, got {workers!r}")
    if workers > 1 and accelerator in ("tpu", "xla"):
        raise TuneSetupError(f"--workers-per-trial {workers} runs DDP workers through Ray Train (CPU or GPU); "
                             f"for --accelerator {accelerator} use one worker per trial, which trains on all "
                             "of its devices with Lightning's XLA strategy")


def _check_accelerator_known(name: str | None) -> None:
    if name in (None, "auto", "gpu"):
        return
    from pytorch_lightning.accelerators import AcceleratorRegistry

    if name == "xla":
        _register_xla()
    if name not in AcceleratorRegistry.available_accelerators():
        raise TuneSetupError(f"unknown --accelerator {name!r}; available: gpu, auto, "
                             f"{', '.join(sorted(AcceleratorRegistry.available_accelerators()))}")


def _register_xla() -> None:
    """Register lightning_bts.xla's "xla" accelerator (torch_xla on any PJRT device) where that module exists."""
    try:
        from lightning_bts.xla import register_xla_accelerator
    except ImportError:
        return
    register_xla_accelerator()


def trial_env(resources: Resources, accelerator: str | None, extra: Mapping[str, str]) -> dict[str, str]:
    """Environment each trial sets before training: PJRT_DEVICE for XLA trials, plus ``extra``."""
    env = {}
    if accelerator in ("xla", "tpu"):
        default = "TPU" if resources.tpus else "CUDA" if resources.gpus else os.environ.get("PJRT_DEVICE", "CPU")
        env["PJRT_DEVICE"] = default
    env.update(extra)
    return env


def check_resources(resources: Resources, workers: int = 1) -> None:
    """Fail now if the cluster cannot hold one trial (a trial that can never be placed waits forever): some live
    node must hold one worker's bundle, and the cluster all ``workers`` of a trial."""
    check_workers(workers, None)
    bundle = resources.bundle()
    nodes = _live_node_resources()
    one = "one trial" if workers == 1 else "one worker of a trial"
    if not any(all(node.get(name, 0) >= amount for name, amount in bundle.items()) for node in nodes):
        largest = {name: max((node.get(name, 0) for node in nodes), default=0) for name in ("CPU", "GPU", "TPU")}
        short = [f"{amount:g} {name}" for name, amount in bundle.items() if amount > largest[name]]
        have = ", ".join(f"{amount:g} {name}" for name, amount in largest.items())
        detail = f" (no single node has {', '.join(short)})" if short else ""
        raise TuneSetupError(f"{one} asks for {_describe(bundle)} but the largest node of this Ray cluster has "
                             f"{have}{detail}; lower --cpus-per-trial/--gpus-per-trial/--tpus-per-trial "
                             "or add nodes")
    room = _worker_room(bundle, nodes)
    if room < workers:
        raise TuneSetupError(f"a trial of {workers} workers with {_describe(bundle)} each does not fit this Ray "
                             f"cluster (room for {room} such workers); lower --workers-per-trial or the "
                             "per-worker resources, or add nodes")


def _live_node_resources() -> list[dict[str, float]]:
    import ray

    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]


def _worker_room(bundle: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> int:
    """How many workers of ``bundle`` the ``nodes`` hold: whole workers per node, summed (a node with 3 CPUs
    holds one 2-CPU worker, not 1.5)."""
    return sum(min(int(node.get(name, 0) // amount) for name, amount in bundle.items()) for node in nodes)


def _describe(bundle: Mapping[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in bundle.items())


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

    from lightning_bts.train import train

    report = TuneReportCheckpointCallback(metrics={METRIC: "val/dice", "val_loss": "val/loss"},
                                          filename=CHECKPOINT_FILE, on="validation_end")
    if checkpoint is None:
        train(args + ["--run_name", "train"], callbacks=[report])
        return
    with checkpoint.as_directory() as folder:
        train(args + ["--run_name", "train", "--ckpt_path", str(Path(folder) / CHECKPOINT_FILE)], callbacks=[report])


FoldFit = Callable[[list[str], int], tuple[float, Path | None]]  # (fold args, fold) -> (val/dice, last checkpoint)


def _fit_fold_here(args: list[str], fold: int) -> tuple[float, Path | None]:
    from lightning_bts.train import train

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
    base_args, parsed = base_train_args(SweepSettings(**{**settings.__dict__, "accelerator": accelerator}))
    config = parsed.config
    configured = config.get("accelerator") or config.trainer.get("accelerator")
    if isinstance(configured, str):  # e.g. trainer.accelerator: gpu in a config needs --gpus-per-trial too
        accelerator = accelerator_for(settings.resources, configured)
        check_workers(settings.workers_per_trial, accelerator)
    root = Path(config.data.root).expanduser().resolve()
    experiment_dir = Path(settings.output_dir).expanduser().resolve() / settings.name
    folds = list(range(config.data.num_folds)) if settings.cv else None
    for key, entry in space.items():  # each sampled value must also parse as a fit.py option
        for value in next(iter(entry.values())):
            parsed.parse(base_args + override_args({key: value}))

    local = not settings.address and not _ray_is_connected()
    if local:
        _check_root(root)  # before the seconds a local Ray takes to start
    connect(settings.address, settings.num_cpus, settings.connect_timeout_s)
    if not local and _cluster_is_this_machine():
        _check_root(root)
    check_resources(settings.resources, settings.workers_per_trial)
    env = trial_env(settings.resources, accelerator, settings.trial_env)
    trainable = _trainable(base_args, folds, env, settings.resources, settings.workers_per_trial, experiment_dir)

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
    return write_results(grid, experiment_dir, parsed, base_args, list(space), settings.num_samples, cv=bool(folds),
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


def _ray_is_connected() -> bool:
    import ray

    return ray.is_initialized()


def _cluster_is_this_machine() -> bool:
    """True when every Ray node runs here, so a path missing here is missing for every trial."""
    import ray

    here = ray.util.get_node_ip_address()
    return all(node["NodeManagerAddress"] == here for node in ray.nodes() if node.get("Alive"))


def _trainable(base_args: list[str], folds: list[int] | None, env: dict[str, str], resources: Resources,
               workers: int, experiment_dir: Path) -> Any:
    from ray import tune

    if workers > 1:
        from lightning_bts.tune_ddp import DRIVER_RESOURCES, run_ddp_trial

        trainable = tune.with_parameters(run_ddp_trial, base_args=base_args, folds=folds, env=env,
                                         experiment_dir=str(experiment_dir), workers=workers, resources=resources)
        return tune.with_resources(trainable, DRIVER_RESOURCES)
    trainable = tune.with_parameters(run_trial, base_args=base_args, folds=folds, env=env,
                                     experiment_dir=str(experiment_dir))
    return tune.with_resources(trainable, tune.PlacementGroupFactory([resources.bundle()]))


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


# ------------------------------------------------------------------------------------------------- results


def write_results(grid: Any, experiment_dir: Path, parsed: TrainArgs, base_args: list[str], keys: list[str],
                  num_samples: int, cv: bool = False, ddp: bool = False) -> SweepResult:
    """All trials as CSV and Markdown, the best trial as a fit.py config, and its best checkpoint copied
    (with ``cv`` its last, which holds every fold; for multi-worker trials (``ddp``) the best of its Ray Train run).

    ``complete`` is False when a trial did not finish or fewer than ``num_samples`` trials exist yet (an
    interrupted sweep, which ``resume`` continues).
    """
    trials = {Path(trial.path).name: trial for trial in grid._experiment_analysis.trials}
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial = trials.get(Path(result.path).name)
        row = {"trial": trial.trial_id if trial else Path(result.path).name,
               "status": trial.status if trial else "ERROR" if result.error else "UNKNOWN",
               METRIC: metrics.get(METRIC), "iterations": metrics.get("training_iteration"),
               "failures": trial.num_failures if trial else None,
               "error": str(result.error).splitlines()[0][:120] if result.error else "",
               "path": Path(result.path).name}
        row.update({key: result.config.get(key) for key in keys})
        rows.append(row)
    rows.sort(key=lambda r: -r[METRIC] if isinstance(r[METRIC], float) and not math.isnan(r[METRIC]) else math.inf)
    columns = ["trial", "status", METRIC, "iterations", "failures", *keys, "error"]
    trials_csv, trials_md = experiment_dir / "trials.csv", experiment_dir / "trials.md"
    _write_atomic(trials_csv, _csv(rows, [*columns, "path"]))
    _write_atomic(trials_md, _markdown(rows, columns))
    complete = len(rows) >= num_samples and all(r["status"] == "TERMINATED" for r in rows)

    best_config = best_checkpoint = None
    best_metrics: dict[str, Any] = {}
    best_overrides: dict[str, Any] = {}
    scored = [r for r in grid if r.metrics and r.metrics.get(METRIC) is not None]
    if scored:
        best = grid.get_best_result(metric=METRIC, mode=MODE, scope="last", filter_nan_and_inf=True)
        best_metrics = dict(best.metrics)
        best_overrides = {key: best.config[key] for key in keys}
        best_config = experiment_dir / "best_config.yaml"
        header = (f"# Best trial of the sweep in {experiment_dir} ({METRIC} {best_metrics.get(METRIC):.4f}, "
                  f"trial {best_metrics.get('trial_id')}).\n"
                  f"# Retrain: python scripts/fit.py --config {best_config}\n")
        _write_atomic(best_config, header + parsed.dump(base_args + override_args(best_overrides)))
        parsed.parse(["--config", str(best_config)])  # what fit.py --config will read
        if cv:
            checkpoint = best.checkpoint
        elif ddp:
            from lightning_bts.tune_ddp import best_checkpoint as best_ddp_checkpoint

            checkpoint = best_ddp_checkpoint(Path(best.path))
        else:
            checkpoint = best.get_best_checkpoint(METRIC, MODE) if best.best_checkpoints else best.checkpoint
        if checkpoint is not None:
            best_checkpoint = experiment_dir / "best_checkpoint"
            staging = experiment_dir / ".best_checkpoint.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            checkpoint.to_directory(str(staging))
            shutil.rmtree(best_checkpoint, ignore_errors=True)
            staging.rename(best_checkpoint)
    return SweepResult(experiment_dir, trials_csv, trials_md, best_config, best_checkpoint, best_metrics,
                       best_overrides, complete)


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    staging.replace(path)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    with tempfile.SpooledTemporaryFile(mode="w+", newline="") as buffer:
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: ("" if row.get(c) is None else row.get(c)) for c in columns} for row in rows)
        buffer.seek(0)
        return buffer.read()


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(c)).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines) + "\n"
