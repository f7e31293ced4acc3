"""A 3-D scan (NIfTI or DICOM series) as the 2-D slices a model segments, and the slices' masks put back.

Every reader (:mod:`lightning_bts.data.nifti`, :mod:`lightning_bts.data.dicom`) returns a :class:`Volume`: raw
values indexed by voxel ``(i, j, k)`` and the NIfTI affine from voxel indices to scanner RAS+ millimetres. A
volume is cut into slices along an anatomical plane, each shown as a radiologist sees it (axial: anterior at
the top, the patient's right on the left; coronal and sagittal: superior at the top), because the 2-D models
were trained on slices displayed that way. Cutting only permutes and mirrors voxel axes
(``nibabel.orientations``), so :meth:`Volume.from_slices` puts a mask of those slices back voxel for voxel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_bts.errors import UserError

PLANES = ("acquisition", "axial", "coronal", "sagittal")
"""``acquisition``: the plane the scan was acquired in (a DICOM series' image plane; a NIfTI file's slice
dimension, else its third voxel axis, as dcm2niix writes)."""
DISPLAY_CODES = {"axial": ("S", "P", "L"), "coronal": ("A", "I", "L"), "sagittal": ("L", "I", "P")}
"""Per plane, the orientation codes of (slice index, image rows, image columns): rows run towards the second
letter, columns towards the third (radiological convention)."""
WORLD_AXIS_PLANE = ("sagittal", "coronal", "axial")  # the plane normal to world axis x (R-L), y (A-P), z (S-I)


class VolumeError(UserError):
    """A scan that cannot be segmented (4-D, several series, mixed slice sizes, no pixels, no spacing, ...)."""


def require(module: str) -> Any:
    """``import module`` with a clear message when the ``io`` extra is not installed."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise VolumeError(f"reading NIfTI/DICOM scans needs {module.split('.')[0]}: pip install "
                          "'lightning_bts[io]' (nibabel, pydicom)") from error


@dataclass
class Volume:
    """A 3-D scan: ``load()`` gives its raw values ``(I, J, K)`` (read on demand, so that many scans can be
    checked before any is decoded), ``affine`` maps voxel indices to RAS+ mm.

    ``header`` is the NIfTI header of a NIfTI input (copied into its mask); ``acquisition_axis`` the voxel axis
    along which the scan was acquired slice by slice.
    """

    source: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    acquisition_axis: int
    loader: Callable[[], np.ndarray] = field(repr=False)
    header: Any = field(default=None, repr=False)

    def load(self) -> np.ndarray:
        data = np.asarray(self.loader())
        if data.shape != self.shape:
            raise VolumeError(f"{self.source}: decoded {data.shape} voxels, expected {self.shape}")
        return data

    @property
    def spacing(self) -> tuple[float, float, float]:
        """mm between voxel centres along ``i``, ``j``, ``k``."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def plane(self, plane: str = "acquisition") -> str:
        """``plane`` resolved to ``axial``, ``coronal`` or ``sagittal`` (``acquisition``: the scan's own)."""
        if plane not in PLANES:
            raise VolumeError(f"unknown plane {plane!r}; choose one of {', '.join(PLANES)}")
        if plane != "acquisition":
            return plane
        orientations = require("nibabel.orientations")
        world_axis = int(orientations.io_orientation(self.affine)[self.acquisition_axis, 0])
        return WORLD_AXIS_PLANE[world_axis]

    def _transform(self, plane: str) -> tuple[np.ndarray, np.ndarray]:
        orientations = require("nibabel.orientations")
        start = orientations.io_orientation(self.affine)
        end = orientations.axcodes2ornt(DISPLAY_CODES[self.plane(plane)])
        return orientations.ornt_transform(start, end), orientations.ornt_transform(end, start)

    def to_slices(self, data: np.ndarray, plane: str = "acquisition") -> np.ndarray:
        """``(N, rows, columns)``: ``data`` (this volume's voxels) cut along ``plane``, each slice in display
        orientation."""
        forward, _ = self._transform(plane)
        return require("nibabel.orientations").apply_orientation(data, forward)

    def from_slices(self, slices: np.ndarray, plane: str = "acquisition") -> np.ndarray:
        """The inverse of :meth:`to_slices`: ``(N, rows, columns)`` back to this volume's voxel order."""
        _, backward = self._transform(plane)
        return np.ascontiguousarray(require("nibabel.orientations").apply_orientation(slices, backward))

    def slice_spacing(self, plane: str = "acquisition") -> tuple[float, float, float]:
        """mm between (slices, rows, columns) of :meth:`to_slices`."""
        orientations = require("nibabel.orientations")
        forward, _ = self._transform(plane)
        affine = self.affine @ orientations.inv_ornt_aff(forward, self.shape)
        return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def check_geometry(source: Path, shape: tuple[int, ...], affine: np.ndarray) -> None:
    """A 3-D shape with at least one voxel and an affine with a positive spacing on every axis.

    Raises:
        VolumeError: naming ``source``, otherwise.
    """
    if len(shape) != 3 or min(shape) < 1:
        raise VolumeError(f"{source}: {len(shape)}-D data of shape {tuple(shape)}; expected a 3-D volume")
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or not np.all(spacing > 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(f"{source}: no usable voxel spacing (spacing {spacing.round(4).tolist()} mm); expected "
                          "positive voxel sizes in the header, which the tumour areas and volumes need")
