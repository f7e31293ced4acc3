"""The on-disk layout of a cross-validation run (``OUT/folds/<loss>_fold<k>.json``, ``per_image/``, ``curves/``)
and :func:`collect`, which gathers the finished runs into tables. Both the runner (:mod:`.cv`) and the report
(:mod:`.report`) read it, so neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from lightning_bts.errors import UserError
from lightning_bts.evaluation import write_files_atomically
from lightning_bts.evaluation.scoring import GRID_PREFIX


class CVError(UserError):
    """The cross-validation cannot run or resume as asked; the message says why."""


class RunsFailed(CVError):
    """Runs failed for good (after their retries) while the others finished; ``finished`` says how many did."""

    def __init__(self, message: str, finished: int) -> None:
        super().__init__(message)
        self.finished = finished


def run_name(loss: str, fold: int, seed: int | None = None) -> str:
    """``<loss>_fold<k>``; ``<loss>_fold<k>_seed<s>`` when the experiment repeats each run with several seeds."""
    return f"{loss}_fold{fold}" + ("" if seed is None else f"_seed{seed}")


def result_path(out_dir: str | Path, loss: str, fold: int, seed: int | None = None) -> Path:
    return Path(out_dir) / "folds" / f"{run_name(loss, fold, seed)}.json"


def collect(out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Concatenate the finished runs into ``folds.csv``, ``per_image.csv`` and ``curves.csv`` (and return them)."""
    out_dir = Path(out_dir)
    records = [json.loads(p.read_text()) for p in sorted((out_dir / "folds").glob("*.json"))]
    if not records:
        raise CVError(f"{out_dir} holds no finished runs (folds/*.json)")
    rows = []
    for record in records:
        metrics = record["metrics"]
        row = {"loss": record["loss"], "fold": record["fold"], **({"seed": record["seed"]} if "seed" in record else {}),
               "n_val": metrics["n_images"],
               "n_train": record["n_train"], "train_seconds": record["train_seconds"]}
        row.update(_numbers(metrics))
        row.update({f"{k}_per_image": v for k, v in metrics["per_image"].items()})
        if "model_grid" in metrics:  # folds evaluated before native-resolution scores have none
            row.update({f"{GRID_PREFIX}{k}": v for k, v in _numbers(metrics["model_grid"]).items()})
            row.update({f"{GRID_PREFIX}{k}_per_image": v for k, v in metrics["model_grid"]["per_image"].items()})
        rows.append(row)
    names = [run_name(r["loss"], r["fold"], r.get("seed")) for r in records]
    folds = pd.DataFrame(rows)
    tables = {
        "folds": folds.sort_values(["loss", "fold", *(["seed"] if "seed" in folds else [])], ignore_index=True),
        "per_image": pd.concat([pd.read_csv(out_dir / "per_image" / f"{n}.csv", dtype={"key": str,
                               "patient_group": str}) for n in names], ignore_index=True),
        "curves": pd.concat([pd.read_csv(out_dir / "curves" / f"{n}.csv") for n in names], ignore_index=True),
    }
    write_files_atomically(out_dir, {f"{name}.csv": table.to_csv(index=False) for name, table in tables.items()})
    return tables


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics dict (not the threshold, not flags)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "threshold"}
