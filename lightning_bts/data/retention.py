"""How much tumour a skull-stripping method keeps, and how much it removes, over a dataset folder.

A stripping method is only safe for training data if it keeps every tumour pixel, and only useful if it
still removes something. :func:`measure_retention` measures both per slice; :func:`summarize` counts the
slices that lose tumour by method and tumour type. Used by ``scripts/measure_skull_strip.py`` and the tests.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lightning_bts.data.records import load_records, read_pair
from lightning_bts.data.skull_strip import _grayscale, _otsu_foreground, brain_mask

SUBSTANTIAL_LOSS = 0.05
"""A slice losing more than this fraction of its tumour pixels counts as a substantial loss."""


def measure_retention(root: str | Path, method: str, workers: int | None = None) -> pd.DataFrame:
    """One row per slice of the dataset folder ``root``, in its order.

    Columns: ``slice`` (image file name), ``tumor_type``, ``tumour_pixels``, ``kept_pixels``,
    ``retained_fraction`` (kept / tumour pixels), ``removed_fraction`` (share of the image zeroed),
    ``head_removed_fraction`` (share of the head zeroed, the head being the convex hull of the whole Otsu
    foreground: background air does not count, skull, scalp and face do), ``mask_cpu_seconds`` (CPU time
    of :func:`brain_mask` alone, in its thread: unlike wall time, not inflated by other load).

    Slices are read in ``workers`` threads (OpenCV releases the GIL; default: one per CPU).

    Raises:
        ValueError: unknown method. DatasetError: missing or invalid files.
    """
    brain_mask(np.zeros((8, 8), np.uint8), method)  # unknown method: fail before reading anything
    records = load_records(root)

    def measure(paths: tuple[str, str]) -> dict[str, float]:
        image, tumour = read_pair(*paths)
        start = time.thread_time()
        keep = brain_mask(image, method)
        seconds = time.thread_time() - start
        head = _head(_grayscale(image))
        tumour_pixels = int(tumour.sum())
        kept_pixels = int(np.count_nonzero(tumour.astype(bool) & keep))
        return {
            "slice": Path(paths[0]).name,
            "tumour_pixels": tumour_pixels,
            "kept_pixels": kept_pixels,
            "retained_fraction": kept_pixels / tumour_pixels if tumour_pixels else 1.0,
            "removed_fraction": 1.0 - float(keep.mean()),
            "head_removed_fraction": float(np.count_nonzero(head & ~keep)) / max(1, int(head.sum())),
            "mask_cpu_seconds": seconds,
        }

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        rows = list(pool.map(measure, zip(records.image_path, records.mask_path)))
    table = pd.DataFrame(rows)
    table.insert(1, "tumor_type", records["tumor_type"].to_numpy())
    table.insert(0, "method", method)
    return table


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per method (in order of appearance) and tumour type (``all`` first, then alphabetical)."""
    flagged = table.assign(
        any_loss=table["kept_pixels"] < table["tumour_pixels"],
        loss_over_5pct=table["retained_fraction"] < 1.0 - SUBSTANTIAL_LOSS,
        total_loss=table["kept_pixels"] == 0,
        tumour_pixels_lost=table["tumour_pixels"] - table["kept_pixels"],
        cpu_ms_per_slice=table["mask_cpu_seconds"] * 1000,
    )
    both = pd.concat([flagged.assign(tumor_type="all"), flagged], ignore_index=True)
    return (
        both.groupby(["method", "tumor_type"], sort=False)
        .agg(
            slices=("slice", "size"),
            any_loss=("any_loss", "sum"),
            loss_over_5pct=("loss_over_5pct", "sum"),
            total_loss=("total_loss", "sum"),
            tumour_pixels_lost=("tumour_pixels_lost", "sum"),
            min_retained=("retained_fraction", "min"),
            mean_removed=("removed_fraction", "mean"),
            mean_head_removed=("head_removed_fraction", "mean"),
            cpu_ms_per_slice=("cpu_ms_per_slice", "mean"),
        )
        .reset_index()
        .sort_values(["method", "tumor_type"], key=lambda column: _sort_key(column, table["method"].unique()))
        .reset_index(drop=True)
    )


def _sort_key(column: pd.Series, methods: np.ndarray) -> pd.Series:
    if column.name == "method":
        return column.map({method: rank for rank, method in enumerate(methods)})
    return column.where(column != "all", "")  # "" sorts before every tumour type


def _head(gray: np.ndarray) -> np.ndarray:
    """Convex hull of all Otsu foreground: the head without the air around it (reference for removal)."""
    contours = cv2.findContours(_otsu_foreground(gray), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    head = np.zeros(gray.shape, np.uint8)
    if contours:
        cv2.fillConvexPoly(head, cv2.convexHull(np.vstack(contours)), 1)
    return head.astype(bool)
