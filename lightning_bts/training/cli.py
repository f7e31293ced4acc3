"""The configuration shared by every training entry point (LightningCLI with layered YAML configs).

``fit.py``, cross-validation and Ray Tune all parse their configuration with :class:`BTSCLI`'s parser
(:mod:`lightning_bts.training.config`) and build their runs through it, so one config file means the same run
everywhere. Shortcuts ``--accelerator``, ``--devices`` and ``--precision`` set the matching ``--trainer.*``
options; ``--ckpt_path`` resumes a run.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import time
from argparse import ArgumentError
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from lightning_bts.data import BrainTumorDataModule
from lightning_bts.errors import ConfigError
from lightning_bts.training.console import RunHeader, quiet_lightning, tensorboard_without_tensorflow
from lightning_bts.training.module import SegmentationModule
from lightning_bts.training.preview import ValidationPreview
from lightning_bts.training.wall_clock import WallClock
from lightning_bts.xla.accelerator import (
    register_xla_accelerator,
    skip_tpu_probe_without_tpu_chips,
    xla_trainer_overrides,
)

MONITOR = "val/dice"
SHORTCUTS = ("accelerator", "devices", "precision")


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 autocast is fast instead of emulated."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe and probe()) or (amx and amx()))


def default_precision(accelerator: str) -> str:
    """bf16-mixed where the CPU runs bf16 natively (several times faster here, same Dice), else fp32."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return "bf16-mixed" if on_cpu and cpu_has_native_bf16() else "32-true"


