"""Loading trained models from Lightning checkpoints, with the preprocessing they were trained with.

Prediction, evaluation and export all start here, so that a checkpoint means the same model and the same
input pipeline everywhere. A checkpoint written by :class:`~lightning_bts.training.cli.BTSCLI` holds the module's
``hyper_parameters`` (the architecture) and the data module's ``datamodule_hyper_parameters`` (image size,
channels, skull stripping). The model is rebuilt from the first and its weights loaded strictly, so a file
from another model or architecture fails here with its name in the message instead of predicting garbage.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_bts.data import BrainTumorDataModule
from lightning_bts.data.intensity import DEFAULT_INTENSITY
from lightning_bts.training.checkpoint_file import (
    TRAINING_ONLY_KEYS,
    CheckpointError,
    read_checkpoint,
    write_checkpoint_entry,
)
from lightning_bts.training.module import SegmentationModule

PREPROCESSING_KEYS = ("image_size", "in_channels", "skull_strip", "intensity", "neighbour_slices")
# Large entries CheckpointInfo.extra leaves out: the weights and what only resuming needs (with weight
# averaging, Lightning stores the averaged weights as state_dict, what evaluation uses, and the raw ones as
# current_model_state, one of TRAINING_ONLY_KEYS).
WEIGHT_KEYS = ("state_dict", *TRAINING_ONLY_KEYS)



@dataclass(frozen=True)
class Preprocessing:
    """What a model's input must look like; the arguments of the same names of :class:`BrainTumorDataModule`.

    ``BrainTumorDataModule(root, fold=None, **preprocessing.as_dict())`` evaluates with the training pipeline.
    ``intensity`` is how the training slices were made 8-bit (:mod:`lightning_bts.data.intensity`), which the
    volume readers repeat; a checkpoint that does not record it (written before the setting existed) was
    trained on figshare slices: :data:`~lightning_bts.data.intensity.DEFAULT_INTENSITY`. ``neighbour_slices``:
    the input channels are the slice before, the slice and the slice after (:mod:`lightning_bts.data.neighbours`);
    absent in checkpoints written before the option existed, which were all trained without it.
    """

    image_size: int
    in_channels: int
    skull_strip: str
    intensity: str = DEFAULT_INTENSITY
    neighbour_slices: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says besides its weights.

    ``data`` are the :class:`BrainTumorDataModule` arguments it was trained with (root, fold, split seed, ...;
    empty when not recorded); ``extra`` every other top-level entry except the weights and optimiser states
    (epoch, hyper-parameters, and whatever evaluation stored there).
    """

    path: Path
    preprocessing: Preprocessing
    data: dict[str, Any]
    extra: dict[str, Any]


