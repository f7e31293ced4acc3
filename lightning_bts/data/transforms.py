"""Training augmentation (albumentations), applied to image and mask together.

Geometric transforms move the mask with the image (nearest-neighbour, zero fill); intensity transforms touch
the image only. ``strength`` scales every range: 0 turns augmentation off, 1 is the default, 2 twice as strong.
Validation, test and prediction data are never augmented.

Albumentations draws from its own generator, not torch's or NumPy's, so ``seed_everything`` does not reach it:
the DataModule seeds it from torch's generator, and :func:`seed_augmentation_worker` gives each loader worker a
seed of its own (every worker starts from a copy of the same pipeline, which would otherwise repeat the same
draws in every worker).
"""

from __future__ import annotations

import albumentations as A
import cv2
import torch


def train_augmentation(strength: float = 1.0, seed: int | None = None) -> A.Compose | None:
    """Flips, small rotation/scale/shift, brightness/contrast; ``None`` when ``strength`` is 0."""
    if strength < 0:
        raise ValueError(f"augmentation strength must be >= 0, got {strength}")
    if strength == 0:
        return None
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(1 - 0.1 * strength, 1 + 0.1 * strength),
                translate_percent=(-0.05 * strength, 0.05 * strength),
                rotate=(-10 * strength, 10 * strength),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.5,
            ),
            A.RandomBrightnessContrast(
                brightness_limit=0.1 * strength, contrast_limit=0.1 * strength, p=0.5
            ),
        ],
        seed=seed,
    )


def seed_augmentation_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the worker's augmentation from its torch seed (the loader's base
    seed + worker id, itself drawn from the seeded main process), so workers differ and runs repeat."""
    info = torch.utils.data.get_worker_info()
    augmentation = getattr(info.dataset, "augmentation", None) if info is not None else None
    if augmentation is not None:
        augmentation.set_random_seed(torch.initial_seed() % 2**32)
