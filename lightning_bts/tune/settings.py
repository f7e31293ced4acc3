"""A sweep's settings (:class:`SweepSettings`), what one trial reserves (:class:`Resources`) and what a sweep
returns (:class:`SweepResult`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    callbacks: Sequence[Any] = ()  # Lightning callbacks added to every trial's Trainer (pickled to the trials)
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
