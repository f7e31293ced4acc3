"""Preprocessing done once per dataset and kept: decode, validate, skull-strip, resize.

The result is a pair of uint8 arrays that every epoch, fold and loader worker reuses (workers fork and share
them). With ``cache_dir`` it is also written to disk, keyed by the source files and the settings, so that
cross-validation and sweeps preprocess a dataset once, not once per run.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lightning_bts.data.records import read_pair
from lightning_bts.data.skull_strip import SKULL_STRIP_METHODS, brain_mask
from lightning_bts.files import atomic_path

CACHE_FORMAT_VERSION = 2  # bump when preprocessing changes what it produces


@dataclass(frozen=True)
class PreprocessedSlices:
    """Images ``(N, S, S, C)`` uint8 (C = the model's in_channels) and masks ``(N, S, S)`` {0, 1}."""

    images: np.ndarray
    masks: np.ndarray


def preprocess_image(image: np.ndarray, image_size: int, skull_strip: str, rgb: bool) -> np.ndarray:
    """uint8 ``(S, S, C)`` from a uint8 ``(H, W)`` or RGB ``(H, W, 3)`` image: strip the skull, set channels, resize.

    Training, evaluation and prediction on new scans all go through this function, so a model always sees
    input prepared the way it was trained.
    """
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if rgb:
        image = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    else:
        image = gray
    if skull_strip != "none":
        brain = brain_mask(gray, skull_strip)
        image = image * (brain[..., None] if image.ndim == 3 else brain).astype(np.uint8)
    shrinking = image.shape[0] > image_size or image.shape[1] > image_size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    image = cv2.resize(image, (image_size, image_size), interpolation=interpolation)
    return image.reshape(image_size, image_size, -1)


def preprocess_slice(
    image_path: str, mask_path: str, image_size: int, skull_strip: str, rgb: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One slice: read and validate, prepare the image, resize the mask (nearest; it is never stripped)."""
    image, mask = read_pair(image_path, mask_path)
    mask = cv2.resize(mask, (image_size, image_size), interpolation=cv2.INTER_NEAREST)
    return preprocess_image(image, image_size, skull_strip, rgb), mask


def preprocess_dataset(
    records: pd.DataFrame,
    image_size: int,
    skull_strip: str,
    rgb: bool = False,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> PreprocessedSlices:
    """All slices of ``records``, preprocessed in threads (OpenCV releases the GIL), from cache if present."""
    if skull_strip not in SKULL_STRIP_METHODS:
        raise ValueError(f"unknown skull_strip {skull_strip!r}; choose one of {', '.join(SKULL_STRIP_METHODS)}")
    cache_file = _cache_path(records, image_size, skull_strip, rgb, cache_dir) if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file) as cached:
            return PreprocessedSlices(cached["images"], cached["masks"])

    def work(row: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        return preprocess_slice(row[0], row[1], image_size, skull_strip, rgb)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        pairs = list(pool.map(work, zip(records.image_path, records.mask_path)))
    data = PreprocessedSlices(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    if cache_file is not None:
        _write_atomically(cache_file, data)
    return data


def _cache_path(records: pd.DataFrame, image_size: int, skull_strip: str, rgb: bool, cache_dir: str | Path) -> Path:
    """A file name that changes whenever a source file or a setting changes."""
    sources = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in (*records.image_path, *records.mask_path)]
    settings = {"v": CACHE_FORMAT_VERSION, "size": image_size, "strip": skull_strip, "rgb": rgb, "src": sources}
    digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"slices-{image_size}-{skull_strip}-{digest}.npz"


def _write_atomically(path: Path, data: PreprocessedSlices) -> None:
    with atomic_path(path) as temporary:
        np.savez(temporary, images=data.images, masks=data.masks)
