"""The 95 % intervals of an evaluation: a bootstrap over patients, on synthetic per-slice counts (no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lightning_bts.errors import ConfigError
from lightning_bts.evaluation.bootstrap import (
    CI_NAMES,
    confidence_intervals,
    patient_bootstrap,
    patient_scores,
    point_scores,
)
from lightning_bts.evaluation.breakdown import subgroup_scores
from lightning_bts.evaluation.evaluate_cli import parse_args
from lightning_bts.evaluation.outputs import format_table
from lightning_bts.evaluation.scoring import SliceScores


def _slices(patient_dice: dict[str, list[float]], tumour: int | None = None) -> tuple[pd.DataFrame, SliceScores]:
    """Per-slice rows with per_image.csv's columns: each slice's TP/FP/FN give the Dice asked for (to a pixel
    of a tumour of ``tumour`` pixels, else of a random size), scored by the SliceScores of evaluation."""
    rng = np.random.default_rng(1)
    scores, groups = SliceScores(), []
    for patient, dices in patient_dice.items():
        for dice in dices:
            pixels = tumour or int(rng.integers(50, 400))
            hit = round(pixels * dice)  # TP; as many false positives as missed pixels: Dice ~ dice
            truth = np.zeros((32, 32), dtype=bool)
            truth.flat[:pixels] = True
            predicted = np.zeros_like(truth)
            predicted.flat[pixels - hit:2 * pixels - hit] = True
            scores.add(predicted, truth)
            groups.append(patient)
    return pd.concat([pd.DataFrame({"patient_group": groups}), scores.table()], axis=1), scores


def _point(per_image: pd.DataFrame, scores: SliceScores) -> dict[str, float]:
    summary = scores.summary()
    return {"dice": summary["dice"], "dice_per_image": summary["per_image"]["dice"],
            "precision": summary["precision"], "recall": summary["recall"], "hd95": summary["hd95"]}


def _patients(spread: float, n: int = 12, slices: int = 6, seed: int = 3) -> dict[str, list[float]]:
    """``n`` patients whose mean Dice scatters by ``spread`` around 0.6, slices near their patient's mean."""
    rng = np.random.default_rng(seed)
    centres = np.clip(0.6 + spread * rng.standard_normal(n), 0.05, 0.95)
    return {f"p{i}": list(np.clip(c + 0.02 * rng.standard_normal(slices), 0.0, 1.0)) for i, c in enumerate(centres)}


def test_the_interval_contains_the_point_estimate():
    per_image, scores = _slices(_patients(0.15))
    result = confidence_intervals(per_image)
    assert set(result["ci95"]) == set(CI_NAMES)
    assert result["ci_method"] == "bootstrap over 12 patients, 2000 resamples, percentile, seed 0"
    for name, value in _point(per_image, scores).items():
        low, high = result["ci95"][name]
        assert low < value < high, (name, low, value, high)


def test_the_point_values_are_the_evaluations_own():
    per_image, scores = _slices(_patients(0.15))
    assert point_scores(per_image) == pytest.approx(_point(per_image, scores))
    with pytest.raises(ConfigError, match="at least one scored slice"):
        point_scores(per_image.iloc[:0])


def test_per_patient_values_are_each_patients_own():
    per_image, _ = _slices(_patients(0.15))
    patients = patient_scores(per_image)
    by_patient = subgroup_scores(per_image)["by_patient"]
    assert len(patients["dice"]) == by_patient["patients"] == 12
    assert patients["dice"].mean() == pytest.approx(by_patient["dice_mean"])  # pooled per patient, as metrics.json
    slice_means = per_image.groupby(per_image["patient_group"].astype(str))["dice"].mean()  # sorted patients
    assert patients["dice_per_image"] == pytest.approx(slice_means.to_numpy())


def test_the_same_seed_gives_the_same_interval_whatever_the_row_order():
    per_image, _ = _slices(_patients(0.15))
    first = confidence_intervals(per_image)
    assert confidence_intervals(per_image) == first
    assert confidence_intervals(per_image.sample(frac=1.0, random_state=5)) == first  # patients are sorted
    assert confidence_intervals(per_image, seed=1) != first


def test_the_interval_widens_when_patients_disagree_more():
    agree, _ = _slices(_patients(0.03))
    disagree, _ = _slices(_patients(0.25))
    narrow, wide = confidence_intervals(agree)["ci95"], confidence_intervals(disagree)["ci95"]
    for name in ("dice", "dice_per_image", "precision", "recall"):
        assert wide[name][1] - wide[name][0] > 3 * (narrow[name][1] - narrow[name][0]), name


