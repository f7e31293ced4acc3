"""Training augmentation (albumentations), applied to image and mask together.

Geometric transforms move the mask with the image (nearest-neighbour, zero fill, so masks stay binary);
intensity transforms touch the image only. Validation, test and prediction data are never augmented.

Which transforms run, and how often: ``probabilities``, a mapping from a name in :data:`AUGMENTATIONS` to the
probability of applying it to a slice (``data.augmentation`` in a config). ``None`` is the default pipeline,
:data:`DEFAULT_PROBABILITIES`: flip, a mild combined affine and brightness/contrast, each at 0.5. Transforms run in
the fixed order of :data:`AUGMENTATIONS`, geometric first, whatever the mapping's order. ``strength`` scales every
range: 0 turns augmentation off, 1 is the default, 2 twice as strong. Ranges at strength 1:

=======================  ==============================================================================
name                     transform
=======================  ==============================================================================
``flip``                 horizontal flip (left-right; the brain is roughly symmetric)
``vertical_flip``        vertical flip (top-bottom): with ``flip``, nnU-Net's mirroring along both image axes
``affine``               the default's combined affine: scale ±10 %, shift ±5 %, rotate ±10°
``rotate``               rotation ±15°
``scale``                zoom ±15 %
``grid``                 grid distortion (5x5 cells, each moved up to ±10 % of a cell): a cheap elastic warp
``gamma``                gamma 0.8-1.2
``brightness_contrast``  brightness and contrast ±10 %
``blur``                 Gaussian blur, sigma 0.25-1 pixel
``noise``                Gaussian noise, std up to 5 % of the intensity range, the same on every channel
=======================  ==============================================================================

Albumentations draws from its own generator, not torch's or NumPy's, so ``seed_everything`` does not reach it:
the DataModule seeds it from torch's generator, and :func:`seed_augmentation_worker` gives each loader worker a
seed of its own (every worker starts from a copy of the same pipeline, which would otherwise repeat the same
draws in every worker).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import albumentations as A
import cv2
import torch

from lightning_bts.errors import ConfigError

DEFAULT_PROBABILITIES = {"flip": 0.5, "affine": 0.5, "brightness_contrast": 0.5}

# Geometric transforms: linear for the image, nearest for the mask, zero outside the image for both.
_GEOMETRIC = {"interpolation": cv2.INTER_LINEAR, "mask_interpolation": cv2.INTER_NEAREST,
              "border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}


def _affine(s: float, p: float) -> A.BasicTransform:
    return A.Affine(scale=(1 - 0.1 * s, 1 + 0.1 * s), translate_percent=(-0.05 * s, 0.05 * s),
                    rotate=(-10 * s, 10 * s), **_GEOMETRIC, p=p)


# name -> builder(strength, probability); the order is the order of application.
_BUILDERS: dict[str, Callable[[float, float], A.BasicTransform]] = {
    "flip": lambda s, p: A.HorizontalFlip(p=p),
    "vertical_flip": lambda s, p: A.VerticalFlip(p=p),
    "affine": _affine,
    "rotate": lambda s, p: A.Affine(rotate=(-15 * s, 15 * s), **_GEOMETRIC, p=p),
    "scale": lambda s, p: A.Affine(scale=(max(0.1, 1 - 0.15 * s), 1 + 0.15 * s), **_GEOMETRIC, p=p),
    "grid": lambda s, p: A.GridDistortion(num_steps=5, distort_limit=(-min(0.1 * s, 0.9), min(0.1 * s, 0.9)),
                                          **_GEOMETRIC, p=p),
    "gamma": lambda s, p: A.RandomGamma(gamma_limit=(max(1.0, 100 - 20 * s), 100 + 20 * s), p=p),
    "brightness_contrast": lambda s, p: A.RandomBrightnessContrast(brightness_limit=0.1 * s,
                                                                   contrast_limit=0.1 * s, p=p),
    "blur": lambda s, p: A.GaussianBlur(sigma_limit=(0.25 * s, 1.0 * s), blur_limit=0, p=p),
    "noise": lambda s, p: A.GaussNoise(std_range=(0.0, min(0.05 * s, 1.0)), per_channel=False, p=p),
}
AUGMENTATIONS = tuple(_BUILDERS)


def check_probabilities(probabilities: Mapping[str, float]) -> None:
    """Refuse unknown transform names and probabilities outside [0, 1].

    Raises:
        ConfigError: the message names ``data.augmentation`` and lists the valid names.
    """
    unknown = sorted(set(probabilities) - set(AUGMENTATIONS))
    if unknown:
        raise ConfigError(f"data.augmentation: unknown transform(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(AUGMENTATIONS)}")
    for name, probability in probabilities.items():
        if not 0 <= probability <= 1:
            raise ConfigError(f"data.augmentation.{name}: a probability must be in [0, 1], got {probability}")


def train_augmentation(strength: float = 1.0, seed: int | None = None,
                       probabilities: Mapping[str, float] | None = None) -> A.Compose | None:
    """The training pipeline: ``probabilities`` (default :data:`DEFAULT_PROBABILITIES`) at ``strength``;
    ``None`` when ``strength`` is 0 or every probability is 0.

    Raises:
        ConfigError: negative ``strength``, unknown names, probabilities outside [0, 1].
    """
    if strength < 0:
        raise ConfigError(f"data.augment: augmentation strength must be >= 0, got {strength}")
    probabilities = DEFAULT_PROBABILITIES if probabilities is None else probabilities
    check_probabilities(probabilities)
    chosen = [name for name in AUGMENTATIONS if probabilities.get(name, 0) > 0]
    if strength == 0 or not chosen:
        return None
    return A.Compose([_BUILDERS[name](strength, probabilities[name]) for name in chosen], seed=seed)


def seed_augmentation_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the worker's augmentation from its torch seed (the loader's base
    seed + worker id, itself drawn from the seeded main process), so workers differ and runs repeat."""
    info = torch.utils.data.get_worker_info()
    augmentation = getattr(info.dataset, "augmentation", None) if info is not None else None
    if augmentation is not None:
        augmentation.set_random_seed(torch.initial_seed() % 2**32)
