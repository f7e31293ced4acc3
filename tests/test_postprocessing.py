"""Post-processing rules on hand-made maps, and their selection on validation data (kept only when they help)."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from lightning_bts.errors import ConfigError
from lightning_bts.evaluation import PostProcessing, Predictor, evaluate_checkpoints, select_cli
from lightning_bts.evaluation.postprocess import most_probable_component
from lightning_bts.evaluation.selection import (
    FALLBACKS,
    MIN_AREAS,
    THRESHOLDS,
    Candidate,
    SliceCounter,
    candidate_grid,
    choose,
    validation_dice,
)
from lightning_bts.evaluation.settings import STORED_KEY, InferenceSettings, add_override_arguments, store_settings
from lightning_bts.evaluation.tta import TTA_MODES
from lightning_bts.training.checkpoints import (
    CheckpointError,
    Preprocessing,
    read_checkpoint,
    write_checkpoint_entry,
)
from tests.test_inference import trained_checkpoint
from tests.test_predictor import Oracle, oracle_data


def blobs(shape=(20, 20), spots=()) -> np.ndarray:
    """float32 probability map: 0.05 everywhere, and each (row, col, height, width, probability) spot."""
    probability = np.full(shape, 0.05, np.float32)
    for row, col, height, width, value in spots:
        probability[row:row + height, col:col + width] = value
    return probability


def test_the_default_is_the_papers_threshold():
    rule = PostProcessing()
    assert (rule.threshold, rule.components, rule.min_area, rule.empty_fallback) == (0.5, "all", 0.0, None)
    probability = np.random.default_rng(0).random((17, 23)).astype(np.float32)
    np.testing.assert_array_equal(rule.apply(probability), probability > 0.5)
    assert PostProcessing.parse("paper") == rule and rule.describe() == "threshold 0.5"


def test_threshold_and_components():
    probability = blobs(spots=[(1, 1, 3, 3, 0.9), (10, 10, 4, 5, 0.7), (16, 1, 1, 2, 0.6), (16, 16, 2, 2, 0.45)])
    assert PostProcessing().apply(probability).sum() == 9 + 20 + 2
    assert PostProcessing(threshold=0.4).apply(probability).sum() == 9 + 20 + 2 + 4
    largest = PostProcessing(components="largest").apply(probability)
    np.testing.assert_array_equal(largest, blobs(spots=[(10, 10, 4, 5, 1.0)]) > 0.5)
    # drop_small: the area is a fraction of the slice, so the rule means the same at any size
    rule = PostProcessing(components="drop_small", min_area=5 / 400)  # keep components of at least 5 of 400 px
    assert rule.apply(probability).sum() == 9 + 20
    bigger = np.kron(probability, np.ones((2, 2), np.float32))  # the same slice at twice the size
    np.testing.assert_array_equal(rule.apply(bigger), np.kron(rule.apply(probability), np.ones((2, 2), bool)))
    # diagonal neighbours are one component (8-connectivity)
    diagonal = blobs(spots=[(2, 2, 1, 1, 0.9), (3, 3, 1, 1, 0.9), (10, 10, 1, 1, 0.9)])
    assert PostProcessing(components="largest").apply(diagonal).sum() == 2


def test_empty_fallback_keeps_the_most_probable_component_of_an_empty_slice():
    probability = blobs(spots=[(1, 1, 3, 3, 0.3), (10, 10, 2, 2, 0.25), (11, 11, 2, 2, 0.35)])
    assert not PostProcessing().apply(probability).any()
    kept = PostProcessing(empty_fallback=0.2).apply(probability)
    assert kept.sum() == 7 and kept[11, 11] and not kept[1, 1]  # the component holding the 0.35 pixel
    np.testing.assert_array_equal(kept, most_probable_component(probability, 0.2))
    assert not PostProcessing(empty_fallback=0.4).apply(probability).any()  # nothing above 0.4
    predicted = blobs(spots=[(1, 1, 3, 3, 0.9), (11, 11, 2, 2, 0.35)])  # not empty: the fallback does nothing
    np.testing.assert_array_equal(PostProcessing(empty_fallback=0.2).apply(predicted), predicted > 0.5)
    # and it acts after the components rule: everything dropped as too small also counts as empty
    small = PostProcessing(components="drop_small", min_area=0.05, empty_fallback=0.5).apply(predicted)
    assert small.sum() == 9


def test_bad_settings_are_config_errors_that_name_the_setting():
    cases = [
        (dict(threshold=1.0), "threshold must be between 0 and 1"),
        (dict(components="biggest"), "unknown post-processing components rule 'biggest'; choose one of all"),
        (dict(min_area=0.01), "min_area=0.01 only applies with components='drop_small'"),
        (dict(components="drop_small"), "needs min_area"),
        (dict(empty_fallback=0.0), "empty_fallback must be a probability"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            PostProcessing(**kwargs)
    assert PostProcessing.parse(" threshold=0.4, components=drop_small ,min_area=0.001,empty_fallback=none") == \
        PostProcessing(0.4, "drop_small", 0.001, None)
    for spec, message in [("largest", "expected 'paper' or key=value"), ("threshold=high", "must be a number"),
                          ("size=3", r"unknown post-processing setting\(s\) \['size'\]")]:
        with pytest.raises(ConfigError, match=message):
            PostProcessing.parse(spec)


def test_selection_counts_are_those_of_the_applied_masks():
    rng = np.random.default_rng(1)
    grid = candidate_grid()
    assert len(grid) == len(TTA_MODES) * len(THRESHOLDS) * (2 + len(MIN_AREAS)) * (1 + len(FALLBACKS))
    for _ in range(6):  # smooth random maps: several components per threshold, some slices empty at 0.5
        noise = rng.random((6, 6)).astype(np.float32) * rng.uniform(0.3, 1.0)
        probability = np.kron(noise, np.ones((8, 8), np.float32))
        probability += rng.normal(0, 0.02, probability.shape).astype(np.float32)
        truth = np.kron(rng.random((6, 6)) > 0.7, np.ones((8, 8), bool))
        counter = SliceCounter(probability, truth)
        for candidate in grid[:len(grid) // len(TTA_MODES)]:  # the rules, each once
            mask = candidate.rule.apply(probability)
            tp = int((mask & truth).sum())
            assert counter.counts(candidate.rule) == (tp, int(mask.sum()) - tp, int(truth.sum()) - tp), candidate


def test_a_stage_changes_the_choice_only_when_it_raises_validation_dice():
    baseline = Candidate("none", PostProcessing())
    flat = {candidate: 0.60 for candidate in candidate_grid()}
    chosen, stages = choose(flat)
    assert chosen == baseline and not any(stage["kept"] for stage in stages)  # ties keep the paper's rule

    largest = Candidate("none", PostProcessing(components="largest"))
    helped = {**flat, largest: 0.65, Candidate("flip", PostProcessing()): 0.59}
    chosen, stages = choose(helped)
    assert chosen == largest and [s["kept"] for s in stages] == [False, False, True, False]
    assert choose(helped, min_gain=0.06)[0] == baseline  # a gain below min_gain is not worth a rule

    # stages build on each other: with TTA kept, the threshold is chosen for TTA predictions
    tta_04 = Candidate("flip", PostProcessing(threshold=0.4))
    staged = {**flat, Candidate("flip", PostProcessing()): 0.62, tta_04: 0.63,
              Candidate("none", PostProcessing(0.4)): 0.7}  # better, but not on the path the stages take
    assert choose(staged)[0] == tta_04

    # the TTA stage weighs none, flip and mirror; of equally good modes the simpler stays
    flip, mirror = Candidate("flip", PostProcessing()), Candidate("mirror", PostProcessing())
    tta_stage = choose({**flat, flip: 0.61, mirror: 0.62})[1][0]
    assert [c["setting"] for c in tta_stage["candidates"]] == [c.describe() for c in (baseline, flip, mirror)]
    assert choose({**flat, flip: 0.61, mirror: 0.62})[0] == mirror
    assert choose({**flat, flip: 0.61, mirror: 0.61})[0] == flip


def test_selection_on_validation_keeps_a_components_rule_only_where_it_helps(tmp_path):
    datamodule = oracle_data(tmp_path, size=128, image_size=64)
    preprocessing = Preprocessing(64, 3, "safe")
    for spurious, expect_rule in ((0, False), (3, True)):  # a 3x3 false tumour in a corner of every slice
        predictor = Predictor([Oracle(datamodule, spurious)], preprocessing)
        dice, n_images = validation_dice([(predictor, datamodule)])
        chosen, stages = choose(dice)
        assert n_images == len(datamodule.indices("val"))
        components = stages[2]
        assert components["kept"] is expect_rule, components
        assert (chosen.rule.components != "all") is expect_rule
        baseline = dice[Candidate("none", PostProcessing())]
        assert dice[chosen] > baseline if expect_rule else dice[chosen] >= baseline


def test_selection_without_tta_never_runs_or_chooses_flipped_inference(tmp_path, monkeypatch):
    datamodule = oracle_data(tmp_path, size=128, image_size=64)
    predictor = Predictor([Oracle(datamodule, 3)], Preprocessing(64, 3, "safe"))
    with_tta, _ = validation_dice([(predictor, datamodule)])
    plain_view = Predictor._probability
    monkeypatch.setattr(Predictor, "_probability", lambda self, model, batch, dims: pytest.fail("TTA computed")
                        if dims else plain_view(self, model, batch, dims))
    without, _ = validation_dice([(predictor, datamodule)], allow_tta=False)
    assert set(without) == {c for c in with_tta if c.tta == "none"} and all(with_tta[c] == without[c] for c in without)
    chosen, stages = choose(without, allow_tta=False)
    assert chosen.tta == "none" and [s["stage"] for s in stages] == ["threshold", "components", "empty_fallback"]
    assert chosen == choose({**with_tta, **{c: -1.0 for c in with_tta if c.tta != "none"}})[0]  # = TTA ruled out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory)


def test_the_script_stores_its_choice_in_the_checkpoint_and_evaluation_applies_it(trained, tmp_path, capsys):
    source, _ = trained
    checkpoint = tmp_path / "copy.ckpt"
    shutil.copy(source, checkpoint)
    before = read_checkpoint(checkpoint)
    selection = select_cli.main(["--ckpt", str(checkpoint), "--device", "cpu", "--dry-run"])
    assert STORED_KEY not in read_checkpoint(checkpoint) and "dry run: nothing stored" in capsys.readouterr().out

    selection = select_cli.main(["--ckpt", str(checkpoint), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "stored in 1 checkpoint(s)" in printed and "threshold:" in printed
    after = read_checkpoint(checkpoint)
    stored = after[STORED_KEY]
    assert PostProcessing.from_dict(stored["postprocessing"]) == selection.settings.postprocessing
    assert stored["selection"]["folds"] == [0] and stored["selection"]["part"] == "val"
    assert json.loads(json.dumps(stored)) == stored  # plain data
    for key in before["state_dict"]:  # the weights are untouched
        assert torch.equal(before["state_dict"][key], after["state_dict"][key])

    evaluation = evaluate_checkpoints([checkpoint], device="cpu")  # the same validation slices
    assert evaluation.metrics["settings_source"] == "checkpoint"
    assert evaluation.metrics["dice"] == pytest.approx(selection.dice, abs=1e-9)
    assert evaluation.metrics["dice"] >= selection.baseline_dice and "optimistic" in evaluation.metrics["note"]


def test_selection_needs_a_validation_part_and_an_ensemble_agreeing_on_its_choice(trained, tmp_path):
    source, root = trained
    no_fold = tmp_path / "no_fold.ckpt"
    checkpoint = read_checkpoint(source)
    checkpoint["datamodule_hyper_parameters"]["fold"] = None
    torch.save(checkpoint, no_fold)
    with pytest.raises(CheckpointError, match="records no training fold: it has no 'val' part"):
        select_cli.main(["--ckpt", str(no_fold), "--device", "cpu"])
    chosen = tmp_path / "chosen.ckpt"
    shutil.copy(source, chosen)
    store_settings([chosen], InferenceSettings(PostProcessing(threshold=0.3)), {})
    with pytest.raises(CheckpointError, match="ensemble members store different post-processing"):
        Predictor.from_checkpoints([chosen, source])
    both = Predictor.from_checkpoints([chosen, source], postprocessing=PostProcessing(), tta=False)
    assert both.settings_source == "command line"  # a full override needs no agreement


def test_tta_modes_stored_before_they_existed_and_given_on_the_command_line(trained, tmp_path):
    source, _ = trained
    older = tmp_path / "older.ckpt"
    shutil.copy(source, older)
    for stored, mode in ((True, "flip"), (False, "none"), ("mirror", "mirror")):  # older files hold true/false
        write_checkpoint_entry(older, STORED_KEY, {"postprocessing": PostProcessing().as_dict(), "tta": stored})
        assert Predictor.from_checkpoints([older]).tta == mode
    write_checkpoint_entry(older, STORED_KEY, {"postprocessing": PostProcessing().as_dict(), "tta": "sideways"})
    with pytest.raises(CheckpointError, match=f"checkpoint {older}: unreadable stored post-processing.*sideways"):
        Predictor.from_checkpoints([older])
    with pytest.raises(ConfigError, match="TTA mode 'sideways' is unknown; choose one of none, flip, mirror"):
        Predictor.from_checkpoints([source], tta="sideways")

    parser = argparse.ArgumentParser()
    add_override_arguments(parser)
    given = {(): None, ("--tta",): "flip", ("--tta", "mirror"): "mirror", ("--tta", "none"): "none",
             ("--no-tta",): "none"}
    assert {args: parser.parse_args(list(args)).tta for args in given} == given
    with pytest.raises(SystemExit):
        parser.parse_args(["--tta", "sideways"])
