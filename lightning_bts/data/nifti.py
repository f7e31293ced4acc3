"""NIfTI volumes in (``.nii``, ``.nii.gz``, with nibabel), and masks out that any viewer lays over the scan.

A mask of a NIfTI scan keeps the scan's affine and header (orientation, qform/sform, voxel sizes), with the
data type set to uint8 and the intensity scaling cleared, so it overlays voxel for voxel; a mask of a DICOM
series gets the affine computed from the series geometry (:mod:`lightning_bts.data.dicom`).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from lightning_bts.data.volume import Volume, VolumeError, check_geometry, require

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """``scan`` for ``scan.nii`` and ``scan.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def read_nifti(path: str | Path) -> Volume:
    """The volume of a NIfTI-1/2 file: header and geometry are checked now, voxels decoded by ``load()``.

    A 2-D image is one slice; a 4-D image with one time point is 3-D.

    Raises:
        VolumeError: not a NIfTI file, 4-D (several volumes), or no usable voxel spacing.
    """
    nibabel = require("nibabel")
    path = Path(path)
    try:
        image = nibabel.load(path)
    except (require("nibabel.filebasedimages").ImageFileError, OSError, EOFError, ValueError) as error:
        raise VolumeError(f"{path}: cannot be read as NIfTI ({error}); expected a .nii or .nii.gz volume") from None
    if not isinstance(image, nibabel.Nifti1Image | nibabel.Nifti2Image):
        raise VolumeError(f"{path}: a {type(image).__name__}, expected a NIfTI-1 or NIfTI-2 volume")
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise VolumeError(f"{path}: {len(image.shape)}-D data of shape {tuple(image.shape)}; expected one 3-D "
                          "volume (split a 4-D series into its volumes first, e.g. with fslsplit)")
    check_geometry(path, shape, image.affine)
    slice_dim = image.header.get_dim_info()[2]
    return Volume(source=path, shape=shape, affine=np.asarray(image.affine, float),
                  acquisition_axis=2 if slice_dim is None else int(slice_dim),
                  loader=lambda: np.asanyarray(image.dataobj).reshape(shape), header=image.header)


def mask_nifti(volume: Volume, mask: np.ndarray) -> bytes:
    """A gzipped NIfTI file (``.nii.gz`` bytes) of the bool ``mask`` in ``volume``'s voxel order, 1 = tumour.

    With the scan's header when it has one (a NIfTI input), else a NIfTI-1 header with the affine as both
    qform and sform (scanner coordinates).
    """
    nibabel = require("nibabel")
    if mask.shape != volume.shape:
        raise VolumeError(f"{volume.source}: mask of shape {mask.shape} for a volume of shape {volume.shape}")
    data = mask.astype(np.uint8)
    if volume.header is not None and tuple(volume.header.get_data_shape()) == volume.shape:
        kind = nibabel.Nifti2Image if isinstance(volume.header, nibabel.Nifti2Header) else nibabel.Nifti1Image
        image = kind(data, volume.affine, volume.header.copy())
    else:  # a DICOM series, or a 2-D / one-time-point 4-D NIfTI whose header has another shape
        image = nibabel.Nifti1Image(data, volume.affine)
        image.set_qform(volume.affine, code=1)  # 1: scanner coordinates
        image.set_sform(volume.affine, code=1)
    header = image.header
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    header["cal_min"], header["cal_max"] = 0, 1
    header["descrip"] = b"lightning_bts tumour mask (1 = tumour)"
    header["intent_code"] = 0
    return gzip.compress(image.to_bytes(), compresslevel=6)


def open_mask(path: str | Path, volume: Volume) -> Volume:
    """A NIfTI mask of ``volume`` (0 = background; voxels by ``load()``), checked to lie on the scan's grid.

    Raises:
        VolumeError: unreadable, another shape, or another affine than the scan.
    """
    mask = read_nifti(path)
    if mask.shape != volume.shape or not np.allclose(mask.affine, volume.affine, atol=1e-3):
        why = f"shape {mask.shape}, scan {volume.shape}" if mask.shape != volume.shape else "another affine"
        raise VolumeError(f"{path}: the mask does not lie on the grid of its scan {volume.source} ({why}); expected "
                          "a mask voxel for voxel over the scan")
    return mask
