"""Time one EMA update of the recipe's U-Net: the per-tensor ``avg_fn`` used until 08fa9b2 against its ``multi_avg_fn``.

    python reports/best_recipe/h200_gpu/ema_update_timing.py

Measured at 08fa9b2 on the 2-core AMD EPYC with AVX2 only, nothing else running (2026-12-04 21:39 UTC), two rounds:
avg_fn 9.03 and 5.88 ms per update, multi_avg_fn 1.40 and 1.40 ms. On this CPU a training step takes about 700 ms
(fp32, batch 16), so the change is under 1 % here; on the H200 an epoch of 90 steps took 3.9 s, validation included
(43 ms a step), and the old update also read the step count on the host once per tensor (142 GPU synchronisations a
step). Not yet measured on a GPU.
"""

import time

import torch
from torch.optim.swa_utils import AveragedModel

from lightning_bts.models.factory import build_network
from lightning_bts.training.ema import warmup_decay, warmup_ema_fn


def per_tensor_avg_fn(decay: float):
    """The ``avg_fn`` WarmupEMA used before 08fa9b2."""

    @torch.no_grad()
    def update(averaged, current, num_averaged):
        rate = warmup_decay(decay, num_averaged)
        return rate * averaged + (1.0 - rate) * current

    return update


net = build_network(norm="batch", deep_supervision=True)
variants = [("avg_fn (before)", {"avg_fn": per_tensor_avg_fn(0.999)}),
            ("multi_avg_fn (now)", {"multi_avg_fn": warmup_ema_fn(0.999)})]
for name, kwargs in variants * 2:
    averaged = AveragedModel(net, use_buffers=True, **kwargs)
    for _ in range(20):
        averaged.update_parameters(net)
    start, updates = time.perf_counter(), 300
    for _ in range(updates):
        averaged.update_parameters(net)
    print(f"{name}: {1000 * (time.perf_counter() - start) / updates:.2f} ms per update")
