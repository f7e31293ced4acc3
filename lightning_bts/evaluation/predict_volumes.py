"""Prediction on 3-D scans (NIfTI volumes, DICOM series): slice by slice, one NIfTI mask per scan.

A scan is cut into 2-D slices along a plane (:class:`~lightning_bts.data.volume.Volume`: the acquisition plane
by default, each slice in display orientation), each slice is made 8-bit with the intensity mapping the
checkpoint's training data used (:mod:`lightning_bts.data.intensity`), and predicted by the same
:class:`~lightning_bts.evaluation.predictor.Predictor` as image files (skull stripping, resizing to the model's
grid and back, ensemble, TTA, post-processing). The slices' masks are put back in the scan's voxel order and
written as ``masks/<name>.nii.gz`` with the scan's affine (and header, for a NIfTI input), so a viewer lays the
mask over the scan. ``predictions.csv`` has one row per slice (area in mm²), ``volumes.csv`` one per scan
(tumour volume in ml). Every scan's header is read and checked before anything is predicted or written, and
every file goes through a temporary name and a rename.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lightning_bts.data.intensity import to_uint8
from lightning_bts.data.nifti import is_nifti, mask_nifti, nifti_stem
from lightning_bts.data.scans import SCAN_KINDS, is_scan, read_scan
from lightning_bts.data.volume import Volume, VolumeError
from lightning_bts.evaluation.predict_files import (
    PredictionSummary,
    check_output_dir,
    find_images,
    unique_output_names,
    write_atomically,
)
from lightning_bts.evaluation.predictor import InferenceError, Predictor, prepare_scan, to_original_size

SLICE_COLUMNS = ("image", "slice", "mask", "height", "width", "tumour_pixels", "tumour_fraction", "max_probability",
                 "tumour_area_mm2")
VOLUME_COLUMNS = ("image", "mask", "plane", "slices", "height", "width", "spacing_mm", "tumour_voxels",
                  "tumour_volume_ml")


def find_inputs(specs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(image files, scans) named by ``specs``.

    A spec is a scan (a NIfTI file, a DICOM file, a folder holding DICOM files), a folder whose NIfTI files
    are scans, a glob pattern whose NIfTI matches are scans, or else image files as
    :func:`~lightning_bts.evaluation.predict_files.find_images` finds them.

    Raises:
        InferenceError: a spec matches neither images nor scans.
    """
    images: list[Path] = []
    scans: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if is_scan(path):
            scans.append(path)
            continue
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
        else:
            found = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if is_nifti(p) and Path(p).is_file())
        scans.extend(found)
        try:
            images.extend(find_images([spec]))
        except InferenceError:
            if not found:
                raise InferenceError(f"no images or scans found for input {str(spec)!r} (image files, {SCAN_KINDS}, "
                                     "a folder of them, or a glob pattern)") from None
    return list(dict.fromkeys(images)), list(dict.fromkeys(scans))


def scan_names(scans: Sequence[Path]) -> list[Path]:
    """``<name>.nii.gz`` per scan: its path below the scans' common folder (a DICOM folder: the folder's path).

    Raises:
        InferenceError: two scans would get the same name.
    """
    def name_of(scan: Path, relative: Path) -> Path:
        stem = nifti_stem(relative) if is_nifti(relative) else relative.name if scan.is_dir() else relative.stem
        return relative.parent / f"{stem}.nii.gz"

    return unique_output_names(scans, name_of, "scans")


def scan_probabilities(predictor: Predictor, volume: Volume, data: np.ndarray, plane: str = "acquisition",
                       batch_size: int = 8) -> np.ndarray:
    """float32 ``(N, rows, columns)`` tumour probabilities of ``volume``'s slices along ``plane`` (display
    orientation, see :meth:`Volume.to_slices`), each slice mapped to 8 bits as the checkpoint's data were (and, for
    a model trained on neighbouring slices, given the slices beside it along ``plane``)."""
    slices = volume.to_slices(data, plane)
    mapping = predictor.preprocessing.intensity
    inputs = prepare_scan([to_uint8(image, mapping) for image in slices], predictor.preprocessing)
    probabilities = np.empty(slices.shape, np.float32)
    for start in range(0, len(slices), batch_size):
        for offset, probability in enumerate(predictor.probabilities(inputs[start:start + batch_size])):
            probabilities[start + offset] = to_original_size(probability, slices.shape[1:])
    return probabilities


