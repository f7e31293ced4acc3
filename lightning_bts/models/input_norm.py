"""How a network turns 0..255 images into its input: the paper's ``x / 255``, or a per-slice z-score.

The shared figshare slices are each stretched to span 0..255 (``slice_minmax``), so one bright pixel (fat, a
vessel) sets the scale of the whole slice: the mean of the pixels above 20 ranges over 55-91 between the 5th and
95th percentile of slices (reports/best_recipe/candidates.md). ``zscore`` instead gives every slice and channel
mean 0 and standard deviation 1 over its foreground, as nnU-Net normalises MRI (per image, z-score).

The foreground is every pixel at or above ``min + 0.1 * (max - min)`` of its slice and channel, not simply ``> 0``:
the training augmentation's brightness shift lifts a skull-stripped background off zero, and its Gaussian noise
(standard deviation up to 13 grey levels) scatters it, and neither should change what counts as brain. Every
pixel is then normalised with the foreground's statistics, so a zero background becomes one constant per slice
(minus the foreground's mean over its deviation) and dark tissue inside the brain keeps its contrast.
"""

from __future__ import annotations

import torch

from lightning_bts.errors import ConfigError

INPUT_NORMS = ("scale", "zscore")
FOREGROUND_FRACTION = 0.1  # of each slice's range above its minimum
MIN_STD = 1e-3  # in 0..255 units; a flat slice is all foreground, so it becomes zeros


def check_input_norm(input_norm: str) -> None:
    """Raises: ConfigError naming ``model.input_norm`` when it is not one of :data:`INPUT_NORMS`."""
    if input_norm not in INPUT_NORMS:
        raise ConfigError(f"model.input_norm: unknown input normalisation {input_norm!r}; choose one of "
                          f"{', '.join(INPUT_NORMS)}")


def normalise_input(images: torch.Tensor, input_norm: str, input_scale: float) -> torch.Tensor:
    """Float ``images`` ``(N, C, H, W)`` in 0..255 as the network's input.

    ``scale``: ``images * input_scale`` (the Keras ``Lambda(x / 255)``). ``zscore``: per slice and channel,
    ``(images - mean) / std`` with mean and standard deviation over the foreground (module docstring);
    ``input_scale`` is then not used (a z-score does not depend on the input's units).
    """
    if input_norm == "scale":
        return images * input_scale if input_scale != 1.0 else images
    low = images.amin(dim=(-2, -1), keepdim=True)
    high = images.amax(dim=(-2, -1), keepdim=True)
    foreground = (images >= low + FOREGROUND_FRACTION * (high - low)).to(images.dtype)
    count = foreground.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    mean = (images * foreground).sum(dim=(-2, -1), keepdim=True) / count
    variance = ((images - mean).square() * foreground).sum(dim=(-2, -1), keepdim=True) / count
    return (images - mean) / variance.sqrt().clamp_min(MIN_STD)
