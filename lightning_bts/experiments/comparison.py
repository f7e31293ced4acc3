"""Two evaluations of the same slices compared pair by pair: is model A better than model B on these patients?

``scripts/compare.py A/per_image.csv B/per_image.csv`` reads two ``per_image.csv`` files of
``scripts/evaluate.py`` that score the same slices (two checkpoints, or one checkpoint with two post-processings)
and prints A, B and A - B:

- pooled Dice, per-slice mean Dice, precision, recall and HD95, each difference with its 95 % interval from
  :func:`~lightning_bts.evaluation.bootstrap.patient_bootstrap` run on both files with the same seed: every
  resample draws the same patients for A and B, and the interval is the 2.5th to 97.5th percentile of A - B
  over the resamples. Why paired: two models scored on the same patients share those patients' difficulty, so
  the difference varies much less than either score, and two separate intervals that overlap say little about
  the difference. Why patients: a patient's slices are correlated (see the bootstrap module);
- the Wilcoxon signed-rank test of the per-slice Dice
  (:func:`~lightning_bts.experiments.stats.wilcoxon_signed_rank`) and the slices where A is better or worse;
- per patient, the patients where A is better, worse or the same, counted two ways: by each patient's mean
  per-slice Dice and by each patient's pooled Dice (as ``by_patient`` in metrics.json), with the mean over the
  patients of each.

The interval covers a new draw of these patients, not a new training seed: two runs of one recipe differ by a
few points on their own (``reports/best_recipe/seeds.md``), which no comparison of two checkpoints can show.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lightning_bts.errors import ConfigError, UserError
from lightning_bts.evaluation.bootstrap import (
    CI_NAMES,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    REQUIRED_COLUMNS,
    patient_bootstrap,
    patient_scores,
    percentile_interval,
    point_scores,
)
from lightning_bts.experiments.stats import PairedTest, wilcoxon_signed_rank

LABELS = {"dice": "pooled Dice", "dice_per_image": "per-slice mean Dice", "precision": "precision",
          "recall": "recall", "hd95": "HD95 (px, lower is better)"}


@dataclass(frozen=True)
class Difference:
    """One statistic of A and of B, ``a - b``, and the paired 95 % interval [``low``, ``high``] of ``a - b``."""

    name: str
    a: float
    b: float
    low: float
    high: float

    @property
    def difference(self) -> float:
        return self.a - self.b


@dataclass(frozen=True)
class Tally:
    """How many units (slices or patients) A scores higher on, lower on, and the same."""

    better: int
    worse: int
    same: int

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray) -> Tally:
        return cls(int(np.sum(a > b)), int(np.sum(a < b)), int(np.sum(a == b)))


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` finds; :func:`format_comparison` prints it."""

    n_slices: int
    n_patients: int
    n_resamples: int
    seed: int
    differences: tuple[Difference, ...]
    slice_test: PairedTest
    slices: Tally
    patients_by_slice_mean: Tally
    patients_by_pooled: Tally
    patient_means: dict[str, tuple[float, float]]


