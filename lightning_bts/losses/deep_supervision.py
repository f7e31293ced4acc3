"""Deep supervision: one loss on the main logits plus the same loss on each lower-resolution side output.

As nnU-Net: the mask is downsampled to each output's size with nearest-neighbour (it stays binary), and the
outputs are weighted 1, 1/2, 1/4, ... from full resolution down, normalised to sum to 1. (nnU-Net also gives its
lowest-resolution output weight 0; its networks have 6-8 levels, ours 4, so we keep every side output.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def deep_supervision_weights(count: int) -> torch.Tensor:
    """Weights ``1, 1/2, 1/4, ...`` for ``count`` outputs (full resolution first), normalised to sum 1."""
    weights = torch.tensor([0.5**level for level in range(count)])
    return weights / weights.sum()


def deep_supervision_loss(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                          outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Weighted sum of ``loss(output, target resized to the output)`` over ``outputs``.

    Shape:
        outputs: logits ``(N, 1, H, W)`` first, then ``(N, 1, H / 2**k, W / 2**k)``; target ``(N, 1, H, W)``
        in {0, 1}. Returns a scalar.
    """
    weights = deep_supervision_weights(len(outputs))
    total = torch.zeros((), device=outputs[0].device)
    for weight, output in zip(weights.tolist(), outputs):
        scaled = target if output.shape[-2:] == target.shape[-2:] else \
            F.interpolate(target.float(), size=output.shape[-2:], mode="nearest")
        total = total + weight * loss(output, scaled)
    return total


class DeepSupervisionLoss(nn.Module):
    """Wraps a loss: a list of outputs gets :func:`deep_supervision_loss`, a single tensor the plain loss.

    Shape:
        outputs: logits ``(N, 1, H, W)`` or a list of them at halving resolutions; target ``(N, 1, H, W)``.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        return deep_supervision_loss(self.loss, outputs, target)
