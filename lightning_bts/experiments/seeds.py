"""Repeated seeds in a cross-validation (``scripts/cv.py --seeds N``).

Each (loss, fold) is trained N times, with ``seed_everything`` S, S+1, ..., S+N-1 (S: the configuration's seed);
the runs are named ``<loss>_fold<k>_seed<s>`` and their records carry ``seed``. With N = 1 nothing changes: one
run per (loss, fold) under today's name, seeded by the configuration.

The report keeps folds as the unit of its intervals and paired tests: its tables use the mean over seeds of each
(loss, fold) (:func:`mean_over_seeds`). :func:`seed_spread` sets the spread across seeds beside the spread across
folds, so that a difference between losses can be told from what re-seeding alone produces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from lightning_bts.experiments.runs import CVError

SEED = "seed"
SPREAD_METRICS = ("dice", "dice_per_image", "precision", "recall", "hd95")
RATIOS = ("dice", "dice_per_image", "precision", "recall")
# The rows that one (loss, fold) has once per seed, by table of runs.collect.
_KEYS = {"folds": ["loss", "fold"], "per_image": ["loss", "fold", "key"], "curves": ["loss", "fold", "epoch"]}


def seed_values(base: Any, count: int) -> list[int | None]:
    """The seeds of each (loss, fold): ``[None]`` (the configuration's seed, today's run names) for one,
    else ``base, base + 1, ...``.

    Raises:
        CVError: ``count`` < 1, or several seeds asked of a configuration without an integer ``seed_everything``.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CVError(f"--seeds must be an integer >= 1, got {count!r}")
    if count == 1:
        return [None]
    if isinstance(base, bool) or not isinstance(base, int):
        raise CVError(f"--seeds {count} counts up from the configuration's seed_everything, which is {base!r}; "
                      "set an integer (e.g. --seed_everything 42)")
    return list(range(base, base + count))


def mean_over_seeds(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """``folds``, ``per_image`` and ``curves`` with one row per (loss, fold[, key | epoch]): numbers averaged over
    the seeds, text (tumour type, patient group) kept. Tables without a ``seed`` column are returned unchanged."""
    if SEED not in tables["folds"]:
        return tables
    averaged = {}
    for name, table in tables.items():
        by = _KEYS[name]
        numbers = [c for c in table.select_dtypes("number").columns if c not in (*by, SEED)]
        text = [c for c in table.columns if c not in (*by, *numbers, SEED)]
        means = table.groupby(by, as_index=False)[numbers].mean()
        if text:
            means = means.merge(table.groupby(by, as_index=False)[text].first(), on=by)
        averaged[name] = means[[c for c in table.columns if c in means.columns]]
    return averaged


def first_seed(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the lowest seed (all rows without seeds): the runs the gallery draws."""
    return table[table[SEED] == table[SEED].min()].reset_index(drop=True) if SEED in table else table


def seed_of(row: pd.Series) -> int | None:
    return int(row[SEED]) if SEED in row and pd.notna(row[SEED]) else None


def seed_label(records: Sequence[dict[str, Any]]) -> str:
    """``42`` for one seed, ``42–44`` for three."""
    seeds = sorted({r["config"]["seed_everything"] for r in records}, key=lambda s: s if isinstance(s, int) else -1)
    return str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"


def seed_spread(runs: pd.DataFrame, losses: Sequence[str]) -> pd.DataFrame:
    """Per loss and metric, from one row per run: the mean, the sd across seeds within a fold (averaged over
    folds: the noise of one run) and the sd across folds of the seed means. Empty without seeds."""
    if SEED not in runs:
        return pd.DataFrame()
    rows = []
    for loss in losses:
        by_fold = runs[runs["loss"] == loss].groupby("fold")
        for metric in SPREAD_METRICS:
            values = by_fold[metric]
            rows.append({"loss": loss, "metric": metric, "n_folds": values.ngroups, "n_seeds": int(values.size().min()),
                         "mean": values.mean().mean(), "sd_across_seeds": values.std(ddof=1).mean(),
                         "sd_across_folds": values.mean().std(ddof=1)})
    return pd.DataFrame(rows)


def seed_lines(spread: pd.DataFrame, label: str, table: Any) -> list[str]:
    """The report's section on seeds (none without seeds); ``table`` formats rows of strings as Markdown."""
    if spread.empty:
        return []
    rows = []
    for _, row in spread.iterrows():
        scale = 100 if row["metric"] in RATIOS else 1
        cells = [row["mean"], row["sd_across_seeds"], row["sd_across_folds"]]
        text = ["n/a" if pd.isna(v) else f"{scale * v:.2f}" for v in cells]
        rows.append({"loss": row["loss"], "metric": row["metric"], "mean": text[0], "sd across seeds": text[1],
                     "sd across folds": text[2]})
    n_seeds = int(spread["n_seeds"].min())
    return ["## Seeds", "",
            f"Each (loss, fold) was trained {n_seeds} times, with `seed_everything` {label}; the tables and tests "
            "above use each fold's mean over its seeds, so folds stay their unit. Below (ratios in percent, hd95 in "
            "the report's distance unit): *sd across seeds* is the sd of one run's metric across seeds within a "
            "fold, averaged over folds (what re-seeding alone moves a run by), *sd across folds* the sd of the seed "
            "means across folds. A difference between losses no larger than the sd across seeds is within seed "
            "noise. The gallery shows the lowest seed's models. (`seeds.csv`)", "",
            table(rows, "llrrr"), ""]