def model_from_checkpoint(checkpoint: Mapping[str, Any], path: str | Path = "<checkpoint>") -> SegmentationModule:
    """A :class:`SegmentationModule` in eval mode from an already read checkpoint (``path`` for messages)."""
    hparams = _module_hparams(checkpoint, path)
    try:
        model = SegmentationModule(**hparams)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: its hyper_parameters do not build a SegmentationModule: "
                              f"{error}") from error
    state = checkpoint["state_dict"]
    if not any(key.startswith("net.") for key in state):
        raise CheckpointError(
            f"checkpoint {path} is not a SegmentationModule checkpoint: no 'net.*' weights in its state_dict "
            f"(first keys: {list(state)[:3]})"
        )
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the architecture in its hyper_parameters: "
            f"{len(missing)} missing weight(s) {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    wrong_shape = [f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
                   for key, value in expected.items() if tuple(state[key].shape) != tuple(value.shape)]
    if wrong_shape:
        raise CheckpointError(f"checkpoint {path}: weight shapes do not match the architecture: {wrong_shape[:3]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocessing_from_dict(checkpoint: Mapping[str, Any], path: str | Path = "<checkpoint>") -> Preprocessing:
    """:class:`Preprocessing` of an already read checkpoint (``path`` for messages)."""
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    model = dict(checkpoint.get("hyper_parameters") or {})
    defaults = {name: param.default
                for name, param in inspect.signature(BrainTumorDataModule.__init__).parameters.items()}
    values, guessed = {}, []
    for key in PREPROCESSING_KEYS:
        if key in data:
            values[key] = data[key]
        elif key == "in_channels" and key in model:
            values[key] = model[key]
        elif key == "intensity":  # older checkpoints: all trained on figshare slices (see Preprocessing)
            values[key] = DEFAULT_INTENSITY
        elif key == "neighbour_slices":  # older checkpoints: all trained on single slices
            values[key] = False
        else:
            values[key] = defaults[key]
            guessed.append(f"{key}={defaults[key]!r}")
    if guessed:
        warnings.warn(
            f"checkpoint {path} does not record the data settings it was trained with (no "
            f"datamodule_hyper_parameters; not saved by scripts/fit.py?); assuming the defaults {', '.join(guessed)}. "
            "Predictions are wrong if these differ from training.",
            stacklevel=2,
        )
    if "in_channels" in model and "in_channels" in data and model["in_channels"] != data["in_channels"]:
        raise CheckpointError(f"checkpoint {path}: model in_channels={model['in_channels']} but data "
                              f"in_channels={data['in_channels']}; the checkpoint is inconsistent")
    preprocessing = Preprocessing(int(values["image_size"]), int(values["in_channels"]), str(values["skull_strip"]),
                                  str(values["intensity"]), bool(values["neighbour_slices"]))
    try:  # the data module's own checks: channels 1/3, size a multiple of 16, a known skull-strip method
        BrainTumorDataModule(**preprocessing.as_dict())
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: invalid preprocessing settings: {error}") from error
    return preprocessing


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModule:
    """The :class:`SegmentationModule` of ``path`` in eval mode on ``map_location``.

    Raises:
        CheckpointError: the file is missing, not a checkpoint, or not one of this package's U-Nets.
    """
    return model_from_checkpoint(read_checkpoint(path), path).to(map_location)


def preprocessing_from_checkpoint(path: str | Path) -> Preprocessing:
    """Image size, channels and skull stripping ``path`` was trained with.

    Read from ``datamodule_hyper_parameters`` (saved by LightningCLI); where absent, ``in_channels`` falls back
    to the module's hyper-parameters and the rest to :class:`BrainTumorDataModule`'s defaults, with a warning.
    """
    return preprocessing_from_dict(read_checkpoint(path), path)


def load_members(
    paths: Sequence[str | Path], map_location: str | torch.device = "cpu"
) -> tuple[list[SegmentationModule], list[CheckpointInfo]]:
    """Models of ``paths`` (e.g. the folds of a cross-validation) in eval mode, and what each file records.

    Each file is read once. Every member must share the first one's preprocessing (they take one input batch).

    Raises:
        CheckpointError: no path, any file fails :func:`load_model`, or was trained with other preprocessing
            than the first.
    """
    if not paths:
        raise CheckpointError("no checkpoint given")
    models, infos = [], []
    for path in paths:
        checkpoint = read_checkpoint(path)
        preprocessing = preprocessing_from_dict(checkpoint, path)
        if infos and preprocessing != infos[0].preprocessing:
            raise CheckpointError(
                f"checkpoint {path} was trained on other preprocessing ({preprocessing.as_dict()}) than "
                f"{paths[0]} ({infos[0].preprocessing.as_dict()}); ensemble members must share it"
            )
        models.append(model_from_checkpoint(checkpoint, path).to(map_location))
        extra = {key: value for key, value in checkpoint.items() if key not in WEIGHT_KEYS}
        infos.append(CheckpointInfo(Path(path), preprocessing, data_settings(checkpoint), extra))
    return models, infos


def load_ensemble(
    paths: Sequence[str | Path], map_location: str | torch.device = "cpu"
) -> tuple[list[SegmentationModule], Preprocessing]:
    """Models of ``paths`` and their shared preprocessing; see :func:`load_members`."""
    models, infos = load_members(paths, map_location)
    return models, infos[0].preprocessing


def data_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The ``BrainTumorDataModule`` arguments a checkpoint written by fit.py recorded (empty if none)."""
    return {k: v for k, v in dict(checkpoint.get("datamodule_hyper_parameters") or {}).items()
            if not k.startswith("_")}


def _module_hparams(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """Hyper-parameters for ``SegmentationModule(**hparams)``; unknown names mean another model class."""
    hparams = checkpoint.get("hyper_parameters")
    if hparams is None:
        warnings.warn(f"checkpoint {path} has no hyper_parameters; building the default SegmentationModule",
                      stacklevel=3)
        return {}
    accepted = set(inspect.signature(SegmentationModule.__init__).parameters) - {"self"}
    hparams = {key: value for key, value in dict(hparams).items() if not key.startswith("_")}  # _instantiator
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise CheckpointError(
            f"checkpoint {path} is not a SegmentationModule checkpoint: unknown hyper-parameters {unknown[:5]}"
        )
    return hparams


__all__ = [  # read_checkpoint, write_checkpoint_entry and CheckpointError live in checkpoint_file; found here too
    "CheckpointError", "CheckpointInfo", "Preprocessing", "data_settings", "load_ensemble", "load_members",
    "load_model", "model_from_checkpoint", "preprocessing_from_checkpoint", "preprocessing_from_dict",
    "read_checkpoint", "write_checkpoint_entry",
]
