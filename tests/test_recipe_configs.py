"""The shipped configs: each parses and builds its model and data module; best_cpu's ingredients run end to end."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from lightning_bts.data import BrainTumorDataModule
from lightning_bts.models import check_image_size
from lightning_bts.training.cli import BTSCLI
from lightning_bts.training.config import parse_config
from lightning_bts.training.module import SegmentationModule
from lightning_bts.training.train import train
from tests.conftest import REPO

CONFIGS = sorted(path for path in (REPO / "configs").glob("*.yaml") if path.name != "tune_space.yaml")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_each_shipped_config_parses_and_builds_its_model_and_data(config, tmp_path):
    text = config.read_text()
    assert f"python scripts/fit.py --config configs/{config.name}" in text.splitlines()[0]  # starts with its command
    settings = yaml.safe_load(text)
    args = ["--config", str(config), "--output_dir", str(tmp_path)]
    if settings.get("trainer", {}).get("accelerator") == "gpu":  # builds here without one: only the device differs
        args += ["--accelerator", "cpu", "--precision", "32-true"]
    cli = BTSCLI(args)
    assert isinstance(cli.model, SegmentationModule) and isinstance(cli.datamodule, BrainTumorDataModule)
    for key, value in settings.get("model", {}).items():
        assert cli.model.hparams[key] == value, key
    for key, value in settings.get("data", {}).items():
        assert cli.datamodule.hparams[key] == value, key
    check_image_size(cli.model.net, cli.datamodule.hparams.image_size, cli.model.hparams.arch)


def test_best_configs_state_their_budget_split_and_devices():
    cpu = yaml.safe_load((REPO / "configs" / "best_cpu.yaml").read_text())
    gpu = yaml.safe_load((REPO / "configs" / "best_gpu.yaml").read_text())
    assert cpu["trainer"]["max_time"] == "00:01:00:00" and cpu["trainer"]["max_epochs"] == -1
    assert cpu["data"]["image_size"] == 128 and cpu["data"]["test_fraction"] > 0
    assert cpu["data"]["root"] == gpu["data"]["root"] == "../shared/data/figshare_brain_tumor"
    assert gpu["trainer"]["accelerator"] == "gpu" and gpu["trainer"]["devices"] == 1
    assert gpu["trainer"]["precision"] == "bf16-mixed" and gpu["data"]["image_size"] == 512
    assert gpu["model"] == cpu["model"]  # the same recipe; only size, budget and loaders differ


def test_best_cpu_ingredients_train_two_steps_on_the_sample(tmp_path):
    """A dry run: every ingredient of best_cpu.yaml at 32x32 on the shipped sample, two steps, one validation."""
    torch.manual_seed(0)
    config = parse_config(["--config", str(REPO / "configs" / "best_cpu.yaml"),
                           "--data.root", str(REPO / "data" / "sample"),
                           "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
                           "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                           "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
                           "--trainer.enable_progress_bar", "false", "--precision", "32-true",
                           "--output_dir", str(tmp_path)])
    result = train(config)
    checkpoint = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert "current_model_state" in checkpoint  # EMA on: state_dict holds the averaged weights
    assert any(".side_heads." in key for key in checkpoint["state_dict"])  # deep supervision
    assert any(key.endswith("running_mean") for key in checkpoint["state_dict"])  # batch norm
    assert checkpoint["hyper_parameters"]["optimizer"] == "adamw"
    split = json.loads((result.log_dir / "splits.json").read_text())
    assert split["test"] and not set(split["test"]) & set(split["train"] + split["val"])
    assert 0 <= result.metrics["val/dice"] <= 1


def _resolved(tmp_path, *args: str) -> dict:
    """The whole parsed config (trainer, model, data, seed) of ``args``, without the list of files read."""
    cli = BTSCLI([*args, "--output_dir", str(tmp_path)])
    config = cli.config.as_dict()
    config.pop("config", None)
    return config


def test_paper_bce_is_paper_focal_but_for_the_loss(tmp_path):
    focal = _resolved(tmp_path, "--config", str(REPO / "configs/paper_focal.yaml"))
    bce = _resolved(tmp_path, "--config", str(REPO / "configs/paper_bce.yaml"))
    layered = _resolved(tmp_path, "--config", str(REPO / "configs/paper_focal.yaml"),
                        "--config", str(REPO / "configs/paper_bce.yaml"))
    assert (focal["model"].pop("loss"), bce["model"].pop("loss")) == ("focal", "bce")
    assert bce == focal
    assert layered["model"].pop("loss") == "bce" and layered == focal
