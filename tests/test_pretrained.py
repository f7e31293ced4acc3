"""The shipped model: predict.py uses it without --ckpt, it is a release checkpoint, and its card tells the truth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_bts import pretrained
from lightning_bts.data.records import read_image
from lightning_bts.errors import UserError
from lightning_bts.evaluation.predict_cli import main as predict_main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
TEST_METRICS = REPO / "reports" / "best_recipe" / "mirror_test" / "metrics.json"  # the shipped model's


def test_the_shipped_checkpoint_is_a_small_release_with_its_post_processing():
    checkpoint = torch.load(pretrained.DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)
    assert not {"optimizer_states", "loops", "callbacks"} & set(checkpoint)
    assert checkpoint["release"]["weights_dtype"] in ("float16", "bfloat16", "float32")
    assert "postprocessing" in checkpoint, "the post-processing chosen on validation travels with the weights"
    assert checkpoint["datamodule_hyper_parameters"]["image_size"] == 128
    assert pretrained.DEFAULT_CHECKPOINT.stat().st_size < 10 * 2**20


def test_predict_without_ckpt_segments_with_the_shipped_model(tmp_path, capsys):
    """A functional check that the shipped weights are a trained model, not a measure of quality: the sample's
    patients may be among its training patients. Its quality on unseen patients is in the model card."""
    names = pd.read_csv(SAMPLE / "metadata.csv").query("tumor_pixels > 0")["image"].head(12)
    inputs = [str(SAMPLE / name) for name in names]
    assert predict_main(["--input", *inputs, "--output", str(tmp_path / "out"), "--quiet"]) == 0
    assert f"checkpoint {pretrained.DEFAULT_CHECKPOINT}" in capsys.readouterr().out
    overlap = truth_total = predicted_total = 0
    for name in names:
        truth = _mask(SAMPLE / name.replace("images/", "masks/"))
        predicted = _mask(tmp_path / "out" / "masks" / Path(name).name)
        assert predicted.shape == truth.shape  # at the input's own size (256x256 here)
        overlap += int((truth & predicted).sum())
        truth_total, predicted_total = truth_total + int(truth.sum()), predicted_total + int(predicted.sum())
    assert 2 * overlap / (truth_total + predicted_total) > 0.5  # an untrained network scores near 0


def test_a_missing_shipped_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "DEFAULT_CHECKPOINT", tmp_path / "absent.ckpt")
    with pytest.raises(UserError, match="absent.ckpt is not installed; pass --ckpt"):
        pretrained.default_checkpoint()


def test_the_model_card_states_the_measured_test_scores_and_the_licence():
    card = pretrained.MODEL_CARD.read_text()
    metrics = json.loads(TEST_METRICS.read_text())
    assert f"{100 * metrics['dice']:.1f}" in card and f"{100 * metrics['per_image']['dice']:.1f}" in card
    assert "CC BY 4.0" in card and "10.6084/m9.figshare.1512427" in card
    assert re.search(r"not a medical device", card, re.IGNORECASE)


def _mask(path: Path) -> np.ndarray:
    image = read_image(path)
    return (image[..., 0] if image.ndim == 3 else image) > 0
