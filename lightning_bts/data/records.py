"""Reading and validating a dataset folder.

Two layouts are accepted:

* the shared layout: ``images/``, ``masks/`` and ``metadata.csv`` with at least ``image``, ``mask`` and
  ``patient_group`` columns (``tumor_type`` is used for stratification when present; ``patient_id``, when present,
  tells which rows are one scan, for neighbouring slices: :mod:`lightning_bts.data.neighbours`);
* plain paired folders ``images/`` and ``masks/`` with the same file names and no ``metadata.csv``. Each
  slice is then its own patient group, so k-fold splits cannot keep a patient's slices together; a warning
  says so.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lightning_bts.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
REQUIRED_COLUMNS = ("image", "mask", "patient_group")


class DatasetError(UserError):
    """A dataset folder or file is not what the pipeline expects; the message names it."""


def load_records(root: str | Path) -> pd.DataFrame:
    """One row per slice: ``key``, ``image_path``, ``mask_path``, ``patient_group``, ``tumor_type``, ``scan``.

    ``scan`` is the metadata's ``patient_id`` where it has one, else ``patient_group`` (each slice its own scan
    without ``metadata.csv``).

    Only checks that the files exist; pixels are checked when they are read (:func:`read_pair`).

    Raises:
        DatasetError: missing folder, metadata without required columns, missing files, no slices.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist (expected images/, masks/ and metadata.csv)")
    metadata = root / "metadata.csv"
    records = _records_from_metadata(root, metadata) if metadata.is_file() else _records_from_folders(root)
    if records.empty:
        raise DatasetError(f"dataset folder {root} holds no slices")
    duplicated = records["key"][records["key"].duplicated()].tolist()
    if duplicated:
        raise DatasetError(f"{root}: image file names must be unique, repeated: {duplicated[:5]}")
    missing = [p for p in (*records.image_path, *records.mask_path) if not Path(p).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} file(s) listed for {root} are missing, first: {missing[0]}")
    return records.reset_index(drop=True)


def _records_from_metadata(root: Path, metadata: Path) -> pd.DataFrame:
    table = pd.read_csv(metadata, dtype=str)
    absent = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if absent:
        raise DatasetError(f"{metadata} lacks column(s) {absent}; expected at least {list(REQUIRED_COLUMNS)}")
    if table[list(REQUIRED_COLUMNS)].isna().any().any():
        raise DatasetError(f"{metadata} has empty cells in {list(REQUIRED_COLUMNS)}")
    return pd.DataFrame(
        {
            "key": [Path(p).stem for p in table["image"]],
            "image_path": [str(root / p) for p in table["image"]],
            "mask_path": [str(root / p) for p in table["mask"]],
            "patient_group": table["patient_group"].astype(str),
            "tumor_type": table["tumor_type"] if "tumor_type" in table.columns else "unknown",
            "scan": (table["patient_id"].fillna(table["patient_group"]) if "patient_id" in table.columns
                     else table["patient_group"]).astype(str),
        }
    )


def _records_from_folders(root: Path) -> pd.DataFrame:
    image_dir, mask_dir = root / "images", root / "masks"
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise DatasetError(
            f"dataset folder {root} needs images/ and masks/ (and ideally metadata.csv with patient_group)"
        )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    unmatched = [p.name for p in images if p.stem not in masks]
    if unmatched:
        raise DatasetError(f"no mask in {mask_dir} for image(s) {unmatched[:5]} (masks are matched by file name)")
    warnings.warn(
        f"{root} has no metadata.csv: every slice becomes its own patient group, so slices of one patient "
        "may land in different folds (leakage). Add metadata.csv with a patient_group column to avoid it.",
        stacklevel=2,
    )
    return pd.DataFrame(
        {
            "key": [p.stem for p in images],
            "image_path": [str(p) for p in images],
            "mask_path": [str(masks[p.stem]) for p in images],
            "patient_group": [p.stem for p in images],
            "tumor_type": "unknown",
            "scan": [p.stem for p in images],
        }
    )


def read_image(path: str | Path) -> np.ndarray:
    """An image as uint8, ``(H, W)`` grayscale or ``(H, W, 3)`` RGB.

    Raises:
        DatasetError: the file cannot be decoded, or is not 8-bit grayscale/RGB.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(f"cannot read image {path}: not an image file OpenCV can decode")
    if image.dtype != np.uint8:
        raise DatasetError(f"image {path} is {image.dtype}; expected 8-bit (uint8) pixels")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0]
    if image.ndim != 2:
        raise DatasetError(f"image {path} has shape {image.shape}; expected (H, W) or (H, W, 3)")
    return image


def read_mask(path: str | Path, expected_shape: tuple[int, int]) -> np.ndarray:
    """A binary mask as uint8 {0, 1}. Accepts {0, 255} or {0, 1} files.

    Raises:
        DatasetError: unreadable, wrong size, or values other than 0 and one positive level.
    """
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"cannot read mask {path}: not an image file OpenCV can decode")
    if mask.shape != expected_shape:
        raise DatasetError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is "
                           f"{expected_shape[1]}x{expected_shape[0]}; image and mask must be pixel-aligned")
    values = np.unique(mask)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = values[:8].tolist()
        raise DatasetError(f"mask {path} is not binary: values {shown}{'...' if len(values) > 8 else ''}; "
                           "expected {0, 255} or {0, 1}")
    return (mask > 0).astype(np.uint8)


def read_pair(image_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Image and its validated binary mask."""
    image = read_image(image_path)
    return image, read_mask(mask_path, image.shape[:2])
