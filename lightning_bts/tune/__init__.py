"""Ray Tune sweeps whose trials are ``train()`` runs (``scripts/tune.py``, docs/tune.md).

Modules, imports going down this list:

- ``sweep``       :func:`run_sweep`: check everything, run the trials on the connected Ray, write the results
- ``results``     trials.csv, trials.md, best_config.yaml and best_checkpoint/ of a finished sweep
- ``ddp``         multi-worker trials: one Ray Train run of N DDP workers per trial
- ``trial``       the Tune trainable: one fit.py run (or one per fold), reporting ``val_dice``, resuming
- ``cluster``     connecting to Ray; the accelerator and resources of a trial, checked against the nodes
- ``trial_args``  a trial's training configuration, parsed once by fit.py's parser, with its sampled values
- ``settings``    :class:`SweepSettings`, :class:`Resources`, :class:`SweepResult`
- ``space``       the tunable options and the search-space YAML

The names below are the package's public face (``from lightning_bts.tune import run_sweep``); Ray is imported only
when a sweep runs.
"""

from lightning_bts.tune.cluster import accelerator_for, check_resources, check_workers, connect
from lightning_bts.tune.settings import Resources, SweepResult, SweepSettings
from lightning_bts.tune.space import TUNABLE, TuneSetupError, load_space, validate_space
from lightning_bts.tune.sweep import run_sweep

__all__ = ["TUNABLE", "Resources", "SweepResult", "SweepSettings", "TuneSetupError",
           "accelerator_for", "check_resources", "check_workers", "connect", "load_space", "run_sweep",
           "validate_space"]
