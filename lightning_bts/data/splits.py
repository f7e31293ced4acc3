"""Leakage-free k-fold splits: grouped by ``patient_group``, stratified by tumour type, seeded.

Splits are data: :class:`FoldSplit` is written to ``splits.json`` beside a run's logs so that every fold and
every loss of an experiment can be checked to have used the same slices.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from lightning_bts.data.records import DatasetError


@dataclass(frozen=True)
class FoldSplit:
    """Slice keys of one fold. ``test`` is the held-out set shared by all folds (empty if none)."""

    fold: int
    num_folds: int
    seed: int
    train: list[str]
    val: list[str]
    test: list[str]

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))


def _group_kfold(records: pd.DataFrame, num_folds: int, seed: int) -> list[np.ndarray]:
    """Validation row indices of each fold."""
    splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    order = np.argsort(records["key"].to_numpy(), kind="stable")  # input order must not change the split
    ordered = records.iloc[order]
    folds = splitter.split(np.zeros(len(ordered)), ordered["tumor_type"], ordered["patient_group"])
    return [np.sort(order[val]) for _, val in folds]


def make_split(
    records: pd.DataFrame, num_folds: int = 5, fold: int = 0, seed: int = 42, test_fraction: float = 0.0
) -> FoldSplit:
    """Fold ``fold`` of a ``num_folds``-fold split, after setting aside ``test_fraction`` of patient groups.

    Raises:
        DatasetError: fold out of range, fewer patient groups than folds, bad ``test_fraction``.
    """
    if num_folds < 2:
        raise DatasetError(f"num_folds must be at least 2, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise DatasetError(f"fold {fold} is out of range for num_folds={num_folds}; expected 0..{num_folds - 1}")
    if not 0.0 <= test_fraction < 0.5:
        raise DatasetError(f"test_fraction must be in [0, 0.5), got {test_fraction}")

    test_rows = np.array([], dtype=int)
    if test_fraction > 0:
        test_parts = max(2, round(1 / test_fraction))
        _check_groups(records, test_parts, "the held-out test split")
        test_rows = _group_kfold(records, test_parts, seed)[0]
    remaining = records.drop(index=records.index[test_rows])
    _check_groups(remaining, num_folds, f"{num_folds}-fold cross-validation")
    val_rows = _group_kfold(remaining, num_folds, seed)[fold]
    val_keys = set(remaining.iloc[val_rows]["key"])
    return FoldSplit(
        fold=fold,
        num_folds=num_folds,
        seed=seed,
        train=sorted(set(remaining["key"]) - val_keys),
        val=sorted(val_keys),
        test=sorted(records.iloc[test_rows]["key"]),
    )


def _check_groups(records: pd.DataFrame, parts: int, purpose: str) -> None:
    groups = records["patient_group"].nunique()
    if groups < parts:
        raise DatasetError(f"{purpose} needs at least {parts} patient groups, the dataset has {groups}")
