"""Neighbouring slices as input channels ("2.5-D"): each slice with the one before and after it in its scan.

One T1-CE slice often does not show a non-enhancing glioma, and enhancing normal structures (pituitary gland,
cavernous sinus, vessels) look like tumour on it; every model trained on fold 0 fails the same such slices
(``reports/best_recipe/wrong_place/``). The slices next to it carry what one slice lacks: figshare files a
patient's slices under consecutive numbers, and consecutive slices of one patient are neighbours in the scan (their
true masks overlap with a median Dice of 0.81 over the 1700 such pairs of the shared set). With
``data.neighbour_slices`` the three input channels of the network (which the paper fills with one grayscale slice
three times) hold the previous slice, the slice itself and the next one, so the network needs no change. On
figshare's fold 0 it did not help (1.2 points below the recipe on validation; ``reports/best_recipe/candidates.md``),
so the recipe leaves it off; it is kept for scans whose neighbouring slices are closer and more alike.

A slice's neighbours are the rows just before and after it in the dataset's table (``metadata.csv`` order) that
belong to the same scan (``patient_id`` where the table has one, else ``patient_group``); where there is none
(the first or last slice of a scan, a scan of one slice), the slice itself stands in, as it does for every channel
without this option.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def neighbour_rows(scans: Sequence[object] | pd.Series) -> np.ndarray:
    """``(N, 3)`` row numbers of each slice's previous slice, itself and its next slice; ``scans`` says which scan
    each row belongs to (rows of one scan follow each other in order)."""
    scan = np.asarray(scans, dtype=str)
    rows = np.arange(len(scan))
    same = scan[1:] == scan[:-1]
    previous = rows.copy()
    previous[1:][same] = rows[:-1][same]
    following = rows.copy()
    following[:-1][same] = rows[1:][same]
    return np.stack([previous, rows, following], axis=1)


def stack_neighbours(gray: np.ndarray, scans: Sequence[object] | pd.Series) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` images from grayscale ``(N, S, S)`` or ``(N, S, S, 1)`` slices: each slice between its
    neighbours, :func:`neighbour_rows` of ``scans``."""
    gray = gray.reshape(gray.shape[:3])
    return np.ascontiguousarray(gray[neighbour_rows(scans)].transpose(0, 2, 3, 1))
