"""A trial's fit.py arguments: the sweep's ``--config`` files and forwarded options, parsed once by the same
LightningCLI fit.py uses (bad options fail before any trial starts), plus the sampled overrides.
"""

from __future__ import annotations

import warnings
from argparse import ArgumentError
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_bts.training.cli import BTSCLI
from lightning_bts.tune.settings import SweepSettings
from lightning_bts.tune.space import TuneSetupError


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
