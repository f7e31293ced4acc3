"""Prediction on raw images: same preprocessing as training, ensembles, TTA, outputs, bad input.

The checkpoint of these tests (and test_export's, test_predictor's) is a 2-level U-Net with 4 base filters,
trained for two batches: the mechanics, not the accuracy.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from lightning_bts.data import BrainTumorDataModule
from lightning_bts.data.records import read_image
from lightning_bts.evaluation import InferenceError, Predictor, find_images
from lightning_bts.evaluation.predict_cli import main
from lightning_bts.evaluation.predictor import prepare_image, to_original_size
from lightning_bts.training.checkpoints import (
    CheckpointError,
    Preprocessing,
    load_ensemble,
    load_model,
    preprocessing_from_checkpoint,
)
from lightning_bts.training.config import parse_config
from lightning_bts.training.train import train
from tests.conftest import REPO, write_dataset

IMAGE_SIZE = 32  # source slices are 64x64: the model sees them shrunk, masks come back at 64x64


def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, dataset root): one tiny LightningCLI training run per test session, shared by the files."""
    base = tmp_path_factory.getbasetemp() / "inference_checkpoint"
    root, checkpoint = base / "data", base / "run" / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        write_dataset(root)
        train(parse_config([
            "--data.root", str(root), "--data.image_size", str(IMAGE_SIZE), "--data.num_workers", "0",
            "--data.batch_size", "4", "--model.depth", "2", "--model.base_filters", "4",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar",
            "false", "--trainer.enable_model_summary", "false", "--precision", "32-true",
            "--trainer.default_root_dir", str(base / "run"), "--output_dir", str(base / "unused"),
            "--preview_slices", "0"]))
    return checkpoint, root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return trained_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def evaluation(trained) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    return evaluation_probabilities(*trained)


def modified_checkpoint(source: Path, target: Path, edit) -> Path:
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, target)
    return target


