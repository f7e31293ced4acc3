"""A Lightning checkpoint from the Keras original's weights (no TensorFlow needed): what
``scripts/validate_keras.py --to-ckpt`` writes and ``SegmentationModule.load_from_checkpoint`` loads.

Builds a :class:`~lightning_bts.training.module.SegmentationModule`, so it sits above the training layer; the
weight-file format itself is :mod:`lightning_bts.keras.weights` (models only).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_bts.keras.weights import unet_from_keras, unet_layers
from lightning_bts.models.unet import UNet


def save_lightning_checkpoint(net: UNet, path: str | Path, **module_kwargs) -> Path:
    """Write ``net``'s weights as a checkpoint that ``SegmentationModule.load_from_checkpoint`` loads.

    The module is built with ``net``'s ``in_channels``, ``base_filters``, ``depth`` and ``input_scale`` plus
    ``module_kwargs`` (e.g. ``loss="bce"``), so its hyperparameters travel in the checkpoint. We write the
    weights-only dictionary ``Trainer.save_checkpoint(weights_only=True)`` writes, without building a
    ``Trainer``: that needs no accelerator probing, which matters in processes that also hold TensorFlow
    (see :func:`lightning_bts.keras.reference.import_keras`). Not for resuming a fit (no optimizer state).
    """
    import pytorch_lightning as pl

    from lightning_bts.training.module import SegmentationModule

    layers = unet_layers(net)
    config = {
        "in_channels": layers[0].module.in_channels,
        "base_filters": layers[0].module.out_channels,
        "depth": net.depth,
        "input_scale": net.input_scale,
    }
    module = SegmentationModule(**config, **module_kwargs)
    module.net.load_state_dict(net.state_dict())
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": pl.__version__,
        "state_dict": module.state_dict(),
        module.CHECKPOINT_HYPER_PARAMS_NAME: module._hparams_name,
        module.CHECKPOINT_HYPER_PARAMS_KEY: dict(module.hparams),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def keras_to_lightning_checkpoint(keras_path: str | Path, ckpt_path: str | Path, **module_kwargs) -> Path:
    """Convert a Keras file of the original U-Net into a Lightning checkpoint (no TensorFlow needed)."""
    return save_lightning_checkpoint(unet_from_keras(keras_path), ckpt_path, **module_kwargs)
