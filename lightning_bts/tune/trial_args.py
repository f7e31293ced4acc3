"""A trial's training configuration: the sweep's ``--config`` files and forwarded fit.py options, parsed once on the
driver by fit.py's parser (bad options fail before any trial starts), with the sampled values set on a copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_bts.errors import ConfigError
from lightning_bts.training.config import Config, check_config, config_parser, dump_config, parse_config
from lightning_bts.tune.settings import SweepSettings
from lightning_bts.tune.space import TuneSetupError


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """A copy of ``config`` with the sampled values set: ``{"model.lr": 0.001}`` sets ``config.model.lr``."""
    changed = config.clone()
    for key, value in overrides.items():
        changed[key] = value.item() if hasattr(value, "item") else value  # numpy scalars as Python numbers
    return changed


class TrainConfig:
    """The sweep's base configuration and the parser that checks and dumps it (built once, on the driver)."""

    def __init__(self, args: list[str]) -> None:
        self.parser = config_parser()
        try:
            self.config = parse_config(args, parser=self.parser)
        except ConfigError as error:
            raise TuneSetupError(f"fit.py options do not parse ({error}): {' '.join(args)}") from None

    def check(self, overrides: Mapping[str, Any]) -> Config:
        """The base configuration with ``overrides``, checked as a trial's ``train()`` will check it."""
        try:
            return check_config(with_overrides(self.config, overrides), self.parser)
        except ConfigError as error:
            raise TuneSetupError(f"{dict(overrides)}: {error}") from None

    def dump(self, overrides: Mapping[str, Any]) -> str:
        """The full configuration with ``overrides`` (what fit.py saves as config.yaml), for ``--config``."""
        return dump_config(with_overrides(self.config, overrides), self.parser)


def base_train_config(settings: SweepSettings) -> TrainConfig:
    """Every trial's configuration before its sampled values, with paths made absolute.

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
    parsed = TrainConfig(args)
    for key in ("data.root", "data.cache_dir", "ckpt_path"):
        value = parsed.config.get(key)
        if value and not Path(value).is_absolute():
            parsed.config[key] = str(Path(value).expanduser().resolve())
    return parsed