def test_patients_are_resampled_not_slices():
    # one patient with many poor slices and four with one good slice each: how many slices of the poor patient
    # a resample holds depends on whether that patient is drawn, not on 40 independent slice draws
    per_image, _ = _slices({"many": [0.2] * 40, **{f"p{i}": [0.9] for i in range(4)}}, tumour=100)
    by_patient = confidence_intervals(per_image)["ci95"]
    by_slice = confidence_intervals(per_image.assign(patient_group=np.arange(len(per_image))))["ci95"]
    for name in ("dice", "dice_per_image"):
        assert by_patient[name][1] - by_patient[name][0] > 2 * (by_slice[name][1] - by_slice[name][0]), name
    # a resample drawing the poor patient k of 5 times has a per-image Dice of (40k 0.2 + (5-k) 0.9) / (40k + 5-k)
    values = np.unique(np.round(patient_bootstrap(per_image)["dice_per_image"], 6))
    possible = {round((40 * k * 0.2 + (5 - k) * 0.9) / (40 * k + 5 - k), 6) for k in range(6)}
    assert set(values) <= possible and len(values) >= 4

    # every slice of every patient twice: the same patients are drawn, so the same interval
    doubled = pd.concat([per_image, per_image], ignore_index=True)
    for name, interval in confidence_intervals(doubled)["ci95"].items():
        assert interval == pytest.approx(by_patient[name]), name


def test_a_single_patient_or_no_resamples_give_no_interval():
    per_image, _ = _slices({"only": [0.5, 0.6, 0.7]})
    assert confidence_intervals(per_image) == {
        "ci_method": "none: a bootstrap over patients needs at least 2 patients, these slices come from 1"}
    two, _ = _slices({"a": [0.5], "b": [0.7]})
    assert confidence_intervals(two, n_resamples=0) == {"ci_method": "none: bootstrap turned off (0 resamples)"}
    with pytest.raises(ConfigError, match="0 .off. or positive"):
        confidence_intervals(two, n_resamples=-1)
    with pytest.raises(ConfigError, match=r"\['tp', 'fp', 'fn'\]"):
        patient_bootstrap(two.drop(columns=["tp", "fp", "fn"]))


def test_hd95_undefined_on_some_slices_is_left_out():
    per_image, _ = _slices({"a": [0.5, 0.6], "b": [0.7, 0.8], "c": [0.4]})
    per_image.loc[[0, 1], "hd95"] = np.nan  # patient a has no defined HD95
    resampled = patient_bootstrap(per_image)["hd95"]
    assert np.isnan(resampled).any() and np.isfinite(resampled).any()  # resamples of only patient a: none
    low, high = confidence_intervals(per_image)["ci95"]["hd95"]
    defined = per_image["hd95"].dropna()
    assert defined.min() <= low <= high <= defined.max()


def test_the_option_and_the_printed_table():
    assert parse_args(["--ckpt", "a.ckpt", "--out", "o"]).bootstrap == 2000
    assert parse_args(["--ckpt", "a.ckpt", "--out", "o", "--bootstrap", "0"]).bootstrap == 0
    with pytest.raises(SystemExit):
        parse_args(["--ckpt", "a.ckpt", "--out", "o", "--bootstrap", "-5"])
    per_image, scores = _slices(_patients(0.15))
    summary = scores.summary()
    metrics = {**summary, **confidence_intervals(per_image), "hd_units": "pixels of the original slices"}
    ci = metrics["ci95"]
    table = format_table(metrics).splitlines()
    assert table[0].endswith("95% CI (per image)")
    dice = f"{100 * ci['dice'][0]:.1f}-{100 * ci['dice'][1]:.1f}%"
    per_slice = f"({100 * ci['dice_per_image'][0]:.1f}-{100 * ci['dice_per_image'][1]:.1f}%)"
    assert table[1].startswith("dice") and table[1].endswith(f"{dice} {per_slice}")
    assert table[-4].endswith(f"{ci['hd95'][0]:.2f}-{ci['hd95'][1]:.2f} px")
    assert "95% CI: bootstrap over 12 patients, 2000 resamples, percentile, seed 0" in table
    no_interval = {**summary, **confidence_intervals(per_image, n_resamples=0)}
    assert "95% CI" not in format_table(no_interval).splitlines()[0]
