"""The figshare release of Cheng et al.'s brain tumour dataset (https://doi.org/10.6084/m9.figshare.1512427): its
files, and how one slice (MATLAB v7.3 ``N.mat``) and the cross-validation index (``cvind.mat``) are read.

MATLAB v7.3 files are HDF5 files written column-major, so h5py sees every 2-D array transposed: images and masks are
transposed back here.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import h5py
import numpy as np

from lightning_bts.errors import UserError

ARTICLE_ID = 1512427
DOI = "10.6084/m9.figshare.1512427"
API_URL = f"https://api.figshare.com/v2/articles/{ARTICLE_ID}"
ZIP_PARTS = (
    "brainTumorDataPublic_1-766.zip",
    "brainTumorDataPublic_767-1532.zip",
    "brainTumorDataPublic_1533-2298.zip",
    "brainTumorDataPublic_2299-3064.zip",
)
CVIND_FILE = "cvind.mat"
RELEASE_FILES = (*ZIP_PARTS, CVIND_FILE)
TUMOR_TYPES = {1: "meningioma", 2: "glioma", 3: "pituitary"}
NUM_FOLDS = 5
COLUMNS = (
    "slice_id", "image", "mask", "patient_id", "patient_group", "label", "tumor_type",
    "height", "width", "tumor_pixels", "tumor_fraction", "orig_cv_fold",
)  # fmt: skip
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 9]
SLICE_NAME = re.compile(r"(\d+)\.mat", re.IGNORECASE)
MR_WITH_LETTER = re.compile(r"(MR\d+)[A-Za-z]")
USER_AGENT = "lightning_bts-prepare_figshare (python urllib)"

Log = Callable[[str], None]


class FigshareError(UserError):
    """The release files are missing, malformed or cannot be downloaded; the message names the file."""


@dataclass(frozen=True)
class Slice:
    """One ``N.mat`` file, with image and mask transposed back to MATLAB's orientation (rows = image rows)."""

    image: np.ndarray  # (H, W), the stored intensities (int16 in the release)
    mask: np.ndarray  # (H, W) bool, True = tumour
    patient_id: str
    label: int


def read_slice(data: bytes, origin: str) -> Slice:
    """Decode one figshare slice file given as bytes; ``origin`` names it in error messages.

    Raises:
        FigshareError: not an HDF5 (MATLAB v7.3) file, no ``cjdata/image``, or fields of the wrong shape.
    """
    expected = "a MATLAB v7.3 file with a group cjdata holding image, tumorMask, label and PID"
    try:
        with h5py.File(io.BytesIO(data), "r") as mat:
            group = mat.get("cjdata")
            if not isinstance(group, h5py.Group) or "image" not in group:
                raise FigshareError(f"{origin}: no cjdata/image; expected {expected}")
            absent = [key for key in ("tumorMask", "label", "PID") if key not in group]
            if absent:
                raise FigshareError(f"{origin}: cjdata lacks {absent}; expected {expected}")
            image = np.asarray(group["image"]).T
            mask = np.asarray(group["tumorMask"]).T != 0
            labels = np.asarray(group["label"]).ravel()
            codes = np.asarray(group["PID"]).ravel()
            pid_is_empty = bool(group["PID"].attrs.get("MATLAB_empty", 0))  # then its data are dimensions
    except OSError as error:  # h5py's answer to bytes that are not HDF5
        raise FigshareError(f"{origin}: cannot be read as HDF5 ({error}); expected {expected}") from None
    if image.ndim != 2 or not np.issubdtype(image.dtype, np.number):
        raise FigshareError(f"{origin}: cjdata/image is {image.dtype} of shape {image.shape}; expected a 2-D array")
    if mask.shape != image.shape:
        raise FigshareError(f"{origin}: tumorMask is {mask.shape} but image is {image.shape}; expected equal shapes")
    if labels.size != 1 or float(labels[0]) not in TUMOR_TYPES:
        raise FigshareError(f"{origin}: cjdata/label is {labels.tolist()}; expected one of {list(TUMOR_TYPES)}")
    is_chars = codes.dtype.kind in "ui" and not pid_is_empty  # MATLAB char: UTF-16 code units
    patient_id = "".join(map(chr, codes.astype(np.int64))).strip("\x00 ") if is_chars else ""
    if not patient_id:
        raise FigshareError(f"{origin}: cjdata/PID is empty or not a character array; expected the patient ID")
    return Slice(image=image, mask=mask, patient_id=patient_id, label=int(labels[0]))


def read_cvind(data: bytes, origin: str) -> np.ndarray:
    """The release's fold of every slice (``folds[N - 1]`` for ``N.mat``), as int values 1-5.

    The figshare ``cvind.mat`` is MATLAB v7.3 (HDF5); an older-format copy (re-saved with ``-v7``) is read with
    scipy, so either works.
    """
    try:
        with h5py.File(io.BytesIO(data), "r") as mat:
            if "cvind" not in mat:
                raise FigshareError(f"{origin}: no dataset cvind; expected the 5-fold index of the release")
            folds = np.asarray(mat["cvind"]).ravel()
    except OSError:
        import scipy.io

        try:
            folds = np.asarray(scipy.io.loadmat(io.BytesIO(data))["cvind"]).ravel()
        except (ValueError, KeyError) as error:
            raise FigshareError(f"{origin}: cannot read variable cvind ({error}); expected cvind.mat") from None
    if folds.size == 0 or not np.all(np.isin(folds, np.arange(1, NUM_FOLDS + 1))):
        raise FigshareError(f"{origin}: cvind values {np.unique(folds)[:10].tolist()}; expected folds 1-{NUM_FOLDS}")
    return folds.astype(int)


def patient_group(patient_id: str) -> str:
    """Grouping key for leakage-free splits: ``MR024780B`` -> ``MR024780`` (same stem, same patient)."""
    match = MR_WITH_LETTER.fullmatch(patient_id)
    return match.group(1) if match else patient_id
