"""Binary focal loss from logits, as ``focal_loss.BinaryFocalLoss`` (the package the paper used) computes it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_bts.losses.bce import KERAS_EPSILON


def binary_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    eps: float = KERAS_EPSILON,
) -> torch.Tensor:
    """Per-pixel focal loss (Lin et al. 2017) as ``focal_loss.BinaryFocalLoss`` computes it.

    Without ``alpha``: ``-(1-p)^gamma log p`` on tumour pixels, ``-p^gamma log(1-p)`` on background, where the
    focal-loss package clips ``p`` and ``1 - p`` from below at ``eps`` (the modulating factor too).
    With ``alpha``: the alpha-balanced form, tumour terms times ``alpha``, background terms times ``1 - alpha``.

    Shape:
        logits, target: any equal shapes; target in {0, 1}. Returns that shape.
    """
    logits = logits.float()
    target = target.float()
    log_p = F.logsigmoid(logits)
    log_q = F.logsigmoid(-logits)
    if eps > 0:
        # focal-loss clips only from below: max(p, eps), max(1 - p, eps).
        log_eps = math.log(eps)
        log_p = log_p.clamp(min=log_eps)
        log_q = log_q.clamp(min=log_eps)
    positive = -torch.exp(gamma * log_q) * log_p
    negative = -torch.exp(gamma * log_p) * log_q
    if alpha is not None:
        positive = alpha * positive
        negative = (1 - alpha) * negative
    return target * positive + (1 - target) * negative


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
