"""Keras' Adam, step for step, for torch: the optimiser the paper's results were trained with; and the optimiser
a config names (:func:`build_optimizer`: ``keras_adam``, ``adam``, ``adamw``, ``sgd``).

Keras' Adam adds epsilon to ``sqrt(v)`` *before* bias correction,
``w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``, torch *after* it,
``w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``. Keras' update therefore equals torch's with
``eps / sqrt(1 - b2^t)`` in place of ``eps``: 3.2e-6 at step 1, 7.1e-7 at step 20 for ``eps = 1e-7``. That
matters for this model because its loss is a mean over all pixels, so most gradients are ~1e-6, no larger than
that epsilon: stock torch Adam takes visibly larger early steps (``reports/keras_parity.md`` measures it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from lightning_bts.errors import ConfigError

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


OPTIMIZERS = ("keras_adam", "adam", "adamw", "sgd")


def resolve_optimizer(optimizer: str | None = None, keras_adam: bool = True) -> str:
    """The optimiser's name from ``model.optimizer`` and the older ``model.keras_adam`` flag.

    ``optimizer=None`` (the default, and every checkpoint saved before the option existed) means ``keras_adam``,
    or ``adam`` where ``keras_adam`` is false.

    Raises:
        ConfigError: an unknown name, or ``keras_adam`` chosen while ``keras_adam=False``.
    """
    if optimizer is None:
        return "keras_adam" if keras_adam else "adam"
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"model.optimizer: unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if optimizer == "keras_adam" and not keras_adam:
        raise ConfigError("model.optimizer=keras_adam contradicts model.keras_adam=false; set only model.optimizer "
                          "(keras_adam is the older spelling)")
    return optimizer


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                    adam_eps: float = 1e-7, momentum: float = 0.99) -> torch.optim.Optimizer:
    """The optimiser called ``name`` (see :data:`OPTIMIZERS`).

    ``keras_adam`` (:class:`KerasAdam`), ``adam`` and ``adamw`` use ``adam_eps``; ``weight_decay`` is an L2 term in
    the gradient for ``keras_adam``, ``adam`` and ``sgd`` and decoupled (``w -= lr * weight_decay * w``) for
    ``adamw``. ``sgd`` uses Nesterov momentum (``momentum`` 0.99 by default, as nnU-Net, which pairs it with
    ``lr`` 0.01 and poly decay).

    Raises:
        ConfigError: an unknown name, a negative ``weight_decay``, or ``sgd`` with momentum outside (0, 1).
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"model.optimizer: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if weight_decay < 0:
        raise ConfigError(f"model.weight_decay must be >= 0, got {weight_decay}")
    if name == "sgd":
        if not 0 < momentum < 1:
            raise ConfigError(f"model.momentum must be in (0, 1) for SGD with Nesterov momentum, got {momentum}")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    adam = {"keras_adam": KerasAdam, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return adam(params, lr=lr, eps=adam_eps, weight_decay=weight_decay)