class BTSCLI(LightningCLI):
    """LightningCLI for :class:`SegmentationModule` and :class:`BrainTumorDataModule`, parsed but not run.

    Args:
        args: a parsed configuration (:func:`lightning_bts.training.config.parse_config`, or its dict), checked
            again here; or command-line arguments, e.g. ``["--config", "configs/paper_focal.yaml"]``
            (``None``: ``sys.argv``). A bad key or value raises :class:`~lightning_bts.errors.ConfigError`.
        extra_callbacks: callbacks added to the Trainer (cross-validation and Ray Tune use this).
        trainer_overrides: Trainer arguments that win over the config, for callers that own how the run is
            launched (Ray Train's multi-worker trials set ``strategy`` and ``plugins``).
    """

    def __init__(self, args: Namespace | Mapping[str, Any] | Sequence[str] | None = None,
                 extra_callbacks: Sequence[Callback] = (),
                 trainer_overrides: Mapping[str, Any] | None = None) -> None:
        self.extra_callbacks = list(extra_callbacks)
        self.claimed_run_dir: Path | None = None  # the run folder this CLI created (see claim_run_dir)
        self.created_dirs: list[Path] = []  # its parents that did not exist before
        self.trainer_overrides = dict(trainer_overrides or {})
        register_xla_accelerator()  # --accelerator xla: torch_xla on any PJRT device (lightning_bts.xla.accelerator)
        skip_tpu_probe_without_tpu_chips()  # no torch_xla import in a run that does not use it
        quiet_lightning()
        tensorboard_without_tensorflow()
        super().__init__(
            SegmentationModule,
            BrainTumorDataModule,
            args=args if args is None or isinstance(args, (Namespace, Mapping)) else list(args),
            run=False,
            seed_everything_default=42,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "exit_on_error": False,  # parse_arguments raises ConfigError; --help still prints and exits
                "description": "Train the paper's U-Net on brain MRI. Defaults: a few minutes on the shipped "
                "sample, on CPU.",
                "epilog": "Example: python scripts/fit.py --config configs/paper_focal.yaml --accelerator gpu",
            },
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.in_channels", "model.in_channels")
        parser.add_argument("--accelerator", type=str | None, default=None,
                            help="Shortcut for --trainer.accelerator: cpu, gpu, tpu, xla, auto.")
        parser.add_argument("--devices", type=int | str | None, default=None,
                            help="Shortcut for --trainer.devices: a count, 'auto' or a list.")
        parser.add_argument("--precision", type=str | None, default=None,
                            help="Shortcut for --trainer.precision. Default: bf16-mixed on a CPU with native bf16, "
                            "else 32-true.")
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="Checkpoint to resume training from.")
        parser.add_argument("--output_dir", type=str | None, default=None,
                            help="Where runs go: OUTPUT_DIR/RUN_NAME/VERSION/ holds checkpoints, TensorBoard and CSV "
                            "logs, config.yaml and splits.json. Default: --trainer.default_root_dir if given, else "
                            "runs.")
        parser.add_argument("--run_name", type=str | None, default=None, help="Default: <loss>_fold<fold>.")
        parser.add_argument("--preview_slices", type=int, default=4,
                            help="Validation slices drawn with their true and predicted outlines into "
                            "validation_preview.png when the run ends (0: no picture).")
        parser.add_argument("--version", type=str | None, default=None,
                            help="Default: a timestamp, with -2, -3, ... when another run already took it.")
        # The no-argument run: a few CPU minutes on the sample (configs/quick_cpu.yaml says why Dice + BCE).
        parser.set_defaults(
            {
                "trainer.max_epochs": 40,
                "trainer.log_every_n_steps": 5,
                "model.loss": "dice_bce",
                "data.batch_size": 8,
                "data.image_size": 128,  # 4x fewer pixels than 256, the same Dice on the sample (quick_cpu.yaml)
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse (a list) or check (a config object) ``args``; a bad key or value raises :class:`ConfigError`.

        Unlike LightningCLI's, no warning when ``sys.argv`` holds arguments too: ``train()`` is always given its
        configuration explicitly, whatever command line the process was started with. A config object is copied
        first (jsonargparse writes checked values into the object it is given), so the caller's stays as it was.
        """
        try:
            if isinstance(args, (Namespace, Mapping)):
                self.config = parser.parse_object(copy.deepcopy(args))
            else:
                self.config = parser.parse_args(args)
        except ArgumentError as error:
            raise config_error(error) from None

    def before_instantiate_classes(self) -> None:
        config = self.config
        for name in SHORTCUTS:
            if config.get(name) is not None:
                config.trainer[name] = config[name]
        if config.trainer.get("precision") is None:
            config.trainer.precision = default_precision(str(config.trainer.get("accelerator", "auto")))

    def instantiate_trainer(self, **kwargs: Any):
        config = self.config
        if config.trainer.get("logger") in (None, True):
            root = Path(config.output_dir or config.trainer.get("default_root_dir") or "runs")
            name = config.run_name or f"{config.model.loss}_fold{config.data.fold}"
            if config.version is None:
                self.created_dirs = [folder for folder in (root, root / name) if not folder.exists()]
                self.claimed_run_dir = claim_run_dir(root / name, time.strftime("%Y%m%d-%H%M%S"))
            version = config.version or self.claimed_run_dir.name
            kwargs["logger"] = [
                TensorBoardLogger(root, name=name, version=version, default_hp_metric=False),
                CSVLogger(root, name=name, version=version),
            ]
        xla_kwargs, xla_callbacks = xla_trainer_overrides(config.trainer.get("accelerator"))  # {}, [] off XLA
        kwargs.update(xla_kwargs)
        kwargs.update(self.trainer_overrides)
        self.extra_callbacks += xla_callbacks + [RunHeader(), WallClock(), ValidationPreview(config.preview_slices)]
        # The Trainer's callbacks: the config's, then the defaults it does not replace, then the callers'.
        # (LightningCLI appends its SaveConfigCallback to this list.)
        trainer = {**self.config_init.trainer, **kwargs}  # what LightningCLI builds the Trainer from
        configured = _as_list(trainer.get("callbacks"))
        kwargs["callbacks"] = [*configured, *default_callbacks(trainer, configured), *self.extra_callbacks]
        # One example image lets the model summary count FLOPs (its column reads 0 without one).
        data = config.data
        self.model.example_input_array = torch.zeros(1, data.in_channels, data.image_size, data.image_size)
        return super().instantiate_trainer(**kwargs)

    def release_run_dir(self) -> None:
        """Remove the run folder this CLI claimed, and the parents it created, while they are still empty."""
        if self.claimed_run_dir is None:
            return
        for folder in [self.claimed_run_dir, *reversed(self.created_dirs)]:
            with contextlib.suppress(OSError):  # not empty: another run, or files of this one, live there
                folder.rmdir()

def config_error(error: ArgumentError) -> ConfigError:
    """jsonargparse's message (it names the key) on one line, as ``errors.run_main`` prints it."""
    return ConfigError("bad training option: " + " ".join(str(error).split()))


def claim_run_dir(parent: Path, version: str) -> Path:
    """Create and return ``parent/version``, or ``parent/version-2``, ``-3``, ... if another run holds it.

    ``mkdir`` without ``exist_ok`` is atomic, so runs started in the same second (folds launched side by side)
    each get a folder of their own instead of mixing logs and checkpoints.
    """
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        folder = parent / (version if attempt == 1 else f"{version}-{attempt}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def default_callbacks(trainer: Mapping[str, Any], configured: Sequence[Callback]) -> list[Callback]:
    """The checkpoints of :func:`default_checkpoints` and a learning-rate monitor, each unless the Trainer's
    settings turn it off (``enable_checkpointing``, ``logger``) or the config brings its own."""
    callbacks: list[Callback] = []
    if trainer.get("enable_checkpointing") is not False and not _has(configured, ModelCheckpoint):
        callbacks.extend(default_checkpoints())
    if trainer.get("logger") is not False and not _has(configured, LearningRateMonitor):
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return callbacks


def default_checkpoints() -> list[ModelCheckpoint]:
    """``last.ckpt`` every epoch (what cross-validation reports) and the best epoch by validation Dice.

    Two callbacks, because Lightning 2.6's ``save_last=True`` rewrites ``last.ckpt`` only in epochs that also
    save a new best, which leaves it stale whenever the last epoch is not the best.
    """
    last = ModelCheckpoint(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    best = ModelCheckpoint(monitor=MONITOR, mode="max", save_top_k=1,
                           filename="best-epoch{epoch:02d}-dice{val/dice:.4f}", auto_insert_metric_name=False)
    return [last, best]


def _as_list(callbacks: Any) -> list[Callback]:
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, list) else [callbacks]


def _has(callbacks: Sequence[Callback], kind: type) -> bool:
    return any(isinstance(cb, kind) for cb in callbacks)