def predict_volumes(
    predictor: Predictor,
    scans: Sequence[Path],
    output_dir: str | Path,
    plane: str = "acquisition",
    batch_size: int = 8,
    progress: bool = True,
) -> PredictionSummary:
    """Predicts ``scans`` and writes their NIfTI masks, ``predictions.csv`` and ``volumes.csv`` under ``output_dir``.

    Raises:
        VolumeError: a scan that cannot be segmented (before anything is written).
        InferenceError: bad arguments, an output folder holding inputs, two scans with the same output name.
    """
    if batch_size < 1:
        raise InferenceError(f"batch_size must be at least 1, got {batch_size}")
    output_dir = Path(output_dir)
    scans = [Path(scan) for scan in scans]
    volumes = [read_scan(scan) for scan in scans]  # every header checked before any output
    planes = [volume.plane(plane) for volume in volumes]
    names = scan_names(scans)
    inputs = _input_files(scans)
    check_output_dir(sorted(inputs), output_dir)
    slice_rows, volume_rows = [], []
    for volume, name, chosen in tqdm(list(zip(volumes, names, planes)), unit="scan", file=sys.stderr,
                                     disable=not progress or len(volumes) < 2):
        probabilities = scan_probabilities(predictor, volume, volume.load(), chosen, batch_size)
        masks = np.stack(predictor.masks(probabilities))
        mask_path = output_dir / "masks" / name
        write_atomically(mask_path, mask_nifti(volume, volume.from_slices(masks, chosen)), inputs)
        slice_rows.extend(_slice_rows(volume, chosen, mask_path, masks, probabilities))
        volume_rows.append(_volume_row(volume, chosen, mask_path, masks))
    table = pd.DataFrame(slice_rows, columns=list(SLICE_COLUMNS))
    csv_path = output_dir / "predictions.csv"
    write_atomically(csv_path, table.to_csv(index=False).encode(), inputs)
    volume_table = pd.DataFrame(volume_rows, columns=list(VOLUME_COLUMNS))
    write_atomically(output_dir / "volumes.csv", volume_table.to_csv(index=False).encode(), inputs)
    return PredictionSummary(table, [], csv_path)


def _input_files(scans: Sequence[Path]) -> set[Path]:
    files = set()
    for scan in scans:
        files.add(scan.resolve())
        if scan.is_dir():
            files.update(p.resolve() for p in scan.iterdir() if p.is_file())
    return files


def _slice_rows(volume: Volume, plane: str, mask_path: Path, masks: np.ndarray,
                probabilities: np.ndarray) -> list[dict[str, object]]:
    _, row_mm, column_mm = volume.slice_spacing(plane)
    rows = []
    for index, (mask, probability) in enumerate(zip(masks, probabilities)):
        pixels = int(mask.sum())
        rows.append({"image": str(volume.source), "slice": index, "mask": str(mask_path), "height": mask.shape[0],
                     "width": mask.shape[1], "tumour_pixels": pixels, "tumour_fraction": pixels / mask.size,
                     "max_probability": float(probability.max()), "tumour_area_mm2": pixels * row_mm * column_mm})
    return rows


def _volume_row(volume: Volume, plane: str, mask_path: Path, masks: np.ndarray) -> dict[str, object]:
    spacing = volume.slice_spacing(plane)
    voxels = int(masks.sum())
    return {"image": str(volume.source), "mask": str(mask_path), "plane": plane, "slices": masks.shape[0],
            "height": masks.shape[1], "width": masks.shape[2], "spacing_mm": "x".join(f"{v:.4g}" for v in spacing),
            "tumour_voxels": voxels, "tumour_volume_ml": voxels * float(np.prod(spacing)) / 1000.0}


__all__ = ["VolumeError", "find_inputs", "predict_volumes", "scan_names", "scan_probabilities"]
