"""95 % confidence intervals of an evaluation's scores, by a bootstrap over patients (a cluster bootstrap).

Why patients and not slices: the slices of one patient are correlated (one tumour, neighbouring cuts, one
scanner), so resampling slices counts them as independent evidence and gives intervals that are too narrow,
the more so the more slices a patient has; and a model is judged on new patients, so the patient is what
varies from one test set to the next. Each resample draws as many patients as there are, with replacement,
and every slice of a drawn patient comes along (twice if the patient is drawn twice). Each statistic is then
computed in its own form, as :class:`~lightning_bts.evaluation.scoring.SliceScores` computes the point value:

- ``dice``, ``precision``, ``recall``: pooled, from the summed TP/FP/FN of the drawn slices
  (:func:`lightning_bts.metrics.ratios_from_stats`, with its rule for a zero denominator);
- ``dice_per_image``: the mean Dice of the drawn slices;
- ``hd95``: the mean HD95 of the drawn slices where it is defined (not NaN).

The interval is the percentile interval of the resampled values (2.5th and 97.5th percentiles). Patients are
the ``patient_group`` of the dataset (without a metadata.csv every slice is its own group, and the interval
is then a slice bootstrap). ``scipy.stats.bootstrap`` resamples the observations of its arrays, not groups of
rows whose counts are summed before a ratio is taken, so the resampling is done here: one matrix of draw
counts (resample x patient) times the per-patient sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from lightning_bts.errors import ConfigError
from lightning_bts.metrics import ratios_from_stats

CI_NAMES = ("dice", "dice_per_image", "precision", "recall", "hd95")
REQUIRED_COLUMNS = ("patient_group", "tp", "fp", "fn", "dice", "hd95")
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
LEVEL = 0.95


def _patient_sums(per_image: pd.DataFrame) -> np.ndarray:
    """Per patient (sorted by ``patient_group``): summed TP, FP, FN, slices, Dice, defined HD95 and their count."""
    missing = [c for c in REQUIRED_COLUMNS if c not in per_image.columns]
    if missing:
        raise ConfigError(f"scores over patients need the per-slice columns {missing}")
    _, patient = np.unique(per_image["patient_group"].astype(str).to_numpy(), return_inverse=True)
    hd95 = per_image["hd95"].to_numpy(dtype=float)
    defined = ~np.isnan(hd95)
    per_slice = np.column_stack([
        per_image["tp"].to_numpy(dtype=float), per_image["fp"].to_numpy(dtype=float),
        per_image["fn"].to_numpy(dtype=float), np.ones(len(per_image)), per_image["dice"].to_numpy(dtype=float),
        np.where(defined, hd95, 0.0), defined.astype(float),
    ])
    per_patient = np.zeros((int(patient.max()) + 1 if len(patient) else 0, per_slice.shape[1]))
    np.add.at(per_patient, patient, per_slice)
    return per_patient


def _statistics(counts: np.ndarray, per_patient: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of :data:`CI_NAMES` of each row of ``counts`` (how often each patient is drawn)."""
    tp, fp, fn, slices, dice_sum, hd95_sum, hd95_defined = (counts @ per_patient).T
    pooled = ratios_from_stats(*(torch.from_numpy(x) for x in (tp, fp, np.zeros_like(tp), fn)))
    with np.errstate(invalid="ignore", divide="ignore"):
        hd95_mean = np.where(hd95_defined > 0, hd95_sum / hd95_defined, np.nan)
    return {"dice": pooled["dice"].numpy(), "dice_per_image": dice_sum / slices,
            "precision": pooled["precision"].numpy(), "recall": pooled["recall"].numpy(), "hd95": hd95_mean}


def _nonempty_patient_sums(per_image: pd.DataFrame) -> np.ndarray:
    per_patient = _patient_sums(per_image)
    if len(per_patient) == 0:
        raise ConfigError("scores over patients need at least one scored slice")
    return per_patient


def point_scores(per_image: pd.DataFrame) -> dict[str, float]:
    """The statistics of :data:`CI_NAMES` on the slices as they are (every patient once): the values whose
    intervals :func:`patient_bootstrap` resamples, computed by the same code."""
    per_patient = _nonempty_patient_sums(per_image)
    return {name: float(value[0]) for name, value in _statistics(np.ones((1, len(per_patient))), per_patient).items()}


def patient_scores(per_image: pd.DataFrame) -> dict[str, np.ndarray]:
    """The statistics of :data:`CI_NAMES` of each patient's own slices, patients sorted by ``patient_group``:
    ``dice`` is the patient's pooled Dice (as ``by_patient`` in metrics.json), ``dice_per_image`` the mean Dice of
    its slices."""
    per_patient = _nonempty_patient_sums(per_image)
    return _statistics(np.eye(len(per_patient)), per_patient)


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The :data:`LEVEL` percentile interval of resampled values, NaNs left out (NaN, NaN when none is left)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return np.nan, np.nan
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def patient_bootstrap(
    per_image: pd.DataFrame, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> dict[str, np.ndarray]:
    """The statistics of :data:`CI_NAMES` in each of ``n_resamples`` resamples of the patients: ``(n_resamples,)``.

    ``per_image`` has one row per slice with :data:`REQUIRED_COLUMNS` (as ``per_image.csv``); the order of its
    rows does not matter (patients are sorted). The draws come from ``numpy.random.default_rng(seed)``, so two
    evaluations of the same patients with the same seed draw the same patients in every resample (the paired
    differences of :mod:`lightning_bts.experiments.comparison`). An ``hd95`` is NaN in a resample whose slices
    have no defined HD95.
    """
    if n_resamples < 1:
        raise ConfigError(f"the number of bootstrap resamples must be positive, got {n_resamples}")
    per_patient = _patient_sums(per_image)
    n_patients = len(per_patient)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    # how often each patient was drawn in each resample, then the sums over the drawn slices
    counts = np.bincount((drawn + n_patients * np.arange(n_resamples)[:, None]).ravel(),
                         minlength=n_resamples * n_patients).reshape(n_resamples, n_patients)
    return _statistics(counts, per_patient)


def confidence_intervals(
    per_image: pd.DataFrame, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> dict[str, Any]:
    """The metrics.json entries: ``ci95`` (``{name: [low, high]}`` for :data:`CI_NAMES`) and ``ci_method``.

    With ``n_resamples == 0`` or fewer than 2 patients there is no interval: only ``ci_method``, saying why.
    """
    if n_resamples < 0:
        raise ConfigError(f"the number of bootstrap resamples must be 0 (off) or positive, got {n_resamples}")
    n_patients = per_image["patient_group"].nunique() if "patient_group" in per_image.columns else 0
    if n_resamples == 0:
        return {"ci_method": "none: bootstrap turned off (0 resamples)"}
    if n_patients < 2:
        return {"ci_method": f"none: a bootstrap over patients needs at least 2 patients, these slices come from "
                             f"{n_patients}"}
    resampled = patient_bootstrap(per_image, n_resamples, seed)
    intervals = {name: list(percentile_interval(resampled[name])) for name in CI_NAMES}
    return {"ci95": intervals, "ci_method": f"bootstrap over {n_patients} patients, {n_resamples} resamples, "
                                           f"percentile, seed {seed}"}
