"""Cross-validation runner and report: 2 folds x 2 losses x 2 short epochs on the sample at 32x32 (the module
fixture trains 4 runs: those tests are in the full suite, not the fast tier)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from pytorch_lightning import Callback, seed_everything

from lightning_bts.data import load_records
from lightning_bts.experiments import cv
from lightning_bts.experiments.report import build_report
from lightning_bts.training.module import SegmentationModule
from tests.conftest import REPO, SAMPLE_ROOT

TRAIN_ARGS = [
    "--config", str(REPO / "configs" / "quick_cpu.yaml"), "--data.root", str(SAMPLE_ROOT),
    "--data.image_size", "32", "--data.num_workers", "0", "--trainer.max_epochs", "2",
    "--trainer.limit_train_batches", "1", "--trainer.num_sanity_val_steps", "0",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--model.base_filters", "4", "--data.batch_size", "32",  # small and few calls: mechanics, not accuracy
    "--precision", "32-true",  # the logged val/* are then comparable with the fp32 evaluation
    "--data.neighbour_slices", "true",  # a data option that reaches every fold, its evaluation and the report
]


class InitialWeights(Callback):
    """Records each run's weights as training starts, and its loss."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int, dict[str, torch.Tensor]]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.runs.append((pl_module.hparams.loss, trainer.datamodule.hparams.fold, state))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "results"
    weights = InitialWeights()
    records = cv.run_cv(TRAIN_ARGS, out, num_folds=2, callbacks=[weights])
    return out, records, weights


@pytest.mark.slow
def test_every_fold_and_loss_ran_and_wrote_its_results(experiment):
    out, records, _ = experiment
    assert [(r["fold"], r["loss"]) for r in records] == [(0, "focal"), (0, "bce"), (1, "focal"), (1, "bce")]
    assert not any(r["skipped"] for r in records)
    folds = pd.read_csv(out / "folds.csv")
    assert len(folds) == 4 and set(folds["loss"]) == {"focal", "bce"}
    per_image = pd.read_csv(out / "per_image.csv", dtype={"key": str})
    assert list(per_image.columns[:13]) == ["key", "patient_group", "tumor_type", "dice", "iou", "precision",
                                            "recall", "accuracy", "specificity", "hd", "hd95", "tumor_pixels",
                                            "predicted_pixels"]
    assert len(per_image) == 2 * 129  # every sample slice validated once per loss
    curves = pd.read_csv(out / "curves.csv")
    assert sorted(curves["epoch"].unique()) == [0, 1] and {"train/loss", "val/dice"} <= set(curves.columns)
    assert (out / ".gitignore").read_text().count("runs/") == 1


@pytest.mark.slow
def test_no_patient_group_in_two_folds_and_same_folds_for_every_loss(experiment):
    out, records, _ = experiment
    group_of = load_records(SAMPLE_ROOT).set_index("key")["patient_group"]
    for loss in ("focal", "bce"):
        val_groups = [set(r["val_groups"]) for r in records if r["loss"] == loss]
        assert not val_groups[0] & val_groups[1]
        assert val_groups[0] | val_groups[1] == set(group_of)
    for fold in (0, 1):
        splits = [json.loads((out / "runs" / f"{loss}_fold{fold}" / "cv" / "splits.json").read_text())
                  for loss in ("focal", "bce")]
        assert splits[0] == splits[1]  # the same folds for both losses: a paired comparison
        train_groups, val_groups = set(group_of[splits[0]["train"]]), set(group_of[splits[0]["val"]])
        assert not train_groups & val_groups  # no patient in training and validation of one fold


@pytest.mark.slow
def test_every_run_starts_from_the_same_fresh_seeded_weights(experiment):
    out, _, weights = experiment
    assert [(loss, fold) for loss, fold, _ in weights.runs] == [("focal", 0), ("bce", 0), ("focal", 1), ("bce", 1)]
    checkpoint = torch.load(out / "runs" / "bce_fold1" / "cv" / "checkpoints" / "final.ckpt", weights_only=False)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    seed_everything(42)
    fresh = SegmentationModule(**hparams).state_dict()
    for _, _, state in weights.runs:
        assert state.keys() == fresh.keys()
        assert all(torch.equal(state[k], fresh[k]) for k in fresh)
    trained = checkpoint["state_dict"]  # and training did move the weights, so the equality is not vacuous
    assert not all(torch.equal(trained[k].cpu(), fresh[k]) for k in fresh)


