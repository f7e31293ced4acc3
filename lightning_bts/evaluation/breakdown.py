"""Who the pooled score is made of: Dice per patient and per tumour type, and each one's share of the tumour.

Pooled Dice sums the pixels of every slice before taking the ratio, so a patient with many large tumour slices
weighs as much as all the others together. On figshare's fold-0 test split one glioma patient group
(``MR040240``: four scans, 97 of 301 slices) holds about half of the tumour pixels, and the pooled test Dice is
then mostly that patient's. A reader needs to see this beside the pooled number: ``by_patient`` gives the mean
and median of each patient's own pooled Dice (every patient counts once, as challenges score cases), the
patient with the largest share of tumour pixels, and the patient with the largest share of the errors (false
positive plus missed pixels: ``1 - Dice = (FP + FN) / (2 TP + FP + FN)``, so that share is the share of what
the pooled Dice loses; on fold 0's validation one glioma patient loses a third of it). ``by_tumor_type`` gives
the pooled ratios of each tumour type with its slices, patients and share of the tumour pixels. ``not_found``
counts the slices with tumour whose Dice is under :data:`NOT_FOUND_DICE`: the model missed the tumour or marked
something else. On fold 0's validation patients the shipped model has 29 such slices of 361 (4 % of the tumour
pixels, most of them non-enhancing gliomas) and every model trained there fails most of the same ones; they cost 6.5
points of the mean per-slice Dice (``reports/best_recipe/wrong_place/``), so the entry gives the scores of the other
slices beside their count. All come from the per-slice TP/FP/FN counts of ``per_image.csv`` with
:func:`lightning_bts.metrics.ratios_from_stats`'s rule for a zero denominator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from lightning_bts.errors import ConfigError
from lightning_bts.metrics import ratios_from_stats

REQUIRED_COLUMNS = ("patient_group", "tp", "fp", "fn")
UNKNOWN_TYPE = "unknown"
NOT_FOUND_DICE = 0.1
"""A slice with tumour whose Dice is under this counts as one where the tumour was not found."""


def _pooled(counts: pd.DataFrame) -> dict[str, np.ndarray]:
    """Pooled Dice, precision and recall of each row of summed ``tp``/``fp``/``fn`` counts."""
    tp, fp, fn = (torch.from_numpy(counts[name].to_numpy(dtype=float)) for name in ("tp", "fp", "fn"))
    ratios = ratios_from_stats(tp, fp, torch.zeros_like(tp), fn)
    return {name: ratios[name].numpy() for name in ("dice", "precision", "recall")}


def _groups(table: pd.DataFrame, key: pd.Series) -> pd.DataFrame:
    """One row per value of ``key``: summed ``tp``, ``fp``, ``fn``, ``tumor``, the number of ``slices`` and of
    ``patients``, and the pooled ``dice``, ``precision`` and ``recall``."""
    groups = table.groupby(key).agg(tp=("tp", "sum"), fp=("fp", "sum"), fn=("fn", "sum"), tumor=("tumor", "sum"),
                                    slices=("tp", "size"), patients=("patient_group", "nunique"))
    return groups.assign(**_pooled(groups))


def subgroup_scores(per_image: pd.DataFrame) -> dict[str, Any]:
    """The metrics.json entries ``by_patient`` and, when the slices have tumour types, ``by_tumor_type``.

    ``per_image`` has one row per slice with :data:`REQUIRED_COLUMNS` (as ``per_image.csv``), and optionally
    ``tumor_type`` (rows of type ``"unknown"`` or missing are left out of ``by_tumor_type``; with no known type
    the entry is absent). Tumour pixels are ``tp + fn`` of the scored masks.

    Raises:
        ConfigError: a required column is missing, or there are no slices.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in per_image.columns]
    if missing:
        raise ConfigError(f"scores per patient need the per-slice columns {missing}")
    if per_image.empty:
        raise ConfigError("scores per patient need at least one scored slice")
    table = per_image.assign(patient_group=per_image["patient_group"].astype(str),
                             tumor=per_image["tp"] + per_image["fn"])
    all_tumor = float(table["tumor"].sum())

    def share(pixels: float) -> float:
        return pixels / all_tumor if all_tumor > 0 else 0.0

    patients = _groups(table, table["patient_group"])
    errors = patients["fp"] + patients["fn"]
    all_errors = float(errors.sum())

    def patient(name: str) -> dict[str, Any]:
        row = patients.loc[name]
        return {"patient_group": str(name), "slices": int(row["slices"]),
                "tumor_pixel_share": share(float(row["tumor"])), "dice": float(row["dice"])}

    most_errors = errors.idxmax()
    result: dict[str, Any] = {"by_patient": {
        "patients": len(patients),
        "dice_mean": float(patients["dice"].mean()),
        "dice_median": float(patients["dice"].median()),
        "largest": patient(patients["tumor"].idxmax()),
        "most_errors": {**patient(most_errors),
                        "error_pixel_share": float(errors[most_errors]) / all_errors if all_errors > 0 else 0.0},
    }}

    if "tumor_type" in table.columns:
        typed = table[table["tumor_type"].notna() & (table["tumor_type"].astype(str) != UNKNOWN_TYPE)]
        if not typed.empty:
            types = _groups(typed, typed["tumor_type"].astype(str))
            result["by_tumor_type"] = {
                str(name): {"dice": float(row.dice), "precision": float(row.precision), "recall": float(row.recall),
                            "slices": int(row.slices), "patients": int(row.patients),
                            "tumor_pixel_share": share(float(row.tumor))}
                for name, row in types.iterrows()}
    result["not_found"] = _not_found(table, share)
    return result


def _not_found(table: pd.DataFrame, share: Callable[[float], float]) -> dict[str, Any]:
    """The ``not_found`` entry: how many slices with tumour score under :data:`NOT_FOUND_DICE` and their ``share``
    of the tumour pixels; the pooled and mean per-slice Dice of the other slices with tumour (``None`` if none)."""
    with_tumor = table[table["tumor"] > 0]
    dice = pd.Series(_pooled(with_tumor)["dice"], index=with_tumor.index)
    missed = dice < NOT_FOUND_DICE
    rest = with_tumor[~missed]
    return {
        "dice_below": NOT_FOUND_DICE,
        "slices": int(missed.sum()),
        "slices_with_tumor": len(with_tumor),
        "tumor_pixel_share": share(float(with_tumor.loc[missed, "tumor"].sum())),
        "others_dice": float(_pooled(rest[["tp", "fp", "fn"]].sum().to_frame().T)["dice"][0]) if len(rest) else None,
        "others_dice_per_slice": float(dice[~missed].mean()) if len(rest) else None,
    }
