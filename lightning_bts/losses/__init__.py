"""Segmentation losses, all taking logits, chosen by name with :func:`build_loss`.

==============  ==========================================================================
name            loss
==============  ==========================================================================
``bce``         Keras ``binary_crossentropy`` as Keras trains it: after a sigmoid layer Keras computes it
                from the logits, unclipped (``eps=1e-7`` gives the clipped form on probabilities)
``focal``       ``focal_loss.BinaryFocalLoss(gamma=2)``; alpha-balanced when ``alpha`` is set
``dice``        soft Dice (segmentation-models-pytorch ``DiceLoss``, binary mode)
``dice_focal``  ``dice + focal``
``dice_bce``    ``dice + bce``
==============  ==========================================================================

Each loss defaults to the clipping Keras applies *in training* (measured in ``reports/keras_parity.md``):
BCE none, focal ``max(p, 1e-7)`` as the focal-loss package does. ``build_loss(eps=...)`` overrides both.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from lightning_bts.losses._functional import KERAS_EPSILON, binary_cross_entropy, binary_focal_loss

LOSS_NAMES = ("bce", "focal", "dice", "dice_focal", "dice_bce")


class BCELoss(nn.Module):
    """Mean Keras binary cross-entropy over all pixels.

    Shape:
        logits, target: ``(N, 1, H, W)``; returns a scalar.
    """

    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return binary_cross_entropy(logits, target, self.eps).mean()


class FocalLoss(nn.Module):
    """Mean binary focal loss over all pixels (Keras ``BinaryFocalLoss`` reduction).

    Shape:
        logits, target: ``(N, 1, H, W)``; returns a scalar.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, eps: float = KERAS_EPSILON) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0 <= alpha <= 1:
            raise ValueError(f"focal alpha must be in [0, 1] or None, got {alpha}")
        self.gamma, self.alpha, self.eps = gamma, alpha, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return binary_focal_loss(logits, target, self.gamma, self.alpha, self.eps).mean()


class SumLoss(nn.Module):
    """Sum of losses, e.g. Dice + focal."""

    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def _dice() -> nn.Module:
    return DiceLoss(mode="binary", from_logits=True)


def build_loss(name: str, gamma: float = 2.0, alpha: float | None = None, eps: float | None = None) -> nn.Module:
    """The loss called ``name`` (see the module docstring). ``gamma``/``alpha`` apply to focal terms only;
    ``eps`` (probability clipping, 0 = none) overrides each term's Keras training default when given.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    bce_eps = 0.0 if eps is None else eps
    focal_eps = KERAS_EPSILON if eps is None else eps
    builders = {
        "bce": lambda: BCELoss(bce_eps),
        "focal": lambda: FocalLoss(gamma, alpha, focal_eps),
        "dice": _dice,
        "dice_focal": lambda: SumLoss(_dice(), FocalLoss(gamma, alpha, focal_eps)),
        "dice_bce": lambda: SumLoss(_dice(), BCELoss(bce_eps)),
    }
    if name not in builders:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    return builders[name]()


__all__ = ["LOSS_NAMES", "BCELoss", "FocalLoss", "SumLoss", "build_loss", "binary_cross_entropy", "binary_focal_loss"]
