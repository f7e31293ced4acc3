"""A checkpoint file as data: read with ``weights_only=True`` and checked, or one top-level entry rewritten
atomically. Plain torch: no module is built here, so :mod:`lightning_bts.training.module` (``init_weights``) and
:mod:`lightning_bts.training.checkpoints` (which rebuilds the module) both import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_bts.errors import UserError
from lightning_bts.files import atomic_path


class CheckpointError(UserError):
    """A checkpoint cannot be used as a :class:`SegmentationModule`; the message names the file."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dictionary, loaded to CPU with ``weights_only=True`` (no arbitrary code from the file).

    Raises:
        CheckpointError: missing file, not a torch file, or not a Lightning checkpoint with a ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load on a foreign file fails in many ways (KeyError, EOFError, ...)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded as a PyTorch checkpoint: {first_line}") from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict'); expected a .ckpt written by "
            "scripts/fit.py"
        )
    return dict(checkpoint)


def write_checkpoint_entry(path: str | Path, key: str, value: Any) -> None:
    """Adds or replaces the top-level entry ``key`` of the checkpoint ``path``; weights and the rest unchanged.

    The file is rewritten through a temporary file in the same folder and a rename, so a reader sees the old
    file or the new one, never half of one. ``value`` must be plain data (dicts, lists, numbers, strings) so
    that ``torch.load(weights_only=True)`` still reads the file.

    Raises:
        CheckpointError: ``path`` is not a readable checkpoint, or its folder is not writable.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    checkpoint[key] = value
    try:
        with atomic_path(path) as temporary:
            torch.save(checkpoint, temporary)
    except OSError as error:
        raise CheckpointError(f"cannot rewrite checkpoint {path}: {error}") from error


# What only resuming a training needs; a released model leaves them out (an AdamW state is twice the weights).
TRAINING_ONLY_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "loops", "current_model_state",
                      "averaging_state")
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def release_checkpoint(checkpoint: Mapping[str, Any], weights_dtype: str = "float32") -> dict[str, Any]:
    """The checkpoint as a model to ship: weights (stored as ``weights_dtype``), hyper-parameters, data settings
    and whatever evaluation stored (post-processing), without the optimiser, loops and callback states.

    It loads wherever a full checkpoint does for inference (weights are cast back to float32 on loading); it
    cannot resume a training. Integer buffers (batch norm's ``num_batches_tracked``) keep their type.

    Raises:
        CheckpointError: an unknown ``weights_dtype``.
    """
    dtype = WEIGHT_DTYPES.get(weights_dtype)
    if dtype is None:
        raise CheckpointError(f"weights dtype {weights_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    released = {key: value for key, value in checkpoint.items() if key not in TRAINING_ONLY_KEYS}
    released["state_dict"] = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor
                              for name, tensor in checkpoint["state_dict"].items()}
    released["release"] = {"weights_dtype": weights_dtype}
    return released
