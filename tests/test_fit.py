"""Training end to end: the CLI, checkpoints, the no-argument run and a smoke run on the full dataset."""

import subprocess
import sys

import pandas as pd
import pytest
import torch

from lightning_bts.cli import BTSCLI, default_precision
from lightning_bts.data import BrainTumorDataModule
from lightning_bts.keras_io import export_keras_weights, load_keras_weights, save_lightning_checkpoint
from lightning_bts.models import UNet
from lightning_bts.module import SegmentationModule
from lightning_bts.train import train
from tests.conftest import REPO

# Measured here: the no-argument run (Dice+BCE, 40 epochs; configs/quick_cpu.yaml) with seeds 42 (the default),
# 5 and 2 ended with a mean over its last five epochs of 0.41, 0.40 and 0.43. The test averages the last five
# epochs so one bad epoch cannot fail it; a run that learned nothing stays at 0.
DICE_FLOOR = 0.15

TINY = ["--data.image_size", "32", "--data.num_workers", "0", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_help_documents_the_shortcuts():
    out = subprocess.run([sys.executable, "scripts/fit.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for option in ("--accelerator", "--devices", "--precision", "--ckpt_path", "--model.loss", "--data.fold"):
        assert option in out.stdout


def test_shortcuts_set_the_trainer_and_link_channels(tmp_path):
    cli = BTSCLI(["--accelerator", "cpu", "--precision", "32-true", "--data.in_channels", "1",
                  "--output_dir", str(tmp_path)])
    assert cli.config.trainer.accelerator == "cpu" and cli.config.trainer.precision == "32-true"
    assert cli.model.net.encoder[0][0].in_channels == 1


def test_default_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.setattr("lightning_bts.cli.cpu_has_native_bf16", lambda: True)
    assert default_precision("cpu") == "bf16-mixed"
    assert default_precision("gpu") == "32-true"
    monkeypatch.setattr("lightning_bts.cli.cpu_has_native_bf16", lambda: False)
    assert default_precision("cpu") == "32-true"


def test_paper_configs_parse_to_the_paper_settings(tmp_path):
    for loss in ("focal", "bce"):
        cli = BTSCLI(["--config", str(REPO / f"configs/paper_{loss}.yaml"), "--data.root", "data/sample",
                      "--output_dir", str(tmp_path)])
        assert cli.config.model.loss == loss and cli.config.data.image_size == 512
        assert cli.config.data.batch_size == 16 and cli.config.trainer.max_epochs == 10
        assert sum(p.numel() for p in cli.model.parameters()) == 1_941_105


def test_checkpoint_reloads_to_the_same_predictions(tmp_path):
    result = train(TINY + ["--trainer.limit_train_batches", "2", "--output_dir", str(tmp_path)])
    assert result.last_checkpoint.is_file() and (result.log_dir / "splits.json").is_file()
    assert (result.log_dir / "metrics.csv").is_file() and (result.log_dir / "config.yaml").is_file()
    reloaded = SegmentationModule.load_from_checkpoint(result.last_checkpoint, map_location="cpu").eval()
    saved = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    # LightningCLI adds private keys such as _instantiator to both hyperparameter dicts
    hparams = {k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")}
    fresh = SegmentationModule(**hparams).eval()
    fresh.load_state_dict(saved["state_dict"])
    dm = BrainTumorDataModule(**{k: v for k, v in saved["datamodule_hyper_parameters"].items() if k[0] != "_"})
    dm.setup("validate")
    images = next(iter(dm.val_dataloader()))["image"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), fresh(images))
    assert {"val/dice", "val/hd95", "val/precision_per_image", "train/loss"} <= set(result.metrics)


def test_resume_continues_from_a_checkpoint(tmp_path):
    first = train(TINY + ["--trainer.limit_train_batches", "1", "--output_dir", str(tmp_path)])
    resumed = train(TINY + ["--trainer.limit_train_batches", "1", "--trainer.max_epochs", "3",
                            "--ckpt_path", str(first.last_checkpoint), "--output_dir", str(tmp_path)])
    assert torch.load(resumed.last_checkpoint, weights_only=False)["epoch"] == 2


def test_last_checkpoint_is_the_last_epoch_even_when_it_is_not_the_best(tmp_path):
    # lr 0 keeps val/dice constant, so only epoch 0 is ever "best"; last.ckpt must still move on.
    result = train(TINY + ["--trainer.limit_train_batches", "1", "--trainer.max_epochs", "3", "--model.lr", "0",
                           "--output_dir", str(tmp_path)])
    assert result.last_checkpoint.name == "last.ckpt"
    assert torch.load(result.last_checkpoint, weights_only=False)["epoch"] == 2
    assert result.best_checkpoint != result.last_checkpoint


def test_fit_fine_tunes_from_keras_weights(tmp_path):
    keras_file = export_keras_weights(UNet(), tmp_path / "notebook.weights.h5")
    # lr 0: the weights after the fit are the weights it started from
    result = train(TINY + ["--trainer.limit_train_batches", "1", "--model.lr", "0", "--model.init_weights",
                           str(keras_file), "--output_dir", str(tmp_path)])
    saved = torch.load(result.last_checkpoint, weights_only=False)["state_dict"]
    for name, value in load_keras_weights(UNet(), keras_file).state_dict().items():
        torch.testing.assert_close(saved[f"net.{name}"], value, rtol=0, atol=0)


def test_init_weights_of_another_architecture_is_refused_with_the_file_named(tmp_path):
    other = save_lightning_checkpoint(UNet(base_filters=4), tmp_path / "small.ckpt")
    with pytest.raises(ValueError, match="small.ckpt"):
        SegmentationModule().load_init_weights(other)
    with pytest.raises(ValueError, match="missing.h5"):
        SegmentationModule().load_init_weights(tmp_path / "missing.h5")


@pytest.mark.slow
def test_no_argument_run_learns_on_the_sample(tmp_path):
    """The README's `make run`: the shipped defaults on the shipped sample."""
    result = train(["--output_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    dice = pd.read_csv(result.log_dir / "metrics.csv")["val/dice"].dropna()
    assert len(dice) == 40 and dice.tail(5).mean() > DICE_FLOOR, dice.tolist()


@pytest.mark.slow
@pytest.mark.shared_data
def test_one_epoch_smoke_run_on_the_full_dataset(shared_root, tmp_path):
    result = train(["--config", str(REPO / "configs/paper_focal.yaml"), "--data.root", str(shared_root),
                    "--data.image_size", "128", "--data.num_workers", "2", "--trainer.max_epochs", "1",
                    "--trainer.enable_progress_bar", "false", "--output_dir", str(tmp_path)])
    assert result.last_checkpoint.is_file()
    assert 0.0 <= result.metrics["val/dice"] <= 1.0 and result.metrics["val/accuracy"] > 0.9
