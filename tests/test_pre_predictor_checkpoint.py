"""A checkpoint written before the shared predictor (tests/data/pre_predictor.ckpt, see tests/data/README.md)
still loads, predicts, evaluates and exports exactly as it did."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lightning_bts.data.records import read_image
from lightning_bts.evaluation import Predictor, evaluate_checkpoints, predict_cli
from lightning_bts.evaluation.export import export_checkpoint
from lightning_bts.evaluation.predictor import prepare_image
from lightning_bts.evaluation.settings import STORED_KEY
from lightning_bts.training.checkpoints import Preprocessing, read_checkpoint
from tests.conftest import REPO, SAMPLE_ROOT

CHECKPOINT = REPO / "tests" / "data" / "pre_predictor.ckpt"
# Measured with the code of commit 3ac2b60 (lightning_bts.inference.Predictor, lightning_bts.evaluation).
KEYS = ("0006", "0895", "1491")
MEAN_PROBABILITY = (0.01897311955690384, 0.04089771956205368, 0.035538461059331894)
MAX_PROBABILITY = (0.16451790928840637, 0.1827288717031479, 0.1685177981853485)
GRID_METRICS_AT_0_1 = {"dice": 0.10022050887346268, "iou": 0.0527537576854229, "precision": 0.05437903851270676,
                       "recall": 0.6383426785469055, "hd95": 11.821416854858398}
GRID_DICE_PER_IMAGE_AT_0_1 = 0.10435184836387634


def test_an_old_checkpoint_predicts_as_it_did():
    assert STORED_KEY not in read_checkpoint(CHECKPOINT)  # written before post-processing was stored
    predictor = Predictor.from_checkpoints([CHECKPOINT])
    assert predictor.preprocessing == Preprocessing(32, 3, "safe")
    assert predictor.settings_source == "default" and predictor.postprocessing.threshold == 0.5
    images = np.stack([prepare_image(read_image(SAMPLE_ROOT / "images" / f"{key}.png"), predictor.preprocessing)
                       for key in KEYS])
    probabilities = predictor.probabilities(images)
    np.testing.assert_allclose(probabilities.mean(axis=(1, 2)), MEAN_PROBABILITY, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probabilities.max(axis=(1, 2)), MAX_PROBABILITY, rtol=1e-5, atol=1e-7)


def test_an_old_checkpoint_evaluates_as_it_did_at_the_model_grid():
    evaluation = evaluate_checkpoints([CHECKPOINT], data_root=SAMPLE_ROOT, device="cpu", threshold=0.1)
    grid = evaluation.metrics["model_grid"]
    assert evaluation.metrics["n_images"] == 129
    for name, value in GRID_METRICS_AT_0_1.items():
        assert grid[name] == pytest.approx(value, rel=1e-5), name
    assert grid["per_image"]["dice"] == pytest.approx(GRID_DICE_PER_IMAGE_AT_0_1, rel=1e-5)
    assert 0 < evaluation.metrics["dice"] < 1 and evaluation.metrics["resolution"] == "native"


def test_an_old_checkpoint_predicts_files_and_exports(tmp_path):
    out = tmp_path / "predicted"
    inputs = [str(SAMPLE_ROOT / "images" / f"{key}.png") for key in KEYS]
    assert predict_cli.main(["--ckpt", str(CHECKPOINT), "--input", *inputs, "--output", str(out), "--threshold",
                             "0.1", "--device", "cpu", "--quiet"]) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{key}.png" for key in KEYS]
    report = export_checkpoint(CHECKPOINT, tmp_path / "old.pt", samples=inputs, num_samples=3)
    assert report.max_abs_diff <= 1e-4
    files = {"lightning_bts.json": ""}
    torch.jit.load(str(report.path), map_location="cpu", _extra_files=files)
    assert json.loads(files["lightning_bts.json"])["threshold"] == "0.5"
