"""Keras' Adam, step for step, for torch: the optimiser the paper's results were trained with.

Keras' Adam adds epsilon to ``sqrt(v)`` *before* bias correction,
``w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``, torch *after* it,
``w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``. Keras' update therefore equals torch's with
``eps / sqrt(1 - b2^t)`` in place of ``eps``: 3.2e-6 at step 1, 7.1e-7 at step 20 for ``eps = 1e-7``. That
matters for this model because its loss is a mean over all pixels, so most gradients are ~1e-6, no larger than
that epsilon: stock torch Adam takes visibly larger early steps (``reports/keras_parity.md`` measures it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

ADAM_BETA1, ADAM_BETA2 = 0.9, 0.999


def keras_equivalent_eps(eps: float, step: int, beta2: float = ADAM_BETA2) -> float:
    """The torch Adam epsilon that reproduces Keras' update at 1-based ``step``: ``eps / sqrt(1 - b2^t)``."""
    return eps / math.sqrt(1.0 - beta2**step)


def _float32(value: float) -> float:
    return float(np.float32(value))


class KerasAdam(torch.optim.Adam):
    """``torch.optim.Adam`` taking exactly the steps of Keras' Adam on TensorFlow (Keras 2 and 3).

    Before each step it rescales the group's ``eps`` to ``eps / sqrt(1 - b2^t)`` (epsilon before bias
    correction) and its ``lr`` by the ratio of Keras' float32-beta bias corrections to torch's, then restores
    both, so learning-rate schedulers keep working. Defaults are Keras' (``eps=1e-7``).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (ADAM_BETA1, ADAM_BETA2),
                 eps: float = 1e-7, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self, closure=None):
        saved = []
        for group in self.param_groups:
            group["keras_step"] = step = group.get("keras_step", 0) + 1
            beta1, beta2 = group["betas"]
            torch_correction = math.sqrt(1 - beta2**step) / (1 - beta1**step)
            keras_correction = math.sqrt(1 - _float32(beta2) ** step) / (1 - _float32(beta1) ** step)
            saved.append((group["lr"], group["eps"]))
            group["lr"] = group["lr"] * keras_correction / torch_correction
            group["eps"] = keras_equivalent_eps(group["eps"], step, beta2)
        try:
            return super().step(closure)
        finally:
            for group, (lr, eps) in zip(self.param_groups, saved):
                group["lr"], group["eps"] = lr, eps
