"""Scores per patient and per tumour type (evaluation.breakdown), on hand-made per-slice counts (no model)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lightning_bts.errors import ConfigError
from lightning_bts.evaluation.breakdown import subgroup_scores
from lightning_bts.evaluation.outputs import format_table


def _slices() -> pd.DataFrame:
    """Patient A: one glioma of 900 tumour pixels, half found (Dice 2*450/(900+900) = 0.5 with 450 false positives);
    patients B and C: small meningiomas found exactly (100 pixels each); D: a pituitary slice missed entirely."""
    return pd.DataFrame({
        "patient_group": ["A", "A", "B", "C", "D"],
        "tumor_type": ["glioma", "glioma", "meningioma", "meningioma", "pituitary"],
        "tp": [300, 150, 100, 100, 0],
        "fp": [200, 250, 0, 0, 0],
        "fn": [300, 150, 0, 0, 50],
    })


def test_each_patient_counts_once_and_the_largest_is_named():
    scores = subgroup_scores(_slices())["by_patient"]
    # pooled per patient: A 900/1800 = 0.5, B 1, C 1, D 0 (a missed tumour)
    assert scores["patients"] == 4
    assert scores["dice_mean"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    assert scores["dice_median"] == pytest.approx(0.75)
    largest = scores["largest"]
    assert largest["patient_group"] == "A" and largest["slices"] == 2
    assert largest["tumor_pixel_share"] == pytest.approx(900 / 1150)
    assert largest["dice"] == pytest.approx(0.5)


def test_the_patient_with_most_errors_is_named_with_its_share_of_the_lost_dice():
    scores = subgroup_scores(_slices())["by_patient"]
    # errors (FP + FN): A 450 + 450, B 0, C 0, D 50; pooled Dice 1300/2250, so 1 - Dice = 950/2250 and A's share
    # of what it loses is 900/950
    worst = scores["most_errors"]
    assert worst["patient_group"] == "A" and worst["slices"] == 2
    assert worst["error_pixel_share"] == pytest.approx(900 / 950)
    assert worst["tumor_pixel_share"] == pytest.approx(900 / 1150)
    assert worst["dice"] == pytest.approx(0.5)
    # a small tumour can lose more than a large one: D's missed slice grows to 1000 pixels of 2000
    table = _slices()
    table.loc[4, "fn"] = 1000
    table = pd.concat([table, pd.DataFrame({"patient_group": ["D"], "tumor_type": ["pituitary"], "tp": [1000],
                                            "fp": [0], "fn": [0]})], ignore_index=True)
    worst = subgroup_scores(table)["by_patient"]["most_errors"]
    assert worst["patient_group"] == "D" and worst["error_pixel_share"] == pytest.approx(1000 / 1900)


def test_no_errors_at_all_gives_a_zero_share():
    table = pd.DataFrame({"patient_group": ["A", "B"], "tp": [10, 5], "fp": [0, 0], "fn": [0, 0]})
    assert subgroup_scores(table)["by_patient"]["most_errors"]["error_pixel_share"] == 0.0


def test_tumour_types_are_pooled_within_each_type():
    types = subgroup_scores(_slices())["by_tumor_type"]
    assert set(types) == {"glioma", "meningioma", "pituitary"}
    glioma = types["glioma"]
    assert glioma["dice"] == pytest.approx(0.5)
    assert glioma["precision"] == pytest.approx(450 / 900) and glioma["recall"] == pytest.approx(450 / 900)
    assert (glioma["slices"], glioma["patients"]) == (2, 1)
    assert types["meningioma"]["dice"] == 1.0 and types["meningioma"]["patients"] == 2
    assert types["pituitary"]["dice"] == 0.0 and types["pituitary"]["recall"] == 0.0
    assert sum(t["tumor_pixel_share"] for t in types.values()) == pytest.approx(1.0)


def test_slices_where_the_tumour_was_not_found_are_counted_with_the_scores_of_the_others():
    missed = subgroup_scores(_slices())["not_found"]
    # slice Dice: A's two 600/1100 and 300/700, B and C 1, D 0 (missed): one slice under 0.1, D's 50 of 1150 pixels
    assert (missed["slices"], missed["slices_with_tumor"]) == (1, 5)
    assert missed["tumor_pixel_share"] == pytest.approx(50 / 1150)
    assert missed["others_dice"] == pytest.approx(2 * 650 / (2 * 650 + 450 + 450))
    assert missed["others_dice_per_slice"] == pytest.approx((6 / 11 + 3 / 7 + 1 + 1) / 4)
    # a mark beside the tumour (Dice 2*5/(2*5+200+95) = 0.033) is not found either; a slice without tumour is
    # neither missed nor counted
    beside = pd.DataFrame({"patient_group": ["E", "F"], "tp": [5, 0], "fp": [200, 30], "fn": [95, 0]})
    missed = subgroup_scores(pd.concat([_slices(), beside], ignore_index=True))["not_found"]
    assert (missed["slices"], missed["slices_with_tumor"]) == (2, 6)


def test_when_no_slice_is_found_the_others_have_no_scores():
    table = pd.DataFrame({"patient_group": ["A", "B"], "tp": [0, 0], "fp": [40, 0], "fn": [10, 20]})
    missed = subgroup_scores(table)["not_found"]
    assert missed["slices"] == 2 and missed["tumor_pixel_share"] == 1.0
    assert missed["others_dice"] is None and missed["others_dice_per_slice"] is None
    json.dumps(missed)
    no_tumour = subgroup_scores(table.assign(fn=[0, 0]))["not_found"]  # only false positives: nothing to find
    assert (no_tumour["slices"], no_tumour["slices_with_tumor"], no_tumour["others_dice"]) == (0, 0, None)


def test_a_patient_without_tumour_or_prediction_scores_one():
    # the zero-denominator rule of lightning_bts.metrics: nothing to find and nothing predicted is perfect
    table = pd.DataFrame({"patient_group": ["A", "E"], "tp": [10, 0], "fp": [0, 0], "fn": [10, 0]})
    scores = subgroup_scores(table)
    assert scores["by_patient"]["dice_mean"] == pytest.approx((2 * 10 / 30 + 1.0) / 2)
    assert "by_tumor_type" not in scores  # no type column


def test_unknown_types_are_left_out_of_the_types():
    table = _slices().assign(tumor_type=["unknown"] * 5)
    assert "by_tumor_type" not in subgroup_scores(table)
    table.loc[0, "tumor_type"] = "glioma"
    assert set(subgroup_scores(table)["by_tumor_type"]) == {"glioma"}


def test_numeric_patient_ids_are_names():
    table = _slices().assign(patient_group=[7, 7, 8, 9, 10])
    largest = subgroup_scores(table)["by_patient"]["largest"]
    assert largest["patient_group"] == "7"
    json.dumps(subgroup_scores(table))  # plain types, ready for metrics.json


def test_bad_input_is_refused_by_name():
    with pytest.raises(ConfigError, match="fn"):
        subgroup_scores(_slices().drop(columns="fn"))
    with pytest.raises(ConfigError, match="at least one"):
        subgroup_scores(_slices().iloc[:0])


def test_the_table_prints_both():
    metrics = {name: 0.5 for name in ("dice", "iou", "precision", "recall", "accuracy", "specificity")}
    metrics.update(per_image=dict(metrics), hd=1.0, hd95=1.0, n_images=5, part="test", threshold=0.5,
                   **subgroup_scores(_slices()))
    table = format_table(metrics)
    assert "per patient: mean Dice 62.50%, median 75.00% over 4 patients; the largest, A (2 slices), holds 78%" in table
    assert ("most of the errors: A (2 slices) holds 95% of the false and missed pixels (what pooled Dice loses) "
            "and 78% of the tumour pixels, Dice 50.00%") in table
    assert "glioma:     Dice 50.00%, precision 50.00%, recall 50.00% (2 slices, 1 patient, 78% of" in table
    assert ("tumour not found (Dice under 0.1) on 1 of 5 slices with tumour (4% of the tumour pixels); the other "
            "slices: pooled Dice 59.09%, per slice 74.35%") in table