def _paired_rows(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables on the same slices in the same order (by ``key``), or an error naming what differs."""
    for table, name in ((a, names[0]), (b, names[1])):
        missing = [c for c in ("key", *REQUIRED_COLUMNS) if c not in table.columns]
        if missing:
            raise ConfigError(f"{name}: a per_image.csv of scripts/evaluate.py was expected, the columns {missing} "
                              "are missing")
        if table.empty:
            raise ConfigError(f"{name}: no scored slices")
        if table["key"].duplicated().any():
            repeated = table["key"][table["key"].duplicated()].iloc[0]
            raise ConfigError(f"{name}: the slice {repeated} is scored twice; one evaluation of each slice was "
                              "expected")
    a, b = (table.assign(key=table["key"].astype(str), patient_group=table["patient_group"].astype(str))
            .sort_values("key", ignore_index=True) for table in (a, b))
    only_a = sorted(set(a["key"]) - set(b["key"]))
    only_b = sorted(set(b["key"]) - set(a["key"]))
    if only_a or only_b:
        raise ConfigError(f"the two files score different slices: {len(only_a)} only in {names[0]} "
                          f"(first {only_a[:3]}), {len(only_b)} only in {names[1]} (first {only_b[:3]}); "
                          "compare evaluations of the same --part of the same split")
    if not (a["patient_group"] == b["patient_group"]).all():
        raise ConfigError(f"{names[0]} and {names[1]} put the same slices in different patient groups")
    return a, b


def compare(a: pd.DataFrame, b: pd.DataFrame, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
            names: tuple[str, str] = ("A", "B")) -> Comparison:
    """Compares the per-slice scores ``a`` and ``b`` (``per_image.csv`` tables of the same slices), A minus B.

    Raises:
        ConfigError: a table lacks a column, repeats a slice, or the two score different slices.
    """
    a, b = _paired_rows(a, b, names)
    points_a, points_b = point_scores(a), point_scores(b)
    resampled_a, resampled_b = patient_bootstrap(a, n_resamples, seed), patient_bootstrap(b, n_resamples, seed)
    differences = tuple(Difference(name, points_a[name], points_b[name],
                                   *percentile_interval(resampled_a[name] - resampled_b[name])) for name in CI_NAMES)
    patients_a, patients_b = patient_scores(a), patient_scores(b)  # the same patients in the same (sorted) order
    slice_dice_a, slice_dice_b = a["dice"].to_numpy(), b["dice"].to_numpy()
    return Comparison(
        n_slices=len(a), n_patients=len(patients_a["dice"]), n_resamples=n_resamples, seed=seed,
        differences=differences,
        slice_test=wilcoxon_signed_rank(slice_dice_a, slice_dice_b),
        slices=Tally.of(slice_dice_a, slice_dice_b),
        patients_by_slice_mean=Tally.of(patients_a["dice_per_image"], patients_b["dice_per_image"]),
        patients_by_pooled=Tally.of(patients_a["dice"], patients_b["dice"]),
        patient_means={"mean per-slice Dice": (float(patients_a["dice_per_image"].mean()),
                                               float(patients_b["dice_per_image"].mean())),
                       "pooled Dice": (float(patients_a["dice"].mean()), float(patients_b["dice"].mean()))},
    )


def format_comparison(comparison: Comparison, names: tuple[str, str] = ("A", "B")) -> str:
    """A Markdown table of the differences and the per-slice and per-patient tallies, A minus B."""
    a, b = names
    c = comparison
    lines = [f"{c.n_slices} slices of {c.n_patients} patients; intervals: {c.n_resamples} paired resamples of the "
             f"patients (the same draws for both), seed {c.seed}, 95 % percentile", "",
             f"| | {a} | {b} | {a} - {b} | 95 % interval |", "|---|---:|---:|---:|---|"]
    for d in c.differences:
        if d.name == "hd95":
            lines.append(f"| {LABELS[d.name]} | {d.a:.1f} | {d.b:.1f} | {d.difference:+.1f} | "
                         f"{d.low:+.1f} to {d.high:+.1f} |")
        else:
            lines.append(f"| {LABELS[d.name]} | {100 * d.a:.2f} % | {100 * d.b:.2f} % | "
                         f"{100 * d.difference:+.2f} | {100 * d.low:+.2f} to {100 * d.high:+.2f} |")
    for label, (mean_a, mean_b) in c.patient_means.items():
        lines.append(f"| per-patient mean of {label} | {100 * mean_a:.2f} % | {100 * mean_b:.2f} % | "
                     f"{100 * (mean_a - mean_b):+.2f} | |")
    t = c.slice_test
    lines += ["",
              f"per slice: {a} better on {c.slices.better}, worse on {c.slices.worse}, the same on {c.slices.same}; "
              f"{t.name} p = {t.p_value:.2g}, {t.effect_size_name} {t.effect_size:+.2f}",
              f"per patient (mean per-slice Dice): {a} better on {c.patients_by_slice_mean.better}, worse on "
              f"{c.patients_by_slice_mean.worse}, the same on {c.patients_by_slice_mean.same}",
              f"per patient (pooled Dice): {a} better on {c.patients_by_pooled.better}, worse on "
              f"{c.patients_by_pooled.worse}, the same on {c.patients_by_pooled.same}"]
    return "\n".join(lines)


def read_per_image(path: str | Path) -> pd.DataFrame:
    """A ``per_image.csv`` (or a folder holding one) with string keys and patient groups."""
    path = Path(path)
    if path.is_dir():
        path = path / "per_image.csv"
    if not path.is_file():
        raise UserError(f"{path}: no such file; a per_image.csv written by scripts/evaluate.py was expected")
    try:
        return pd.read_csv(path, dtype={"key": str, "patient_group": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a readable CSV ({error})") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="compare.py", allow_abbrev=False,
        description="Compare two evaluations of the same slices (per_image.csv of scripts/evaluate.py), A minus "
        "B: pooled and per-slice Dice, precision, recall and HD95 with paired 95 % intervals over the patients, "
        "the Wilcoxon signed-rank test of the per-slice Dice, and the slices and patients each model wins.",
        epilog="The interval is over the patients scored, not over training seeds.")
    parser.add_argument("a", help="model A's per_image.csv (or the evaluate.py output folder holding it)")
    parser.add_argument("b", help="model B's per_image.csv (or folder), scoring the same slices")
    parser.add_argument("--names", nargs=2, default=("A", "B"), metavar=("A", "B"),
                        help="labels of A and B in the table (default: A B)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help=f"bootstrap resamples of the patients (default {DEFAULT_RESAMPLES})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Comparison:
    """Reads both files, compares, prints the table.

    Raises:
        UserError: a missing or unreadable file, or files that do not score the same slices.
    """
    args = parse_args(argv)
    names = tuple(args.names)
    comparison = compare(read_per_image(args.a), read_per_image(args.b), args.resamples, args.seed, names)
    print(format_comparison(comparison, names))
    return comparison
