"""Evaluating checkpoints without training: native and model-grid scores, the logged validation metrics
reproduced at the model grid, the held-out test part, ensembles, bad input."""

from __future__ import annotations

import json
import shutil

import cv2
import pandas as pd
import pytest
import torch

from lightning_bts.data import DatasetError, load_records
from lightning_bts.evaluation import Predictor, evaluate, evaluate_checkpoints, format_table
from lightning_bts.evaluation.bootstrap import confidence_intervals
from lightning_bts.evaluation.data import evaluation_data
from lightning_bts.evaluation.evaluate_cli import main
from lightning_bts.training.checkpoints import CheckpointError
from lightning_bts.training.config import parse_config
from lightning_bts.training.train import train
from tests.conftest import REPO, SAMPLE_ROOT, write_dataset

RATIOS = ("dice", "iou", "precision", "recall", "accuracy", "specificity")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short fp32 run on fold 0 of a 2-fold split of the sample (fp32: the logged metrics are exact)."""
    out = tmp_path_factory.mktemp("evaluation")
    result = train(parse_config([
        "--config", str(REPO / "configs" / "quick_cpu.yaml"), "--data.root", str(SAMPLE_ROOT),
        "--data.image_size", "32", "--data.num_folds", "2", "--data.num_workers", "0", "--data.batch_size", "32",
        "--data.cache_dir", str(out / "cache"), "--model.base_filters", "4", "--model.lr", "0.01",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--precision", "32-true", "--output_dir", str(out / "runs"), "--run_name", "r", "--version", "v",
        "--preview_slices", "0",
    ]))
    return out, result


def _edited_checkpoint(source, target, edit):
    checkpoint = torch.load(source, weights_only=False)
    edit(checkpoint)
    torch.save(checkpoint, target)
    return target


def test_evaluate_script_reproduces_the_logged_validation_metrics_at_the_model_grid(trained, tmp_path, capsys):
    _, result = trained
    out = main(["--ckpt", str(result.last_checkpoint), "--out", str(tmp_path / "eval"), "--device", "cpu"])
    written = json.loads((out / "metrics.json").read_text())
    logs = pd.read_csv(result.log_dir / "metrics.csv")
    last = logs.dropna(subset=["val/dice"]).iloc[-1]
    grid = written["model_grid"]
    for name in (*RATIOS, "hd", "hd95"):
        assert grid[name] == pytest.approx(last[f"val/{name}"], rel=1e-5, abs=1e-6), name
    for name in RATIOS:
        assert grid["per_image"][name] == pytest.approx(last[f"val/{name}_per_image"], rel=1e-5, abs=1e-6), name
    assert 0 < written["accuracy"] < 1 and written["n_images"] == 67 and written["part"] == "val"
    printed = capsys.readouterr().out
    assert format_table(written) in printed  # what is printed is what was written

    # the layout: native scores at the top level, the model grid's under model_grid, and what was applied
    assert written["resolution"] == "native" and grid["resolution"] == "32x32"
    assert written["hd_units"] == "pixels of the original slices" and grid["hd_units"] == "pixels of the model grid"
    assert set(RATIOS) | {"hd", "hd95", "hd_empty", "per_image"} <= set(written) & set(grid)
    assert written["postprocessing"] == {"threshold": 0.5, "components": "all", "min_area": 0.0,
                                         "empty_fallback": None}
    assert written["tta"] == "none" and written["settings_source"] == "default" and "note" not in written
    assert written["hd"] > grid["hd"]  # pixels of 256x256 slices vs of the 32x32 grid: not the same numbers

    per_image = pd.read_csv(out / "per_image.csv", dtype={"key": str, "patient_group": str})
    assert len(per_image) == 67 and per_image["key"].str.len().eq(4).all()
    assert (per_image["height"] == 256).all() and (per_image["width"] == 256).all()
    assert per_image["dice"].mean() == pytest.approx(written["per_image"]["dice"], abs=1e-6)
    assert per_image["model_grid_dice"].mean() == pytest.approx(grid["per_image"]["dice"], abs=1e-6)
    assert per_image["hd95"].mean() == pytest.approx(written["hd95"], rel=1e-5)
    records = load_records(SAMPLE_ROOT).set_index("key")  # native tumour pixels are the mask files' own
    expected = [int((cv2.imread(records.loc[key, "mask_path"], cv2.IMREAD_GRAYSCALE) > 0).sum())
                for key in per_image["key"]]
    assert per_image["tumor_pixels"].tolist() == expected
    assert (per_image["tp"] + per_image["fn"]).tolist() == expected
    assert (per_image["tp"] + per_image["fp"]).tolist() == per_image["predicted_pixels"].tolist()

    # 95 % intervals of the native scores, from a bootstrap over the validation patients
    n_patients = per_image["patient_group"].nunique()
    assert set(written["ci95"]) == {"dice", "dice_per_image", "precision", "recall", "hd95"}
    assert written["ci_method"] == f"bootstrap over {n_patients} patients, 2000 resamples, percentile, seed 0"
    for name, value in [("dice", written["dice"]), ("dice_per_image", written["per_image"]["dice"])]:
        low, high = written["ci95"][name]
        assert low <= value <= high, name
    assert "95% CI" in printed and "ci95" not in grid
    assert confidence_intervals(per_image)["ci95"] == written["ci95"]  # per_image.csv is enough to redo it
    assert not list(tmp_path.glob(".*.tmp"))


def test_held_out_test_part(trained, tmp_path):
    _, result = trained
    with pytest.raises(CheckpointError, match="without a held-out test part"):
        main(["--ckpt", str(result.last_checkpoint), "--part", "test", "--out", str(tmp_path / "none")])
    held_out = _edited_checkpoint(result.last_checkpoint, tmp_path / "held_out.ckpt",
                                  lambda c: c["datamodule_hyper_parameters"].update(test_fraction=0.2))
    out = main(["--ckpt", str(held_out), "--part", "test", "--out", str(tmp_path / "test"), "--device", "cpu"])
    written = json.loads((out / "metrics.json").read_text())
    predictor = Predictor.from_checkpoints([held_out])
    datamodule, _ = evaluation_data(predictor.sources, part="test")
    split = datamodule.split
    assert written["part"] == "test" and written["n_images"] == len(split.test) > 0
    groups = load_records(SAMPLE_ROOT).set_index("key")["patient_group"]
    assert not set(groups[split.test]) & set(groups[[*split.train, *split.val]])  # patients nothing else saw
    per_image = pd.read_csv(out / "per_image.csv", dtype={"key": str})
    assert sorted(per_image["key"]) == sorted(split.test)


def test_threshold_on_another_dataset(trained):
    _, result = trained
    single = evaluate_checkpoints([result.last_checkpoint], data_root=SAMPLE_ROOT, device="cpu", bootstrap=0)
    assert single.metrics["n_images"] == 129 and single.metrics["part"] == "all"
    strict = evaluate_checkpoints([result.last_checkpoint], data_root=SAMPLE_ROOT, device="cpu", threshold=0.9,
                                  bootstrap=0)
    # the threshold is applied: fewer pixels pass 0.9 than 0.5 (equal counts would also pass a "<=")
    assert strict.per_image["predicted_pixels"].sum() < single.per_image["predicted_pixels"].sum()
    assert strict.metrics["threshold"] == 0.9 and single.metrics["threshold"] == 0.5


@pytest.mark.slow  # seven evaluations of the sample (about 8 s)
def test_ensembles_and_the_in_process_form(trained, tmp_path):
    _, result = trained
    single = evaluate_checkpoints([result.last_checkpoint], data_root=SAMPLE_ROOT, device="cpu")
    twice = evaluate_checkpoints([result.last_checkpoint] * 2, data_root=SAMPLE_ROOT, device="cpu")
    assert twice.metrics["ensemble_size"] == 2
    for name in RATIOS:  # the mean probability of identical members is the member's probability
        assert twice.metrics[name] == pytest.approx(single.metrics[name], abs=1e-6)

    predictor = Predictor.from_checkpoints([result.last_checkpoint])
    datamodule, part = evaluation_data(predictor.sources)
    direct = evaluate(predictor, datamodule, part)  # the in-process form
    assert part == "val" and direct.metrics["dice"] == pytest.approx(
        evaluate_checkpoints([result.last_checkpoint], device="cpu").metrics["dice"])

    other_fold = _edited_checkpoint(result.last_checkpoint, tmp_path / "fold1.ckpt",
                                    lambda c: c["datamodule_hyper_parameters"].update(fold=1))
    with pytest.raises(CheckpointError, match="share no 'val' part"):
        evaluate_checkpoints([result.last_checkpoint, other_fold], device="cpu")
    other_split = _edited_checkpoint(result.last_checkpoint, tmp_path / "seed7.ckpt",
                                     lambda c: c["datamodule_hyper_parameters"].update(fold=1, seed=7))
    with pytest.raises(CheckpointError, match="share no held-out test part"):
        evaluate_checkpoints([result.last_checkpoint, other_split], part="test", device="cpu")
    ensemble = evaluate_checkpoints([result.last_checkpoint, other_fold], data_root=SAMPLE_ROOT, device="cpu")
    assert ensemble.metrics["n_images"] == 129


def test_split_that_changed_since_training_is_refused(trained, tmp_path):
    _, result = trained
    assert (result.last_checkpoint.parent.parent / "splits.json").is_file()  # what every evaluation checks
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = run / "checkpoints" / "last.ckpt"
    shutil.copy(result.last_checkpoint, checkpoint)
    split = json.loads((result.log_dir / "splits.json").read_text())
    split["val"] = split["val"][1:]  # as if the dataset had lost a slice since training
    (run / "splits.json").write_text(json.dumps(split))
    with pytest.raises(CheckpointError, match="differs from its run's .*splits.json \\(1 slice\\(s\\) differ\\)"):
        evaluate_checkpoints([checkpoint], device="cpu")


def test_checkpoint_of_another_architecture_is_refused(trained, tmp_path):
    _, result = trained
    wider = _edited_checkpoint(result.last_checkpoint, tmp_path / "wider.ckpt",
                               lambda c: c["hyper_parameters"].update(base_filters=8))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3, 3)}, "hyper_parameters": {"hidden_size": 3},
                "datamodule_hyper_parameters": {"root": str(SAMPLE_ROOT)}}, foreign)
    resized = _edited_checkpoint(result.last_checkpoint, tmp_path / "resized.ckpt",
                                 lambda c: c["datamodule_hyper_parameters"].update(image_size=64))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    cases = [
        ([wider], "weight shapes do not match the architecture"),
        ([foreign], "is not a SegmentationModule checkpoint"),
        ([garbage], "cannot be loaded as a PyTorch checkpoint"),
        ([result.last_checkpoint, resized], "trained on other preprocessing"),
    ]
    for paths, message in cases:
        with pytest.raises(CheckpointError, match=message):
            main(["--ckpt", *map(str, paths), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert not (tmp_path / "out").exists()


def test_missing_fold_checkpoint_is_refused_before_anything_is_written(trained, tmp_path):
    _, result = trained
    missing = tmp_path / "runs" / "focal_fold3" / "cv" / "checkpoints" / "final.ckpt"
    with pytest.raises(CheckpointError, match=f"checkpoint {missing} does not exist"):
        main(["--ckpt", str(result.last_checkpoint), str(missing), "--data-root", str(SAMPLE_ROOT),
              "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_dataset_without_masks_is_refused(trained, tmp_path):
    _, result = trained
    root = write_dataset(tmp_path / "no_masks", groups=2, slices_per_group=2, size=32)
    shutil.rmtree(root / "masks")
    with pytest.raises(DatasetError, match="missing"):
        main(["--ckpt", str(result.last_checkpoint), "--data-root", str(root), "--out", str(tmp_path / "out")])
    (root / "metadata.csv").unlink()  # plain folders: images/ without masks/
    with pytest.raises(DatasetError, match="needs images/ and masks/"):
        main(["--ckpt", str(result.last_checkpoint), "--data-root", str(root), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_existing_output_folder_is_updated_file_by_file(trained, tmp_path):
    _, result = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    main(["--ckpt", str(result.last_checkpoint), "--out", str(out), "--device", "cpu", "--save-predictions"])
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "notes.txt", "per_image.csv", "predictions.npz"]
