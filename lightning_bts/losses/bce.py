"""Keras-exact binary losses computed from logits.

Keras clips probabilities into ``[eps, 1 - eps]`` (``eps = 1e-7``) before taking logs. Clipping ``p`` and
then taking ``log(p)`` equals clamping ``log(sigmoid(x))`` into ``[log(eps), log(1 - eps)]``, which we compute
with ``logsigmoid`` so saturated logits give finite values and zero gradient, just as the clipped Keras loss
does. ``eps = 0`` turns the clipping off (pure, unclipped losses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KERAS_EPSILON = 1e-7


def _clipped_log_probs(logits: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
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
    log_p, log_q = _clipped_log_probs(logits.float(), eps)
    target = target.float()
    return -(target * log_p + (1 - target) * log_q)


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
