"""scripts/compare.py: two evaluations of the same slices, A minus B, with paired intervals over the patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lightning_bts.errors import ConfigError, UserError
from lightning_bts.evaluation.bootstrap import patient_bootstrap
from lightning_bts.experiments.comparison import compare, format_comparison, main
from tests.conftest import REPO


def _per_image(dice_by_slice: np.ndarray, patients: int = 8, tumour: int = 200) -> pd.DataFrame:
    """per_image.csv rows: slice i of patient i % ``patients``, a ``tumour``-pixel mask found with Dice ~ dice."""
    tp = np.round(tumour * dice_by_slice)
    fn = tumour - tp
    fp = fn.copy()  # as many false as missed pixels: Dice = tp / tumour
    return pd.DataFrame({
        "key": [f"{i:04d}" for i in range(len(dice_by_slice))],
        "patient_group": [f"p{i % patients}" for i in range(len(dice_by_slice))],
        "tp": tp, "fp": fp, "fn": fn, "dice": 2 * tp / (2 * tp + fp + fn),
        "hd95": 40 * (1 - dice_by_slice),
    })


def _dices(n: int = 40, seed: int = 0) -> np.ndarray:
    return np.clip(0.6 + 0.2 * np.random.default_rng(seed).standard_normal(n), 0.05, 0.95)


def test_a_model_against_itself_differs_by_nothing():
    table = _per_image(_dices())
    result = compare(table, table.sample(frac=1.0, random_state=1))  # row order does not matter
    for d in result.differences:
        assert d.difference == 0 and d.low == 0 and d.high == 0, d
    assert (result.slices.better, result.slices.worse, result.slices.same) == (0, 0, 40)
    assert result.patients_by_pooled.same == result.n_patients == 8
    assert result.slice_test.p_value == 1.0


def test_a_model_better_on_every_slice_has_an_interval_above_zero():
    dices = _dices()
    better, worse = _per_image(np.minimum(dices + 0.1, 1.0)), _per_image(dices)
    result = compare(better, worse)
    by_name = {d.name: d for d in result.differences}
    for name in ("dice", "dice_per_image", "recall"):
        assert 0 < by_name[name].low <= by_name[name].difference <= by_name[name].high, name
    assert by_name["hd95"].high < 0  # HD95: lower is better
    assert result.slices.better == 40 and result.patients_by_slice_mean.better == 8
    assert result.slice_test.p_value < 1e-6
    # the interval is the percentile interval of the per-resample differences of the same draws
    delta = patient_bootstrap(better)["dice"] - patient_bootstrap(worse)["dice"]
    assert by_name["dice"].low == pytest.approx(np.percentile(delta, 2.5))
    reverse = compare(worse, better)
    assert {d.name: d.difference for d in reverse.differences} == pytest.approx(
        {d.name: -d.difference for d in result.differences})


def test_files_that_score_different_slices_are_refused_by_name():
    table = _per_image(_dices())
    with pytest.raises(ConfigError, match=r"1 only in new .first \['0039'\]., 0 only in old"):
        compare(table, table.iloc[:-1], names=("new", "old"))
    with pytest.raises(ConfigError, match=r"old: a per_image.csv .* \['tp'\] are missing"):
        compare(table, table.drop(columns=["tp"]), names=("new", "old"))
    with pytest.raises(ConfigError, match="the slice 0000 is scored twice"):
        compare(pd.concat([table, table.iloc[:1]]), table)
    with pytest.raises(ConfigError, match="different patient groups"):
        compare(table, table.assign(patient_group="one"))


def test_the_command_reproduces_the_committed_candidate_comparison(capsys):
    """candidates.md's per-image Dice + BCE section (seed 43) quotes these numbers from the committed files."""
    best = REPO / "reports/best_recipe"
    result = main([str(best / "candidates/dice_image_seed43/validation_postprocessed_per_image.csv"),
                   str(best / "best_cpu_seed43_101ep_run/validation_postprocessed_per_image.csv"),
                   "--names", "per-image", "baseline"])
    by_name = {d.name: d for d in result.differences}
    assert (result.n_slices, result.n_patients) == (361, 23)
    assert 100 * by_name["dice"].difference == pytest.approx(0.61, abs=0.01)
    assert (100 * by_name["dice"].low, 100 * by_name["dice"].high) == pytest.approx((-0.83, 2.95), abs=0.01)
    assert (100 * by_name["dice_per_image"].low, 100 * by_name["dice_per_image"].high) == pytest.approx(
        (0.98, 3.42), abs=0.01)
    assert result.slice_test.p_value == pytest.approx(0.024, abs=0.001)
    printed = capsys.readouterr().out
    assert "| pooled Dice | 77.12 % | 76.51 % | +0.61 | -0.83 to +2.95 |" in printed
    assert "per patient (pooled Dice): per-image better on 13, worse on 9, the same on 1" in printed


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(UserError, match="missing.csv: no such file"):
        main([str(tmp_path / "missing.csv"), str(tmp_path / "missing.csv")])
    (tmp_path / "per_image.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="per_image.csv: not a readable CSV"):
        main([str(tmp_path), str(tmp_path)])  # a folder means its per_image.csv


def test_the_table_prints_hd95_in_pixels_and_the_rest_in_percent():
    table = _per_image(_dices())
    text = format_comparison(compare(table, table), ("x", "y"))
    assert "| HD95 (px, lower is better) |" in text and "| pooled Dice |" in text
    assert "40 slices of 8 patients" in text
