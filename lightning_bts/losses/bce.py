"""Keras ``binary_crossentropy`` from logits.

Keras clips probabilities into ``[eps, 1 - eps]`` (``eps = 1e-7``) before taking logs. Clipping ``p`` and
then taking ``log(p)`` equals clamping ``log(sigmoid(x))`` into ``[log(eps), log(1 - eps)]``, which we compute
with ``logsigmoid`` so saturated logits give finite values and zero gradient, just as the clipped Keras loss
does. ``eps = 0`` turns the clipping off (pure, unclipped losses). In *training* Keras computes the loss of a
sigmoid layer from its logits, unclipped, so :class:`BCELoss` defaults to ``eps=0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KERAS_EPSILON = 1e-7


def clipped_log_probs(logits: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``log(p)`` and ``log(1 - p)`` with ``p = sigmoid(logits)`` clipped into ``[eps, 1 - eps]``."""
    log_p = F.logsigmoid(logits)
    log_q = F.logsigmoid(-logits)
    if eps > 0:
        low, high = math.log(eps), math.log1p(-eps)
        log_p = log_p.clamp(low, high)
        log_q = log_q.clamp(low, high)
    return log_p, log_q


def binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor, eps: float = KERAS_EPSILON) -> torch.Tensor:
    """Per-pixel Keras ``binary_crossentropy``.

    Shape:
        logits, target: any equal shapes; target in {0, 1} (soft labels allowed). Returns that shape.
    """
    log_p, log_q = clipped_log_probs(logits.float(), eps)
    target = target.float()
    return -(target * log_p + (1 - target) * log_q)


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