@pytest.mark.slow
def test_fold_metrics_are_those_of_the_last_epoch(experiment):
    _, records, _ = experiment
    for record in records:
        logged, evaluated = record["logged_last_epoch"], record["metrics"]
        grid = evaluated["model_grid"]  # training logs at the model's grid; the top level is at 256x256
        for name in ("dice", "iou", "precision", "recall", "accuracy", "specificity", "hd", "hd95"):
            assert grid[name] == pytest.approx(logged[f"val/{name}"], rel=1e-5, abs=1e-6), (record["run"], name)
        assert grid["per_image"]["dice"] == pytest.approx(logged["val/dice_per_image"], rel=1e-5, abs=1e-6)
        assert evaluated["resolution"] == "native" and evaluated["hd"] > grid["hd"]
        assert record["checkpoint"].endswith("final.ckpt")
        assert record["config"]["image_size"] == 32 and record["config"]["precision"] == "32-true"


@pytest.mark.slow
def test_resume_skips_finished_runs_and_reruns_unfinished_ones(experiment, monkeypatch):
    out, _, _ = experiment
    calls = []

    class Stop(Exception):
        pass

    def fake_train(config, callbacks=()):
        calls.append(config)
        raise Stop

    monkeypatch.setattr(cv, "train", fake_train)
    again = cv.run_cv(TRAIN_ARGS, out, num_folds=2)
    assert calls == [] and all(r["skipped"] for r in again)

    finished = cv.result_path(out, "focal", 1)
    saved = finished.read_bytes()
    finished.unlink()
    try:
        with pytest.raises(Stop):
            cv.run_cv(TRAIN_ARGS, out, num_folds=2)
        assert len(calls) == 1  # fold 0 (both losses) skipped, then focal_fold1 re-run
        config = calls[0]
        assert config.data.fold == 1 and config.model.loss == "focal"
        assert config.data.cache_dir == str(out / "cache")
        assert not (out / "runs" / "focal_fold1" / "cv").exists()  # the unfinished attempt starts over
    finally:
        finished.write_bytes(saved)


@pytest.mark.slow
def test_bad_arguments_and_another_experiment_are_refused(experiment, tmp_path):
    out, _, _ = experiment
    with pytest.raises(cv.CVError, match="--data.fold is set by the cross-validation runner"):
        cv.run_cv([*TRAIN_ARGS, "--data.fold", "1"], tmp_path / "x")
    with pytest.raises(cv.CVError, match="different experiment"):
        cv.run_cv([*TRAIN_ARGS, "--model.lr", "0.01"], out, num_folds=2)
    with pytest.raises(cv.CVError, match="out of range"):
        cv.run_cv(TRAIN_ARGS, tmp_path / "y", num_folds=2, folds=[2])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_command_line_forwards_unknown_arguments_in_order():
    args, forwarded = cv.parse_args(["--out", "o", "--config", "a.yaml", "--trainer.max_epochs", "3", "--num-folds",
                                     "2", "--data.image_size=64"])
    assert args.out == "o" and args.num_folds == 2 and args.losses == ["focal", "bce"]
    assert forwarded == ["--config", "a.yaml", "--trainer.max_epochs", "3", "--data.image_size=64"]


@pytest.mark.slow
def test_report(experiment, tmp_path):
    source, _, _ = experiment
    out = tmp_path / "copy"
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("runs", "cache"))  # the report needs no checkpoint
    report = build_report(out)
    text = report.read_text()
    for expected in ("## Protocol", "32x32", "81.00", "74.52", "Wilcoxon signed-rank", "paired t-test",
                     "no leakage across folds", "every loss validated on the same slices in each fold: yes",
                     "![gallery](gallery.png)", "3 channels (the slices before, at and after",
                     "`input_norm` scale"):
        assert expected in text, expected
    summary = pd.read_csv(out / "summary.csv")
    focal_dice = summary[(summary["loss"] == "focal") & (summary["metric"] == "dice")].iloc[0]
    folds = pd.read_csv(out / "folds.csv")
    assert focal_dice["mean"] == pytest.approx(folds[folds["loss"] == "focal"]["dice"].mean())
    assert focal_dice["paper"] == pytest.approx(0.81)
    for name in ("curves.png", "dice_by_type.png", "gallery.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(Path(out).glob(".*.tmp"))
