"""Segmentation losses, all taking logits, chosen by name with :func:`build_loss`. One loss per file.

==================  ======================================================================================
name                loss
==================  ======================================================================================
``bce``             Keras ``binary_crossentropy`` as Keras trains it: after a sigmoid layer Keras computes it
                    from the logits, unclipped (``eps=1e-7`` gives the clipped form on probabilities)
``focal``           ``focal_loss.BinaryFocalLoss(gamma=2)``; alpha-balanced when ``alpha`` is set
``dice``            soft Dice, segmentation-models-pytorch ``DiceLoss`` in binary mode. It *pools over the
                    batch* (sums over all pixels of all images); a batch without tumour contributes 0
``dice_focal``      ``dice + focal``
``dice_bce``        ``dice + bce``
``dice_batch``      soft Dice pooled over the batch, the pooled metric's own formula (nnU-Net's batch Dice,
                    smoothing 1e-5; see :mod:`lightning_bts.losses.dice`)
``dice_image``      soft Dice per image, averaged over the batch (the per-image metric's form)
``dice_bce_batch``  ``dice_batch + bce`` (nnU-Net's loss, for one foreground class)
``dice_bce_image``  ``dice_image + bce``
==================  ======================================================================================

So ``dice``/``dice_bce`` (the no-argument run's loss) are already batch Dice; ``dice_bce_batch`` differs only by
its smoothing and by still scoring a batch without tumour, ``dice_bce_image`` is the per-image form.

Each loss defaults to the clipping Keras applies *in training* (measured in ``reports/keras_parity.md``):
BCE none, focal ``max(p, 1e-7)`` as the focal-loss package does. ``build_loss(eps=...)`` overrides both.
Deep supervision wraps any of them (:class:`DeepSupervisionLoss`).
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from lightning_bts.errors import ConfigError
from lightning_bts.losses.bce import KERAS_EPSILON, BCELoss, binary_cross_entropy
from lightning_bts.losses.deep_supervision import DeepSupervisionLoss, deep_supervision_loss, deep_supervision_weights
from lightning_bts.losses.dice import SoftDiceLoss, soft_dice_loss
from lightning_bts.losses.focal import FocalLoss, binary_focal_loss

LOSS_NAMES = ("bce", "focal", "dice", "dice_focal", "dice_bce", "dice_batch", "dice_image", "dice_bce_batch",
              "dice_bce_image")


class SumLoss(nn.Module):
    """Sum of losses, e.g. Dice + focal."""

    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def _smp_dice() -> nn.Module:
    return DiceLoss(mode="binary", from_logits=True)


def build_loss(name: str, gamma: float = 2.0, alpha: float | None = None, eps: float | None = None) -> nn.Module:
    """The loss called ``name`` (see the module docstring). ``gamma``/``alpha`` apply to focal terms only;
    ``eps`` (probability clipping, 0 = none) overrides each term's Keras training default when given.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    bce_eps = 0.0 if eps is None else eps
    focal_eps = KERAS_EPSILON if eps is None else eps
    builders = {
        "bce": lambda: BCELoss(bce_eps),
        "focal": lambda: FocalLoss(gamma, alpha, focal_eps),
        "dice": _smp_dice,
        "dice_focal": lambda: SumLoss(_smp_dice(), FocalLoss(gamma, alpha, focal_eps)),
        "dice_bce": lambda: SumLoss(_smp_dice(), BCELoss(bce_eps)),
        "dice_batch": lambda: SoftDiceLoss(pooled=True),
        "dice_image": lambda: SoftDiceLoss(pooled=False),
        "dice_bce_batch": lambda: SumLoss(SoftDiceLoss(pooled=True), BCELoss(bce_eps)),
        "dice_bce_image": lambda: SumLoss(SoftDiceLoss(pooled=False), BCELoss(bce_eps)),
    }
    if name not in builders:
        raise ConfigError(f"model.loss: unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    return builders[name]()


__all__ = ["LOSS_NAMES", "BCELoss", "DeepSupervisionLoss", "FocalLoss", "SoftDiceLoss", "SumLoss", "build_loss",
           "binary_cross_entropy", "binary_focal_loss", "deep_supervision_loss", "deep_supervision_weights",
           "soft_dice_loss"]
