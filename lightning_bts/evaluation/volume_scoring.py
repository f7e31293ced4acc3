"""Scores on a folder of NIfTI volumes: ``images/<case>.nii.gz`` with ``masks/<case>.nii.gz``, one case per patient.

Each scan is segmented slice by slice exactly as ``predict.py`` segments it
(:func:`~lightning_bts.evaluation.predict_volumes.scan_probabilities`: the checkpoint's intensity mapping and
preprocessing, masks at the scan's size) and scored twice, in millimetres from the scan's voxel spacing:

- **per slice** (``per_image.csv``, the top-level keys of ``metrics.json``, as for slice datasets): Dice and the
  other ratios pooled and per slice, HD and HD95 of each slice in mm;
- **per volume** (``per_volume.csv``, ``metrics["per_volume"]``): the same on the whole 3-D mask, HD95 over the
  3-D surfaces.

A case is a patient: its slices share ``patient_group``, so the bootstrap intervals resample patients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lightning_bts.data import DatasetError
from lightning_bts.data.nifti import is_nifti, nifti_stem, open_mask, read_nifti
from lightning_bts.evaluation.bootstrap import DEFAULT_RESAMPLES, confidence_intervals
from lightning_bts.evaluation.predict_volumes import scan_probabilities
from lightning_bts.evaluation.predictor import Predictor
from lightning_bts.evaluation.scoring import Evaluation, SliceScores, settings_entries


def is_volume_dataset(root: str | Path) -> bool:
    """Whether ``root/images`` holds NIfTI files (a volume dataset) rather than slice images."""
    images = Path(root) / "images"
    return images.is_dir() and any(is_nifti(p) for p in images.iterdir() if p.is_file())


def volume_cases(root: str | Path) -> list[tuple[str, Path, Path]]:
    """``(case, image, mask)`` of every ``images/<case>.nii[.gz]``, sorted by case.

    Raises:
        DatasetError: a scan without its mask, or a mask without its scan.
    """
    root = Path(root)
    images = {nifti_stem(p): p for p in sorted((root / "images").iterdir()) if p.is_file() and is_nifti(p)}
    masks_dir = root / "masks"
    masks = {nifti_stem(p): p for p in sorted(masks_dir.iterdir()) if is_nifti(p)} if masks_dir.is_dir() else {}
    if not images:
        raise DatasetError(f"{root}/images holds no NIfTI files; expected images/<case>.nii.gz with "
                           "masks/<case>.nii.gz")
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        case = unmatched[0]
        where = f"{images[case]} has no masks/{case}.nii.gz" if case in images else f"{masks[case]} has no scan"
        raise DatasetError(f"{root}: {where} ({len(unmatched)} unpaired case(s)); expected images/<case>.nii.gz and "
                           "masks/<case>.nii.gz in pairs")
    return [(case, images[case], masks[case]) for case in sorted(images)]


def evaluate_volumes(
    predictor: Predictor,
    root: str | Path,
    plane: str = "acquisition",
    batch_size: int = 8,
    bootstrap: int = DEFAULT_RESAMPLES,
) -> Evaluation:
    """Per-slice and per-volume scores of ``predictor`` on the volume dataset ``root`` (see the module doc).

    Every pair is read and checked (grids, geometry) before anything is predicted.

    Raises:
        DatasetError: unpaired files. VolumeError: an unusable scan, or a mask not on its scan's grid.
    """
    cases = []
    for case, image, mask in volume_cases(root):  # bad headers or grids fail now, not after hours of prediction
        volume = read_nifti(image)
        cases.append((case, volume, open_mask(mask, volume)))
    slices, volumes = SliceScores(), SliceScores()
    keys, groups, shapes, volume_rows = [], [], [], []
    for case, volume, mask in cases:
        chosen = volume.plane(plane)
        truth = volume.to_slices(mask.load() != 0, chosen)
        probabilities = scan_probabilities(predictor, volume, volume.load(), chosen, batch_size)
        predicted = predictor.masks(probabilities)
        spacing = volume.slice_spacing(chosen)
        for index, (predicted_slice, true_slice) in enumerate(zip(predicted, truth)):
            slices.add(predicted_slice, true_slice, spacing[1:])  # (row, column) mm
            keys.append(f"{case}/{index:03d}")
            shapes.append(true_slice.shape)
        groups.extend([case] * len(truth))
        volumes.add(np.stack(predicted), truth, spacing)
        volume_rows.append({"case": case, "plane": chosen, "slices": len(truth),
                            "spacing_mm": "x".join(f"{v:.4g}" for v in spacing)})
    per_image = pd.concat([
        pd.DataFrame({"key": keys, "patient_group": groups, "tumor_type": "unknown"}),
        slices.table(),
        pd.DataFrame(shapes, columns=["height", "width"]),
    ], axis=1)
    per_volume = pd.concat([pd.DataFrame(volume_rows), volumes.table()], axis=1)
    size = predictor.preprocessing.image_size
    metrics: dict[str, Any] = {
        "resolution": "native",
        **slices.summary(),
        "hd_units": "mm",
        **confidence_intervals(per_image, bootstrap),
        "per_volume": {**_volume_summary(volumes), "n_volumes": len(per_volume), "hd_units": "mm"},
        "n_images": len(per_image), "part": "all", "data_root": str(root), "plane": plane,
        "intensity": predictor.preprocessing.intensity, "image_size": size,
        **settings_entries(predictor),
    }
    return Evaluation(metrics, per_image, per_volume=per_volume)


def _volume_summary(scores: SliceScores) -> dict[str, Any]:
    """Pooled ratios over all voxels, the mean Dice (and others) per volume, mean HD and HD95 per volume."""
    summary = scores.summary()
    per_volume = summary.pop("per_image")
    return {**summary, "per_volume": per_volume}
