"""A DICOM series (a folder of single-frame image files, or one file) as a :class:`~lightning_bts.data.volume.Volume`.

Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected on the cross
product of the ``ImageOrientationPatient`` cosines), never by file name: exporters number files in any order.
The affine follows from the geometry (DICOM's LPS millimetres turned into NIfTI's RAS+), so a mask written
with it overlays the series in any viewer. Voxel ``(i, j, k)`` is column ``i``, row ``j`` of the ``k``-th
slice, as dcm2niix lays them out. Headers are read and checked first (``stop_before_pixels``); pixels are
decoded by ``Volume.load()``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from lightning_bts.data.volume import Volume, VolumeError, check_geometry, require

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING_TOLERANCE = 0.01  # relative: gaps between slices may differ by rounding, not by a missing slice
GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` is a file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder`` (any name; hidden files and ``DICOMDIR`` left out)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR" and is_dicom(p))


def read_dicom(path: str | Path) -> Volume:
    """The series in the folder ``path`` (exactly one), or the single slice of the file ``path``.

    Raises:
        VolumeError: no DICOM files, several series, a file without image pixels (a structured report, a
            presentation state), multi-frame or colour images, slices of different sizes or orientations, two
            slices at one position, uneven slice gaps, or missing geometry (position, orientation, spacing).
    """
    pydicom = require("pydicom")
    path = Path(path)
    files = dicom_files(path) if path.is_dir() else [path]
    if not files:
        raise VolumeError(f"{path}: no DICOM files (none starts with the DICM preamble); expected a folder holding "
                          "one DICOM series")
    headers = []
    for file in files:
        try:
            headers.append(pydicom.dcmread(file, stop_before_pixels=True))
        except (pydicom.errors.InvalidDicomError, OSError, ValueError) as error:
            raise VolumeError(f"{file}: cannot be read as DICOM ({error}); expected a DICOM image") from None
    for file, header in zip(files, headers):
        _check_image(file, header)
    series = Counter(str(header.get("SeriesInstanceUID", "?")) for header in headers)
    if len(series) > 1:
        listing = "; ".join(f"{uid} ({count} files)" for uid, count in series.most_common())
        raise VolumeError(f"{path}: {len(series)} DICOM series ({listing}); expected one series per folder: move "
                          "each series into a folder of its own")
    return _volume(path, files, headers)


def _check_image(file: Path, header) -> None:
    if "Rows" not in header or "Columns" not in header:
        kind = f"modality {header.get('Modality', '?')}, SOP class {header.get('SOPClassUID', '?')}"
        raise VolumeError(f"{file}: a DICOM without image pixels ({kind}); expected an MR image (a structured "
                          "report or presentation state cannot be segmented; leave it out of the folder)")
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        raise VolumeError(f"{file}: a multi-frame DICOM ({header.NumberOfFrames} frames); expected single-frame "
                          "images, one per slice (convert it to NIfTI, e.g. with dcm2niix)")
    if int(header.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"{file}: {header.SamplesPerPixel} samples per pixel; expected a grayscale MR image")
    absent = [tag for tag in GEOMETRY_TAGS if tag not in header]
    if absent:
        raise VolumeError(f"{file}: no {', '.join(absent)}; expected the image geometry (position, orientation, "
                          "pixel spacing in mm) that the mask's affine and the tumour volume need")


def _volume(path: Path, files: list[Path], headers: list) -> Volume:
    first = headers[0]
    size = (int(first.Rows), int(first.Columns))
    orientation = np.asarray(first.ImageOrientationPatient, float)
    for file, header in zip(files, headers):
        if (int(header.Rows), int(header.Columns)) != size:
            raise VolumeError(f"{file}: {header.Rows}x{header.Columns} pixels but {files[0]} has {size[0]}x{size[1]};"
                              " expected slices of one size")
        if not np.allclose(np.asarray(header.ImageOrientationPatient, float), orientation, atol=1e-4):
            raise VolumeError(f"{file}: another ImageOrientationPatient than {files[0]}; expected parallel slices")
    row_cosine, column_cosine = orientation[:3], orientation[3:]  # directions of increasing column / row index
    normal = np.cross(row_cosine, column_cosine)
    positions = np.asarray([np.asarray(h.ImagePositionPatient, float) for h in headers])
    order = np.argsort(positions @ normal, kind="stable")
    files, headers, positions = [files[i] for i in order], [headers[i] for i in order], positions[order]
    step = _slice_step(files, headers, positions, normal)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row_cosine * column_spacing
    lps[:3, 1] = column_cosine * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = LPS_TO_RAS @ lps
    shape = (size[1], size[0], len(files))
    check_geometry(path, shape, affine)
    return Volume(source=path, shape=shape, affine=affine, acquisition_axis=2, loader=lambda: _pixels(files, size))


def _slice_step(files: list[Path], headers: list, positions: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """The vector from one slice's position to the next; one slice: its thickness along the normal."""
    if len(files) == 1:
        thickness = headers[0].get("SpacingBetweenSlices") or headers[0].get("SliceThickness")
        if not thickness or float(thickness) <= 0:
            raise VolumeError(f"{files[0]}: a single slice without SliceThickness or SpacingBetweenSlices; expected "
                              "the slice thickness, which the tumour volume needs")
        return normal * float(thickness)
    gaps = np.diff(positions, axis=0)
    lengths = np.linalg.norm(gaps, axis=1)
    if np.any(lengths < 1e-4):
        duplicate = int(np.argmin(lengths))
        raise VolumeError(f"{files[duplicate]} and {files[duplicate + 1]} lie at the same ImagePositionPatient; "
                          "expected one series with one slice per position")
    step = (positions[-1] - positions[0]) / (len(files) - 1)
    uneven = np.linalg.norm(gaps - step, axis=1) > SPACING_TOLERANCE * np.linalg.norm(step)
    if np.any(uneven):
        where = int(np.argmax(uneven))
        raise VolumeError(f"{files[where + 1]}: {lengths[where]:.3f} mm from the previous slice but the series "
                          f"averages {np.linalg.norm(step):.3f} mm; expected evenly spaced slices (a slice missing?)")
    return step


def _pixels(files: list[Path], size: tuple[int, int]) -> np.ndarray:
    """float32 ``(columns, rows, slices)``, rescaled by each file's RescaleSlope/Intercept."""
    pydicom = require("pydicom")
    volume = np.empty((size[1], size[0], len(files)), np.float32)
    for index, file in enumerate(files):
        try:
            dataset = pydicom.dcmread(file)
            pixels = np.asarray(dataset.pixel_array, np.float32)
        except Exception as error:  # decoders fail in many ways (missing plugin, truncated data, ...)
            raise VolumeError(f"{file}: its pixels cannot be decoded ({type(error).__name__}: {error}); expected "
                              "an uncompressed or decodable DICOM image") from None
        if pixels.shape != size:
            raise VolumeError(f"{file}: pixel data of shape {pixels.shape}, expected {size}")
        slope, intercept = float(dataset.get("RescaleSlope", 1) or 1), float(dataset.get("RescaleIntercept", 0) or 0)
        volume[:, :, index] = (pixels * slope + intercept).T
    return volume
