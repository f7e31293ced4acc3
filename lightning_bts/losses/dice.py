"""Soft Dice loss from logits, pooled over the batch ("batch Dice") or per image.

Pooled, ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` with the sums over every pixel of the batch, is the soft
form of the pooled Dice the paper reports (:mod:`lightning_bts.metrics`), and nnU-Net's ``batch_dice``. Per image,
the same ratio is taken for each image and ``1 - Dice`` averaged over the batch, the soft form of the per-image
mean Dice. ``s`` is nnU-Net's smoothing, 1e-5: small enough to leave the ratio untouched wherever there is tumour,
and it makes an image (or batch) with no tumour and no predicted tumour score Dice 1 instead of 0/0.

The ``dice`` loss of :func:`lightning_bts.losses.build_loss` is segmentation-models-pytorch's ``DiceLoss`` in binary
mode, which also pools over the batch (it sums over dims (0, 2) of ``(N, 1, H*W)``), with no smoothing and one
difference: a batch with no tumour pixel at all contributes 0 instead of pushing predictions towards empty.
"""

from __future__ import annotations

import torch
from torch import nn

DICE_SMOOTH = 1e-5


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, pooled: bool = True,
                   smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """``1 - soft Dice`` of ``sigmoid(logits)`` against ``target``, pooled over the batch or per image.

    Shape:
        logits, target: ``(N, ...)``, equal shapes; target in {0, 1}. Returns a scalar when ``pooled``, else
        ``(N,)``, one loss per image.
    """
    probs = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    dims = (0, 1) if pooled else (1,)
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return 1 - (2 * intersection + smooth) / (total + smooth)


class SoftDiceLoss(nn.Module):
    """Soft Dice loss, pooled over the batch (``pooled=True``) or the mean of per-image losses.

    Shape:
        logits, target: ``(N, 1, H, W)``; returns a scalar.
    """

    def __init__(self, pooled: bool = True, smooth: float = DICE_SMOOTH) -> None:
        super().__init__()
        self.pooled, self.smooth = pooled, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, target, self.pooled, self.smooth).mean()