def evaluation_probabilities(checkpoint: Path, root: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """What the evaluation path computes: the model over the data module's predict loader (all slices)."""
    model = load_model(checkpoint)
    data = BrainTumorDataModule(str(root), fold=None, batch_size=8, num_workers=0,
                                **preprocessing_from_checkpoint(checkpoint).as_dict())
    data.load()
    probabilities, images = [], []
    with torch.inference_mode():
        for batch in data.predict_dataloader():
            probabilities.append(torch.sigmoid(model(batch["image"]))[:, 0].numpy())
            images.append(batch["image"].numpy())
    return np.concatenate(probabilities), np.concatenate(images), data.records


def test_checkpoint_records_the_training_preprocessing(trained):
    checkpoint, _ = trained
    assert preprocessing_from_checkpoint(checkpoint) == Preprocessing(IMAGE_SIZE, 3, "safe")
    model = load_model(checkpoint)
    assert not model.training and model.hparams.in_channels == 3


@pytest.mark.parametrize(("in_channels", "skull_strip"), [(3, "safe"), (1, "paper"), (3, "none")])
def test_prepare_image_matches_the_training_pipeline(tiny_dataset, in_channels, skull_strip):
    preprocessing = Preprocessing(IMAGE_SIZE, in_channels, skull_strip)
    data = BrainTumorDataModule(str(tiny_dataset), fold=None, batch_size=64, num_workers=0,
                                **preprocessing.as_dict())
    data.load()
    expected = next(iter(data.predict_dataloader()))["image"].numpy()
    assert len(expected) == len(data.records)
    for row, image in zip(data.records.itertuples(), expected):
        np.testing.assert_array_equal(prepare_image(read_image(row.image_path), preprocessing), image)


def test_predict_reproduces_the_evaluation_path(trained, evaluation, tmp_path):
    checkpoint, root = trained
    out = tmp_path / "out"
    assert main(["--ckpt", str(checkpoint), "--input", str(root / "images"), "--output", str(out),
                 "--save-probs", "npy", "--batch-size", "5", "--quiet"]) == 0

    probabilities, _, records = evaluation
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == len(records) and (out / "skipped.txt").read_text() == ""
    for row, probability, (_, line) in zip(records.itertuples(), probabilities, table.iterrows()):
        expected = to_original_size(probability, (64, 64))
        saved = np.load(out / "probabilities" / f"{row.key}.npy")
        np.testing.assert_allclose(saved, expected, atol=1e-5)
        mask = cv2.imread(str(out / "masks" / f"{row.key}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        decided = np.abs(expected - 0.5) > 1e-4  # batch composition may move a probability by ~1e-7
        np.testing.assert_array_equal((mask > 0)[decided], (expected > 0.5)[decided])
        assert line["image"] == str(Path(row.image_path)) and line["tumour_pixels"] == (mask > 0).sum()


def test_any_size_grayscale_or_rgb_comes_back_at_its_own_size(trained, tmp_path):
    checkpoint, root = trained
    gray = cv2.resize(read_image(root / "images" / "0000.png"), (48, 80))  # W x H = 48 x 80, not square
    scans = tmp_path / "scans"
    scans.mkdir()
    cv2.imwrite(str(scans / "gray.png"), gray)
    cv2.imwrite(str(scans / "rgb.png"), cv2.merge([gray, gray, gray]))
    cv2.imwrite(str(scans / "big.tif"), cv2.resize(gray, (150, 150)))
    out = tmp_path / "out"
    assert main(["--ckpt", str(checkpoint), "--input", str(scans / "*.*"), "--output", str(out), "--overlays",
                 "--save-probs", "--pixel-spacing", "0.5", "--quiet"]) == 0
    for name, shape in [("gray", (80, 48)), ("rgb", (80, 48)), ("big", (150, 150))]:
        assert cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED).shape == shape
        assert cv2.imread(str(out / "probabilities" / f"{name}.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint8
        assert cv2.imread(str(out / "overlays" / f"{name}.png")).shape == (*shape, 3)
    # an RGB file with equal channels is the grayscale slice, read as the 3-channel model expects
    np.testing.assert_array_equal(cv2.imread(str(out / "probabilities" / "gray.png")),
                                  cv2.imread(str(out / "probabilities" / "rgb.png")))
    table = pd.read_csv(out / "predictions.csv").set_index("image")
    np.testing.assert_allclose(table["tumour_area_mm2"], table["tumour_pixels"] * 0.25)


def test_ensemble_averages_member_probabilities(trained, evaluation, tmp_path):
    checkpoint, _ = trained

    def perturb(ckpt):
        ckpt["state_dict"]["net.head.bias"] += 1.0

    other = modified_checkpoint(checkpoint, tmp_path / "other.ckpt", perturb)
    _, images, _ = evaluation
    batch = images[:6]
    ensemble = Predictor.from_checkpoints([checkpoint, other])
    first, second_model = ensemble.models
    mixed = ensemble.probabilities(batch)
    single = Predictor([first], ensemble.preprocessing).probabilities(batch)
    twice = Predictor([first, first], ensemble.preprocessing).probabilities(batch)
    second = Predictor([second_model], ensemble.preprocessing).probabilities(batch)
    assert single.shape == mixed.shape == (6, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_allclose(twice, single, atol=1e-6)
    assert np.abs(second - single).max() > 0.05
    np.testing.assert_allclose(mixed, (single + second) / 2, atol=1e-6)


def test_flip_tta_is_the_mean_with_the_mirrored_prediction(trained, evaluation):
    checkpoint, _ = trained
    _, images, _ = evaluation
    batch = images[:4]
    plain = Predictor.from_checkpoints([checkpoint])
    tta = Predictor(plain.models, plain.preprocessing, tta=True)
    mirrored = plain.probabilities(np.ascontiguousarray(batch[..., ::-1]))[..., ::-1]
    np.testing.assert_allclose(tta.probabilities(batch), (plain.probabilities(batch) + mirrored) / 2, atol=1e-6)
    # and TTA makes the prediction mirror-equivariant, which the bare model is not
    np.testing.assert_allclose(tta.probabilities(np.ascontiguousarray(batch[..., ::-1])),
                               tta.probabilities(batch)[..., ::-1], atol=1e-6)


def test_mirror_tta_is_the_mean_over_the_mirrors_along_both_axes(trained, evaluation):
    checkpoint, _ = trained
    _, images, _ = evaluation
    batch = images[:4]
    plain = Predictor.from_checkpoints([checkpoint])
    mirror = plain.with_tta("mirror")

    def seen_mirrored(axes: tuple[int, ...]) -> np.ndarray:
        flipped = np.ascontiguousarray(np.flip(batch, axis=axes))
        return np.flip(plain.probabilities(flipped), axis=tuple(a - 1 for a in axes))  # (N, S, S) has no C

    views = [plain.probabilities(batch), seen_mirrored((3,)), seen_mirrored((2,)), seen_mirrored((2, 3))]
    np.testing.assert_allclose(mirror.probabilities(batch), np.mean(views, axis=0), atol=1e-6)
    # equivariant to a vertical mirror as well, which flip TTA is not
    upside_down = np.ascontiguousarray(batch[..., ::-1, :])
    np.testing.assert_allclose(mirror.probabilities(upside_down), mirror.probabilities(batch)[:, ::-1], atol=1e-6)
    flip = plain.with_tta("flip")
    assert np.abs(flip.probabilities(upside_down) - flip.probabilities(batch)[:, ::-1]).max() > 1e-3


def test_modes_compared_together_share_their_views_and_equal_each_mode_alone(trained, evaluation, monkeypatch):
    checkpoint, _ = trained
    batch = evaluation[1][:4]
    plain = Predictor.from_checkpoints([checkpoint])
    alone = [plain.with_tta(mode).probabilities(batch) for mode in ("none", "flip", "mirror")]
    views = []
    predict_view = Predictor._probability
    monkeypatch.setattr(Predictor, "_probability",
                        lambda self, model, batch, dims: views.append(dims) or predict_view(self, model, batch, dims))
    together = plain.mode_probabilities(batch, ("none", "flip", "mirror"))
    assert sorted(views) == [(), (-2,), (-2, -1), (-1,)]  # each view once, not 1 + 2 + 4 times
    for one, shared in zip(alone, together):
        np.testing.assert_array_equal(shared, one)


def test_unreadable_files_are_skipped_and_listed_or_stop_a_strict_run(trained, tmp_path, capsys):
    checkpoint, root = trained
    scans = tmp_path / "scans"
    scans.mkdir()
    for key in ("0000", "0001"):
        (scans / f"{key}.png").write_bytes((root / "images" / f"{key}.png").read_bytes())
    (scans / "broken.png").write_text("not an image")
    cv2.imwrite(str(scans / "deep.png"), np.zeros((40, 40), np.uint16))
    out = tmp_path / "out"
    assert main(["--ckpt", str(checkpoint), "--input", str(scans), "--output", str(out), "--quiet"]) == 0
    skipped = (out / "skipped.txt").read_text()
    assert "broken.png" in skipped and "deep.png" in skipped and "uint16" in skipped
    assert sorted(pd.read_csv(out / "predictions.csv")["image"].map(lambda p: Path(p).name)) == ["0000.png", "0001.png"]
    assert "broken.png" in capsys.readouterr().err

    with pytest.raises(InferenceError, match="broken.png.*stopped: --strict"):
        main(["--ckpt", str(checkpoint), "--input", str(scans), "--output", str(tmp_path / "strict"), "--strict",
              "--quiet"])


def test_inputs_are_never_overwritten(trained, tmp_path):
    checkpoint, root = trained
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "a.png").write_bytes((root / "images" / "0000.png").read_bytes())
    before = sorted(scans.iterdir())
    for output in (scans, tmp_path):  # equal to, or containing, the input folder
        with pytest.raises(InferenceError, match="contains the input"):
            main(["--ckpt", str(checkpoint), "--input", str(scans), "--output", str(output), "--quiet"])
    assert sorted(scans.iterdir()) == before
    (scans / "a.jpg").write_bytes((root / "images" / "0001.png").read_bytes())
    with pytest.raises(InferenceError, match="would both be written as a.png"):
        main(["--ckpt", str(checkpoint), "--input", str(scans / "a.*"), "--output", str(tmp_path / "o"), "--quiet"])


def test_checkpoints_that_do_not_match_are_clear_errors(trained, tmp_path):
    checkpoint, _ = trained
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.ckpt"):
        load_model(text)

    def drop_weight(ckpt):
        del ckpt["state_dict"]["net.head.weight"]

    def other_model(ckpt):
        ckpt["state_dict"] = {"backbone.conv.weight": torch.zeros(1)}
        ckpt["hyper_parameters"] = {"encoder_name": "resnet34"}

    def other_width(ckpt):
        ckpt["hyper_parameters"]["base_filters"] = 8

    def other_size(ckpt):
        ckpt["datamodule_hyper_parameters"]["image_size"] = 64

    cases = [(drop_weight, "missing weight"), (other_model, "not a SegmentationModule"),
             (other_width, "shapes do not match")]
    for edit, message in cases:
        path = modified_checkpoint(checkpoint, tmp_path / f"{edit.__name__}.ckpt", edit)
        with pytest.raises(CheckpointError, match=f"{edit.__name__}.ckpt.*{message}"):
            load_model(path)
    bigger = modified_checkpoint(checkpoint, tmp_path / "bigger.ckpt", other_size)
    with pytest.raises(CheckpointError, match="bigger.ckpt.*other preprocessing"):
        load_ensemble([checkpoint, bigger])
    with pytest.raises(CheckpointError, match="notes.ckpt"):
        main(["--ckpt", str(checkpoint), str(text), "--input", str(REPO / "data" / "sample" / "images"),
              "--output", str(tmp_path / "out"), "--quiet"])
    assert not (tmp_path / "out").exists()


def test_checkpoint_without_data_settings_falls_back_with_a_warning(trained, tmp_path):
    checkpoint, _ = trained
    path = modified_checkpoint(checkpoint, tmp_path / "bare.ckpt", lambda c: c.pop("datamodule_hyper_parameters"))
    with pytest.warns(UserWarning, match="image_size=256"):
        assert preprocessing_from_checkpoint(path) == Preprocessing(256, 3, "safe")


def test_find_images_and_the_script(trained, tmp_path, monkeypatch, capsys):
    checkpoint, root = trained
    with pytest.raises(InferenceError, match="no images found"):
        find_images([str(tmp_path / "*.png")])
    assert len(find_images([root / "images", str(root / "images" / "00*.png")])) == 18  # duplicates dropped
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["predict.py", "--ckpt", str(checkpoint), "--input",
                                      str(root / "images" / "0000.png"), "--output", str(out), "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "scripts" / "predict.py"), run_name="__main__")
    assert exit_info.value.code == 0 and (out / "masks" / "0000.png").is_file()
    # a user error is one line on stderr and exit status 2 (lightning_bts.errors.run_main), nothing written
    monkeypatch.setattr(sys, "argv", ["predict.py", "--ckpt", str(checkpoint), "--input",
                                      str(root / "images" / "0000.png"), "--output", str(tmp_path / "o2"),
                                      "--device", "cuda:99"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "scripts" / "predict.py"), run_name="__main__")
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: --device cuda:99")
    assert not (tmp_path / "o2").exists()
