"""Median time of one training step of configs/best_cpu.yaml's network and loss, with and without dropout.

Run from the repository root: ``python reports/best_recipe/candidates/no_dropout_seed42/step_time.py``. Batch 16 of
random 128x128 images, bf16 autocast, channels_last, deep supervision, per-slice Dice + BCE, AdamW; 25 steps, the
median of the last 20; each setting twice. No data loading, no validation, no EMA: the step alone.
"""

import sys
from pathlib import Path

import torch

from lightning_bts.training.module import SegmentationModule

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))  # the repository root, for benchmarks/
from benchmarks.step_anatomy import median_seconds  # noqa: E402


def median_step_seconds(dropout_scale: float, steps: int = 25, warmup: int = 5) -> float:
    torch.manual_seed(0)
    module = SegmentationModule(arch="paper_unet", norm="batch", deep_supervision=True, loss="dice_bce_image",
                                channels_last=True, dropout_scale=dropout_scale)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    images = torch.randint(0, 255, (16, 3, 128, 128), dtype=torch.uint8)
    masks = (torch.rand(16, 1, 128, 128) > 0.9).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module.loss_fn(module(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_seconds(step, repeats=steps - warmup, warmup=warmup)


if __name__ == "__main__":
    torch.set_num_threads(2)
    for _ in range(2):
        for scale in (1.0, 0.0):
            print(f"dropout_scale {scale}: median step {median_step_seconds(scale):.4f} s", flush=True)
