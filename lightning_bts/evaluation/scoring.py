"""Scores of checkpoints on a dataset: every metric at the scan's own resolution and at the model's grid.

One checkpoint, or several (e.g. the five fold models) as an ensemble, through the one
:class:`~lightning_bts.evaluation.predictor.Predictor`: the checkpoint's preprocessing, TTA and the
post-processing stored with it. Each slice is scored twice:

- **native** (the top-level keys of ``metrics.json``): the probability map resized back to the slice's
  original size (as ``predict.py`` writes masks), post-processed there and compared with the original mask
  file. Models trained at 128 and at 256 are then compared on the same pixels;
- **model grid** (``metrics["model_grid"]``): post-processed at the model's ``S x S`` grid and compared with
  the mask as training saw it (nearest-resized). With the default post-processing these are the numbers
  training logged as ``val/*`` for the same checkpoint and fold (at the same precision).

The ratios follow :mod:`lightning_bts.metrics` (pooled over all pixels of the part, and the mean per slice;
a ratio with a zero denominator is 1 for a perfect prediction, else 0). Hausdorff distances are in mm when a
spacing is known (``pixel_spacing`` of the original slices, or the model's ``pixel_spacing_mm`` of its grid,
converted per slice), else in pixels of each grid. The native pooled Dice, precision and recall, the mean
Dice per slice and the mean HD95 carry 95 % intervals from a bootstrap over patients (``ci95``, from the
per-slice TP/FP/FN counts, see :mod:`lightning_bts.evaluation.bootstrap`). ``by_patient``, ``by_tumor_type``
and ``not_found`` say who the pooled score is made of (:mod:`lightning_bts.evaluation.breakdown`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lightning_bts.data import BrainTumorDataModule
from lightning_bts.errors import ConfigError
from lightning_bts.evaluation.bootstrap import DEFAULT_RESAMPLES, confidence_intervals
from lightning_bts.evaluation.breakdown import subgroup_scores
from lightning_bts.evaluation.data import evaluation_data, iterate_slices
from lightning_bts.evaluation.postprocess import PostProcessing
from lightning_bts.evaluation.predictor import Predictor, to_original_size
from lightning_bts.evaluation.settings import selection_record
from lightning_bts.metrics import RATIO_NAMES, hausdorff_distances, ratios_from_stats

SLICE_COLUMNS = (*RATIO_NAMES, "hd", "hd95", "tumor_pixels", "predicted_pixels", "tp", "fp", "fn")
PER_IMAGE_COLUMNS = ("key", "patient_group", "tumor_type", *SLICE_COLUMNS, "height", "width")
GRID_PREFIX = "model_grid_"


@dataclass
class Evaluation:
    """Metrics of one evaluation: ``metrics`` as written to metrics.json, ``per_image`` one row per slice.

    ``predictions`` (bool ``(N, S, S)`` at the model's grid, rows as ``per_image``) is kept only when asked for;
    ``per_volume`` (one row per scan) only for a dataset of volumes
    (:mod:`lightning_bts.evaluation.volume_scoring`).
    """

    metrics: dict[str, Any]
    per_image: pd.DataFrame
    predictions: np.ndarray | None = field(default=None, repr=False)
    per_volume: pd.DataFrame | None = None


class SliceScores:
    """Confusion counts and Hausdorff distances of binary masks, slice by slice, summarised as metrics.py does."""

    def __init__(self) -> None:
        self._rows: list[tuple[int, int, int, int, float, float, bool]] = []

    def add(self, predicted: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> None:
        """One slice: bool masks of the same shape; ``spacing`` (row, column) in mm, or ``None`` for pixels."""
        tp = int(np.count_nonzero(predicted & truth))
        fp = int(np.count_nonzero(predicted)) - tp
        fn = int(np.count_nonzero(truth)) - tp
        hd, hd95, empty = hausdorff_distances(predicted, truth, spacing)
        self._rows.append((tp, fp, predicted.size - tp - fp - fn, fn, hd, hd95, empty))

    def table(self) -> pd.DataFrame:
        """One row per slice: :data:`SLICE_COLUMNS`."""
        tp, fp, tn, fn, hd, hd95, _ = (np.asarray(column) for column in zip(*self._rows))
        ratios = ratios_from_stats(*(torch.from_numpy(x) for x in (tp, fp, tn, fn)))
        return pd.DataFrame({**{name: ratios[name].numpy() for name in RATIO_NAMES}, "hd": hd, "hd95": hd95,
                             "tumor_pixels": tp + fn, "predicted_pixels": tp + fp, "tp": tp, "fp": fp, "fn": fn})

    def summary(self) -> dict[str, Any]:
        """Pooled ratios, their per-slice means under ``per_image``, Hausdorff means and ``hd_empty``."""
        counts = torch.tensor([row[:4] for row in self._rows], dtype=torch.float64).sum(0)
        pooled = ratios_from_stats(*counts)
        table = self.table()
        return {
            **{name: float(pooled[name]) for name in RATIO_NAMES},
            "hd": float(table["hd"].mean()), "hd95": float(table["hd95"].mean()),
            "hd_empty": int(sum(row[6] for row in self._rows)),
            "per_image": {name: float(table[name].mean()) for name in RATIO_NAMES},
        }


def slice_spacings(
    pixel_spacing: Sequence[float] | None, grid_spacing: Sequence[float] | None, shape: tuple[int, int], size: int
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """mm per pixel (row, column) of a slice of ``shape`` at its own size and at the ``size x size`` grid.

    ``pixel_spacing`` is of the original slices; else ``grid_spacing`` (the model's ``pixel_spacing_mm``, of the
    grid it was trained on) is converted; neither: ``(None, None)``, distances in pixels.
    """
    height, width = shape
    if pixel_spacing is not None:
        row, column = _pair(pixel_spacing)
        return (row, column), (row * height / size, column * width / size)
    if grid_spacing is not None:
        row, column = _pair(grid_spacing)
        return (row * size / height, column * size / width), (row, column)
    return None, None


def evaluate(
    predictor: Predictor,
    datamodule: BrainTumorDataModule,
    part: str = "val",
    pixel_spacing: Sequence[float] | None = None,
    keep_predictions: bool = False,
    bootstrap: int = DEFAULT_RESAMPLES,
) -> Evaluation:
    """Native and model-grid metrics of ``predictor`` on ``datamodule``'s ``part``.

    ``part`` is ``"val"``, ``"train"``, ``"test"`` or ``"all"`` (see :meth:`BrainTumorDataModule.indices`);
    ``pixel_spacing`` is mm per pixel of the original slices (one value or row, column); ``bootstrap``
    resamples of the patients give the native scores' 95 % intervals (``ci95``, ``ci_method``; 0: none, see
    :mod:`lightning_bts.evaluation.bootstrap`).
    """
    if bootstrap < 0:
        raise ConfigError(f"bootstrap must be 0 (no intervals) or a number of resamples, got {bootstrap}")
    datamodule.load()
    size = predictor.preprocessing.image_size
    model = predictor.models[0]
    grid_spacing = model.hparams.get("pixel_spacing_mm") if hasattr(model, "hparams") else None
    rule = predictor.postprocessing
    native, grid, indices, shapes, kept = SliceScores(), SliceScores(), [], [], []
    for item in iterate_slices(predictor, datamodule, part):
        probability = item.probabilities[0]
        native_spacing, grid_spacing_here = slice_spacings(pixel_spacing, grid_spacing, item.mask.shape, size)
        grid_mask = rule.apply(probability)
        grid.add(grid_mask, item.grid_mask, grid_spacing_here)
        native.add(rule.apply(to_original_size(probability, item.mask.shape)), item.mask, native_spacing)
        indices.append(item.index)
        shapes.append(item.mask.shape)
        if keep_predictions:
            kept.append(grid_mask)

    records = datamodule.records.iloc[indices]
    per_image = pd.concat([
        pd.DataFrame({"key": records["key"].to_numpy(), "patient_group": records["patient_group"].to_numpy(),
                      "tumor_type": records["tumor_type"].to_numpy()}),
        native.table(),
        pd.DataFrame(shapes, columns=["height", "width"]),
        grid.table().add_prefix(GRID_PREFIX),
    ], axis=1)
    millimetres = pixel_spacing is not None or grid_spacing is not None
    metrics: dict[str, Any] = {
        "resolution": "native",
        **native.summary(),
        "hd_units": "mm" if millimetres else "pixels of the original slices",
        **confidence_intervals(per_image, bootstrap),
        **subgroup_scores(per_image),
        "model_grid": {"resolution": f"{size}x{size}", **grid.summary(),
                       "hd_units": "mm" if millimetres else "pixels of the model grid"},
        "n_images": len(per_image), "part": part, "data_root": str(datamodule.hparams.root), "image_size": size,
        **settings_entries(predictor),
    }
    return Evaluation(metrics, per_image, np.stack(kept) if keep_predictions else None)


def evaluate_checkpoints(
    paths: Sequence[str | Path],
    data_root: str | Path | None = None,
    part: str | None = None,
    threshold: float | None = None,
    precision: str = "32-true",
    device: str | torch.device | None = "auto",
    batch_size: int | None = None,
    cache_dir: str | Path | None = None,
    keep_predictions: bool = False,
    tta: bool | None = None,
    postprocessing: PostProcessing | None = None,
    pixel_spacing: Sequence[float] | None = None,
    bootstrap: int = DEFAULT_RESAMPLES,
    backend: str = "torch",
) -> Evaluation:
    """Evaluate checkpoint(s) on their own part (``val`` by default; ``test``: the held-out patients), or on
    every slice of another dataset folder (``data_root``).

    TTA and post-processing are those stored with the checkpoints unless ``tta``, ``postprocessing`` or
    ``threshold`` override them. ``bootstrap``: resamples of the patients for the 95 % intervals (0: none).
    ``backend``: what runs the networks (:mod:`lightning_bts.evaluation.backends`).
    Everything is read and checked before anything is computed.

    Raises:
        InferenceError, ConfigError, CheckpointError: see :meth:`Predictor.from_checkpoints` and
            :func:`lightning_bts.evaluation.data.evaluation_data`.
        DatasetError: the dataset folder is missing, lacks masks, or has bad files.
    """
    predictor = Predictor.from_checkpoints(paths, device, precision, tta, postprocessing, threshold, backend)
    datamodule, part = evaluation_data(predictor.sources, data_root, part, batch_size, cache_dir)
    evaluation = evaluate(predictor, datamodule, part, pixel_spacing, keep_predictions, bootstrap)
    evaluation.metrics["checkpoints"] = [str(path) for path in paths]
    if predictor.settings_source.startswith("checkpoint") and _selected_here(predictor, datamodule, part):
        evaluation.metrics["note"] = ("the post-processing was selected on these same slices: the scores are "
                                      "optimistic; report the held-out test part (--part test)")
    return evaluation


def settings_entries(predictor: Predictor) -> dict[str, Any]:
    """What metrics.json records of the predictor: post-processing, TTA and where they came from, precision,
    backend."""
    return {
        "threshold": predictor.postprocessing.threshold, "postprocessing": predictor.postprocessing.as_dict(),
        "postprocessing_rule": predictor.postprocessing.describe(), "tta": predictor.tta,
        "settings_source": predictor.settings_source, "inference_precision": predictor.precision,
        "backend": predictor.backend, "ensemble_size": len(predictor.models),
    }


def _selected_here(predictor: Predictor, datamodule: BrainTumorDataModule, part: str) -> bool:
    """Whether any checkpoint's stored choice was selected on the validation part now scored."""
    if part != "val":
        return False
    for info in predictor.sources:
        record = selection_record(info) or {}
        same_data = record.get("data_root") == str(datamodule.hparams.root)
        if same_data and datamodule.split is not None and datamodule.split.fold in record.get("folds", []):
            return True
    return False


def _pair(spacing: Sequence[float] | float) -> tuple[float, float]:
    values = [float(v) for v in (spacing if isinstance(spacing, Sequence) else [spacing])]
    if len(values) not in (1, 2) or any(not v > 0 for v in values):
        raise ConfigError(f"pixel spacing must be one or two positive values in mm, got {values}")
    return values[0], values[-1]
