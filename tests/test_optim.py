import math

import numpy as np
import pytest
import torch

from lightning_bts.module import SegmentationModule
from lightning_bts.optim import KerasAdam


def keras_adam_update(grads: list[float], lr: float, eps: float) -> float:
    """Keras' Adam on one weight, written out: epsilon added to sqrt(v) before bias correction,
    the bias corrections computed with float32 betas (as TensorFlow does)."""
    b1, b2 = float(np.float32(0.9)), float(np.float32(0.999))
    w = m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w -= lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (math.sqrt(v) + eps)
    return w


@pytest.mark.parametrize("scale", [1e-6, 1.0])
def test_keras_adam_takes_keras_steps(scale):
    # Gradients of 1e-6 (typical for a per-pixel mean loss) are where torch's and Keras' epsilon differ.
    grads = [scale * g for g in (1.0, -0.5, 2.0, 0.25, 1.5)]
    weight = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = KerasAdam([weight], lr=1e-3, eps=1e-7)
    for g in grads:
        weight.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
    assert weight.item() == pytest.approx(keras_adam_update(grads, 1e-3, 1e-7), rel=1e-12)

    stock = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    stock_optimizer = torch.optim.Adam([stock], lr=1e-3, eps=1e-7)
    for g in grads:
        stock.grad = torch.tensor([g], dtype=torch.float64)
        stock_optimizer.step()
    if scale < 1e-3:  # the difference is real where gradients are as small as epsilon
        assert abs(stock.item() - weight.item()) > 0.1 * abs(weight.item())


def test_keras_adam_restores_lr_and_eps_so_schedulers_work():
    weight = torch.zeros(2, requires_grad=True)
    optimizer = KerasAdam([weight], lr=1e-3, eps=1e-7)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    weight.grad = torch.ones(2)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert optimizer.param_groups[0]["eps"] == 1e-7


def test_keras_adam_resumes_its_step_count_from_a_state_dict():
    weight = torch.zeros(1, requires_grad=True)
    optimizer = KerasAdam([weight])
    for _ in range(3):
        weight.grad = torch.ones(1)
        optimizer.step()
    resumed = KerasAdam([torch.zeros(1, requires_grad=True)])
    resumed.load_state_dict(optimizer.state_dict())
    assert resumed.param_groups[0]["keras_step"] == 3


def test_the_module_trains_with_keras_adam_unless_asked_not_to():
    assert type(SegmentationModule(base_filters=4).configure_optimizers()) is KerasAdam
    assert type(SegmentationModule(base_filters=4, keras_adam=False).configure_optimizers()) is torch.optim.Adam
