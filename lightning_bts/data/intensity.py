"""How raw scanner values become the 8-bit slices a model is trained on, defined once for every reader.

The figshare converter maps each int16 slice with :func:`to_uint8` before writing its PNG, and the NIfTI and
DICOM readers of prediction and evaluation map each slice of a volume with the same function, so a model sees a
new scan the way it saw its training data. Which mapping a dataset was made with is the data setting
``intensity`` (``BrainTumorDataModule(intensity=...)``), recorded in every checkpoint written by ``fit.py``.

Checkpoints written before the setting existed (the shipped ``pretrained/best_cpu_128px.ckpt``,
``tests/data/pre_predictor.ckpt``) were all trained on figshare slices: a checkpoint without the record means
:data:`DEFAULT_INTENSITY`, the figshare per-slice min-max mapping.
"""

from __future__ import annotations

import numpy as np

from lightning_bts.errors import ConfigError

SLICE_MINMAX = "slice_minmax"
INTENSITY_MAPPINGS = (SLICE_MINMAX,)
"""Known mappings. ``slice_minmax``: each slice's minimum to 0 and maximum to 255, linear, truncated."""
DEFAULT_INTENSITY = SLICE_MINMAX


def check_intensity(mapping: str) -> str:
    """``mapping`` if it is one of :data:`INTENSITY_MAPPINGS`.

    Raises:
        ConfigError: an unknown mapping (e.g. from a checkpoint written by a newer version).
    """
    if mapping not in INTENSITY_MAPPINGS:
        raise ConfigError(f"unknown intensity mapping {mapping!r}; this version knows {', '.join(INTENSITY_MAPPINGS)}")
    return mapping


def to_uint8(image: np.ndarray, mapping: str = DEFAULT_INTENSITY) -> np.ndarray:
    """uint8 ``(H, W)`` from one slice of raw values (any numeric dtype), by ``mapping``.

    ``slice_minmax`` is the figshare shared copy's mapping: the shared PNGs each span exactly 0-255, and 255
    almost always occurs on a single pixel (the slice maximum), which fits truncation rather than rounding. A
    constant slice becomes all zeros; non-finite values (NaN in some float NIfTI files) count as the minimum.
    """
    check_intensity(mapping)
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, values[finite].min() if finite.any() else 0.0)
    low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.floor((values - low) * (255.0 / (high - low))).astype(np.uint8)
