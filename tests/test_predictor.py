"""The one predictor: device choice, precision, native vs model-grid scores, and evaluate and predict agreeing
on the same checkpoint with the post-processing it stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lightning_bts.data import BrainTumorDataModule
from lightning_bts.errors import ConfigError
from lightning_bts.evaluation import (
    InferenceError,
    InferenceSettings,
    PostProcessing,
    Predictor,
    evaluate,
    evaluate_cli,
    predict_cli,
)
from lightning_bts.evaluation.data import evaluation_data
from lightning_bts.evaluation.predictor import resolve_device
from lightning_bts.evaluation.settings import store_settings
from lightning_bts.training.checkpoints import Preprocessing
from tests.conftest import write_dataset
from tests.test_inference import trained_checkpoint


class Oracle(nn.Module):
    """Logits +-10 looked up by image: the model-grid masks of a data module (and of the images mirrored along
    either axis or both), with an optional ``spurious`` square added in a corner of every mask. An unknown image
    fails the test."""

    def __init__(self, datamodule: BrainTumorDataModule, spurious: int = 0) -> None:
        super().__init__()
        self.table: dict[bytes, np.ndarray] = {}
        for image, mask in zip(datamodule.data.images, datamodule.data.masks):
            mask = mask.astype(bool).copy()
            mask[1:1 + spurious, 1:1 + spurious] = True
            chw = np.ascontiguousarray(image.transpose(2, 0, 1))
            for axes in ((), (1,), (0,), (0, 1)):  # mask axes; the image's are one further (C first)
                mirrored = np.flip(chw, axis=tuple(a + 1 for a in axes))
                self.table[np.ascontiguousarray(mirrored).tobytes()] = np.ascontiguousarray(np.flip(mask, axis=axes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        masks = [self.table[image.numpy().tobytes()] for image in images.to(torch.uint8).cpu()]
        return torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)) * 20 - 10


def oracle_data(tmp_path: Path, size: int = 256, image_size: int = 128) -> BrainTumorDataModule:
    root = write_dataset(tmp_path / "data", groups=6, slices_per_group=2, size=size)
    datamodule = BrainTumorDataModule(str(root), image_size=image_size, num_folds=2, fold=0, num_workers=0,
                                      batch_size=4)
    datamodule.load()
    return datamodule


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return trained_checkpoint(tmp_path_factory)


def test_auto_picks_a_present_gpu_and_a_gpu_index_or_mps_beyond_the_machine_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("gpu:0") == torch.device("cuda:0")
    with pytest.raises(InferenceError, match="--device cuda:1: this machine has 1 CUDA GPU"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InferenceError, match="--ckpt-device mps: MPS is not available here; use --ckpt-device cpu"):
        resolve_device("mps", option="--ckpt-device")


def test_device_is_chosen_once_and_a_missing_gpu_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    for name in ("cuda", "gpu", "cuda:0"):
        with pytest.raises(InferenceError, match=f"--device {name}: no CUDA GPU is available here"):
            resolve_device(name)
    with pytest.raises(InferenceError, match="--device 'tpu7' is not a device"):
        resolve_device("tpu7")
    # the device is checked before any file is read: a missing GPU is the first error, not the missing file
    with pytest.raises(InferenceError, match="--device cuda"):
        Predictor.from_checkpoints([tmp_path / "missing.ckpt"], device="cuda")
    with pytest.raises(InferenceError, match="--device cuda"):
        evaluate_cli.main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o"), "--device",
                           "cuda"])
    assert not (tmp_path / "o").exists()


def test_precision_is_checked_and_bf16_stays_close(trained):
    checkpoint, root = trained
    with pytest.raises(ConfigError, match="--precision '8-true' is unknown; choose one of 32-true"):
        Predictor.from_checkpoints([checkpoint], precision="8-true")
    fp32 = Predictor.from_checkpoints([checkpoint])
    bf16 = Predictor.from_checkpoints([checkpoint], precision="bf16-mixed")
    datamodule, _ = evaluation_data(fp32.sources, data_root=root)
    images = torch.from_numpy(datamodule.data.images[:4]).permute(0, 3, 1, 2)
    np.testing.assert_allclose(bf16.probabilities(images), fp32.probabilities(images), atol=3e-2)
    with pytest.raises(InferenceError, match=r"model input must be \(N, 3, 32, 32\)"):
        fp32.probabilities(images[:, :1])


def test_a_model_perfect_at_its_grid_is_nearly_perfect_at_the_scans_size(tmp_path):
    datamodule = oracle_data(tmp_path)
    predictor = Predictor([Oracle(datamodule)], Preprocessing(128, 3, "safe"))
    result = evaluate(predictor, datamodule, part="val")
    grid, native = result.metrics["model_grid"], result.metrics
    assert grid["dice"] == 1.0 and grid["hd95"] == 0.0 and grid["resolution"] == "128x128"
    # the 128x128 masks resized back to 256x256 (linear, then threshold) miss only boundary pixels
    assert 0.97 < native["dice"] < 1.0 and 0 < native["hd95"] <= 2.0
    assert (result.per_image["height"] == 256).all() and (result.per_image["model_grid_dice"] == 1.0).all()
    # millimetres: the spacing of the original slices, and the model grid's pixels are twice as large
    in_mm = evaluate(predictor, datamodule, part="val", pixel_spacing=[0.5])
    assert in_mm.metrics["hd_units"] == in_mm.metrics["model_grid"]["hd_units"] == "mm"
    assert in_mm.metrics["hd95"] == pytest.approx(native["hd95"] * 0.5)


def test_evaluate_and_predict_agree_on_the_same_checkpoint_with_its_stored_choice(trained, tmp_path):
    source, root = trained
    checkpoint = tmp_path / "run" / "checkpoints" / "selected.ckpt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(source, checkpoint)
    plain = Predictor.from_checkpoints([checkpoint])
    datamodule, _ = evaluation_data(plain.sources)
    images = torch.from_numpy(datamodule.data.images[datamodule.indices("val")]).permute(0, 3, 1, 2)
    threshold = round(float(np.quantile(plain.probabilities(images), 0.9)), 4)  # a barely trained model
    stored = InferenceSettings(PostProcessing(threshold, "largest", empty_fallback=0.05), tta="flip")
    store_settings([checkpoint], stored, {"part": "val", "folds": [0], "data_root": str(root)})

    out = evaluate_cli.main(["--ckpt", str(checkpoint), "--out", str(tmp_path / "eval"), "--device", "cpu"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings_source"] == "checkpoint" and metrics["tta"] == "flip"
    assert PostProcessing.from_dict(metrics["postprocessing"]) == stored.postprocessing
    assert "selected on these same slices" in metrics["note"]
    per_image = pd.read_csv(out / "per_image.csv", dtype={"key": str})

    predicted = tmp_path / "predicted"
    val_images = [root / "images" / f"{key}.png" for key in per_image["key"]]
    assert predict_cli.main(["--ckpt", str(checkpoint), "--input", *map(str, val_images), "--output",
                             str(predicted), "--device", "cpu", "--quiet", "--batch-size", "3"]) == 0
    tp = fp = fn = 0
    for key, dice in zip(per_image["key"], per_image["dice"]):
        mask = cv2.imread(str(predicted / "masks" / f"{key}.png"), cv2.IMREAD_GRAYSCALE) > 0
        truth = cv2.imread(str(root / "masks" / f"{key}.png"), cv2.IMREAD_GRAYSCALE) > 0
        assert mask.shape == truth.shape == (64, 64)
        assert cv2.connectedComponents(mask.astype(np.uint8))[0] <= 2  # the stored largest-component rule
        overlap = int((mask & truth).sum())
        tp, fp, fn = tp + overlap, fp + int(mask.sum()) - overlap, fn + int(truth.sum()) - overlap
        assert 2 * overlap / (mask.sum() + truth.sum()) == pytest.approx(dice, abs=1e-6)  # truth never empty
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(metrics["dice"], abs=1e-9)
    assert 0 < metrics["dice"] < 1  # the comparison is not vacuous

    # an explicit override replaces the stored choice, in both
    paper = evaluate_cli.main(["--ckpt", str(checkpoint), "--out", str(tmp_path / "paper"), "--device", "cpu",
                               "--postprocessing", "paper", "--no-tta"])
    overridden = json.loads((paper / "metrics.json").read_text())
    assert overridden["settings_source"] == "command line" and overridden["tta"] == "none"
    assert overridden["postprocessing"] == PostProcessing().as_dict() and overridden["dice"] != metrics["dice"]
    # --threshold alone keeps the rest of the stored rule
    lower = evaluate_cli.main(["--ckpt", str(checkpoint), "--out", str(tmp_path / "lower"), "--device", "cpu",
                               "--threshold", "0.2"])
    lowered = json.loads((lower / "metrics.json").read_text())
    assert lowered["settings_source"] == "checkpoint + command line" and lowered["tta"] == "flip"
    assert lowered["postprocessing"] == {**stored.postprocessing.as_dict(), "threshold": 0.2}
