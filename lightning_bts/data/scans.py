"""Which inputs are 3-D scans, and reading one whatever its format (NIfTI file, DICOM file or series folder)."""

from __future__ import annotations

from pathlib import Path

from lightning_bts.data.dicom import dicom_files, is_dicom, read_dicom
from lightning_bts.data.nifti import is_nifti, read_nifti
from lightning_bts.data.volume import Volume, VolumeError

SCAN_KINDS = "NIfTI (.nii, .nii.gz), a DICOM file, or a folder holding one DICOM series"


def is_scan(path: str | Path) -> bool:
    """A NIfTI file, a DICOM file, or a folder holding DICOM files (checked by content, not by name)."""
    path = Path(path)
    if path.is_dir():
        return bool(dicom_files(path))
    return path.is_file() and (is_nifti(path) or is_dicom(path))


def read_scan(path: str | Path) -> Volume:
    """The :class:`Volume` of ``path``; its header is checked now, its voxels decoded by ``load()``.

    Raises:
        VolumeError: not one of :data:`SCAN_KINDS`, or a scan that cannot be segmented (see
            :func:`~lightning_bts.data.nifti.read_nifti`, :func:`~lightning_bts.data.dicom.read_dicom`).
    """
    path = Path(path)
    if path.is_file() and is_nifti(path):
        return read_nifti(path)
    if path.is_dir() or is_dicom(path):
        return read_dicom(path)
    raise VolumeError(f"{path}: not a scan; expected {SCAN_KINDS}")
