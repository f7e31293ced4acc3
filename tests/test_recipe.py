"""The recipe's ingredients through SegmentationModule: EMA, deep supervision, smp networks, bad combinations,
old checkpoints, and a small model that learns with every ingredient on."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_bts.errors import ConfigError
from lightning_bts.losses import DeepSupervisionLoss
from lightning_bts.models import InputScaled, UNet, check_image_size
from lightning_bts.models.factory import architecture_names
from lightning_bts.training.module import SegmentationModule
from lightning_bts.training.optim import KerasAdam
from tests.conftest import REPO

TINY = {"base_filters": 4, "depth": 2, "hausdorff": False, "channels_last": False}


def disc_batches(count: int = 4, size: int = 32, batch_size: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Bright discs (the tumour) on a darker head: a task a tiny network learns in tens of steps."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    items = []
    for _ in range(count * batch_size):
        cy, cx = (torch.randint(size // 4, 3 * size // 4, (2,), generator=generator)).tolist()
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < (size // 6) ** 2).float()[None]
        head = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.45 * size) ** 2).float()
        noise = torch.rand(1, size, size, generator=generator) * 20
        image = (60 * head + 140 * mask[0] + noise).expand(3, size, size).clone()
        items.append({"image": image, "mask": mask})
    return items


def train_one_step(module: SegmentationModule, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """One optimiser step of ``module`` on one batch, outside a Trainer; returns the (finite) loss."""
    optimizer = module.configure_optimizers()
    loss = module.training_step({"image": images, "mask": masks}, 0)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    return loss


def trainer(tmp_path, callbacks=(), **kwargs) -> pl.Trainer:
    defaults = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                "default_root_dir": tmp_path, "num_sanity_val_steps": 0, "enable_checkpointing": False}
    return pl.Trainer(**{**defaults, **kwargs}, callbacks=list(callbacks))


# ---- EMA ----


class RecordWeights(pl.Callback):
    """The raw head weight after every optimizer step."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(pl_module.net.head.weight.detach().clone())


def test_ema_weights_are_validated_saved_and_kept_after_fit(tmp_path):
    torch.manual_seed(0)
    decay = 0.5
    module = SegmentationModule(**TINY, loss="bce", lr=0.05, ema_decay=decay)
    recorder = RecordWeights()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    data = DataLoader(disc_batches(3), batch_size=2)
    fit = trainer(tmp_path, [recorder, checkpoint], max_epochs=2, enable_checkpointing=True, limit_val_batches=1)
    fit.fit(module, train_dataloaders=data, val_dataloaders=DataLoader(disc_batches(1), batch_size=2))

    ema = recorder.weights[0]  # the average starts as a copy of the weights after the first step
    for n, raw in enumerate(recorder.weights[1:], start=1):
        rate = min(decay, (1 + n) / (10 + n))  # the warm-up: the n-th update after the copy
        ema = rate * ema + (1 - rate) * raw
    raw = recorder.weights[-1]
    assert (ema - raw).abs().max() > 1e-4, "the averaged weights should differ from the raw ones"
    torch.testing.assert_close(module.net.head.weight.detach(), ema)  # after fit the module holds the average

    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    torch.testing.assert_close(saved["state_dict"]["net.head.weight"], ema)  # what evaluation/prediction load
    torch.testing.assert_close(saved["current_model_state"]["net.head.weight"], raw)  # raw weights, for resuming
    reloaded = SegmentationModule.load_from_checkpoint(tmp_path / "last.ckpt", map_location="cpu")
    torch.testing.assert_close(reloaded.net.head.weight.detach(), ema)


def test_ema_warmup_leaves_the_first_weights_a_vanishing_share():
    from lightning_bts.training.ema import warmup_decay

    share, steps = 1.0, 2000  # about the optimizer steps of a one-hour CPU run
    for n in range(1, steps):
        share *= warmup_decay(0.999, n)
    assert share < 1e-3 < 0.999 ** steps  # a fixed decay would keep 14 % of the near-random first weights
    assert warmup_decay(0.999, 1) == pytest.approx(2 / 11) and warmup_decay(0.999, 10**6) == 0.999


def test_ema_update_moves_float_tensors_and_copies_integer_buffers():
    from torch.optim.swa_utils import AveragedModel

    from lightning_bts.training.ema import warmup_decay, warmup_ema_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    averaged = AveragedModel(model, multi_avg_fn=warmup_ema_fn(0.9), use_buffers=True)
    averaged.update_parameters(model)  # the first update copies
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model(torch.randn(4, 1, 8, 8))  # training mode: running statistics and num_batches_tracked move
    with torch.no_grad():
        model[0].weight.add_(1.0)
    averaged.update_parameters(model)
    rate = warmup_decay(0.9, 1)
    for name, value in model.state_dict().items():
        got = averaged.module.state_dict()[name]
        if value.is_floating_point():
            torch.testing.assert_close(got, rate * before[name] + (1 - rate) * value)
        else:
            assert torch.equal(got, value), name  # an integer count is not averaged
    assert not torch.equal(averaged.module[1].running_mean, model[1].running_mean)


def test_no_ema_callback_unless_asked():
    assert SegmentationModule(**TINY).configure_callbacks() == []
    (callback,) = SegmentationModule(**TINY, ema_decay=0.99).configure_callbacks()
    assert type(callback).__name__ == "WarmupEMA" and callback.decay == 0.99
    with pytest.raises(ConfigError, match="model.ema_decay"):
        SegmentationModule(**TINY, ema_decay=1.0)


# ---- deep supervision through the module ----


def test_deep_supervision_trains_on_all_outputs_and_evaluates_on_the_main_one():
    torch.manual_seed(0)
    module = SegmentationModule(**{**TINY, "depth": 3}, dropout_scale=0.0, loss="dice_bce_batch",
                                deep_supervision=True)
    assert isinstance(module.loss_fn, DeepSupervisionLoss)
    batch = disc_batches(1, size=32)[0]
    images, masks = batch["image"][None], batch["mask"][None]
    module.train()
    outputs = module(images)
    assert [o.shape[-1] for o in outputs] == [32, 16, 8]
    plain = module.loss_fn.loss  # dice_bce_batch
    by_hand = (4 * plain(outputs[0], masks) + 2 * plain(outputs[1], masks[..., ::2, ::2])
               + plain(outputs[2], masks[..., ::4, ::4])) / 7
    loss = module.training_step({"image": images, "mask": masks}, 0)
    torch.testing.assert_close(loss, by_hand)
    assert abs(loss.item() - plain(outputs[0], masks).item()) > 1e-4  # the side outputs count
    module.eval()
    assert module(images).shape == (1, 1, 32, 32)
    module.validation_step({"image": images, "mask": masks}, 0)  # the metrics take the main logits
    assert module.val_overlap.compute()["dice"].numel() == 1


# ---- smp architectures ----

SMP_ARCHS = [name for name in architecture_names() if name not in ("paper_unet", "DPT")]
# the fast tier builds and steps the ablation's smp row (Unet); every other decoder (0.7 s to several seconds a
# step each) runs in the full suite
FAST_SMP_ARCHS = ("Unet",)


@pytest.mark.parametrize("arch", [name if name in FAST_SMP_ARCHS else pytest.param(name, marks=pytest.mark.slow)
                                  for name in SMP_ARCHS])
def test_each_smp_architecture_builds_randomly_initialised_and_trains_a_step(arch):
    torch.manual_seed(0)
    module = SegmentationModule(arch=arch, encoder="resnet18", loss="dice_bce_batch", hausdorff=False)
    assert isinstance(module.net, InputScaled) and module.net.input_scale == pytest.approx(1 / 255)
    size = 128 if arch == "PAN" else 32  # PAN's pyramid pools the 1/32 features three more times
    check_image_size(module.net, size, arch)
    images = torch.rand(2, 3, size, size) * 255
    masks = (torch.rand(2, 1, size, size) > 0.8).float()
    train_one_step(module, images, masks)
    module.eval()
    with torch.no_grad():
        out = module(images)
        torch.testing.assert_close(out, module.net.net(images / 255))  # the paper's input scaling, then smp
    assert out.shape == (2, 1, size, size)


def test_dpt_needs_a_timm_encoder_and_says_so():
    with pytest.raises(ConfigError, match="model.arch=DPT cannot be built with model.encoder=resnet18"):
        SegmentationModule(arch="DPT", encoder="resnet18")


# ---- bad combinations stop before training, naming the option ----


@pytest.mark.parametrize("kwargs,message", [
    ({"arch": "Unet3D"}, r"model.arch: unknown architecture 'Unet3D'; choose one of paper_unet, Unet, UnetPlusPlus"),
    ({"arch": "Unet", "encoder": "resnet19"}, r"model.encoder: unknown encoder 'resnet19'. Did you mean resnet18"),
    ({"arch": "FPN", "encoder": "tu-not_a_model"}, r"model.encoder: timm knows no model 'not_a_model'"),
    ({"arch": "Unet", "encoder": "resnet18", "deep_supervision": True}, r"model.deep_supervision=True applies to "
                                                                         r"model.arch=paper_unet only"),
    ({"arch": "FPN", "encoder": "resnet18", "norm": "group"}, r"model.norm='group' applies to model.arch=paper_unet"),
    ({"arch": "Unet", "encoder": "resnet18", "base_filters": 32}, r"model.base_filters=32"),
    ({"norm": "layer"}, r"model.norm: unknown normalisation 'layer'"),
    ({"loss": "lovasz"}, r"model.loss: unknown loss 'lovasz'; choose one of .*dice_bce_batch"),
    ({"scheduler": "onecycle"}, r"model.scheduler: unknown schedule"),
    ({"optimizer": "lion"}, r"model.optimizer: unknown optimizer 'lion'"),
    ({"warmup_epochs": -1.0}, r"model.warmup_epochs"),
    ({"dropout_scale": -0.5}, r"model.dropout_scale"),
    ({"dropout_start_epoch": -1}, r"model.dropout_start_epoch must be a whole number of epochs >= 0, got -1"),
    ({"dropout_start_epoch": 2.5}, r"model.dropout_start_epoch must be a whole number"),
    ({"dropout_scale": 0.0, "dropout_start_epoch": 5},
     r"model.dropout_start_epoch=5 delays dropout, but this network has none \(model.arch=paper_unet, "
     r"model.dropout_scale=0.0"),
    ({"arch": "Unet", "encoder": "resnet18", "dropout_start_epoch": 5},
     r"model.dropout_start_epoch=5 .*model.arch=Unet"),
])
def test_bad_options_raise_config_errors_naming_the_option(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SegmentationModule(**kwargs)


def test_an_image_size_the_network_cannot_take_stops_before_the_first_step(tiny_dataset, tmp_path):
    from lightning_bts.data import BrainTumorDataModule

    module = SegmentationModule(arch="FPN", encoder="resnet18", hausdorff=False)
    data = BrainTumorDataModule(str(tiny_dataset), image_size=48, num_workers=0, batch_size=2)
    fit = trainer(tmp_path, max_steps=1)
    with pytest.raises(ConfigError, match=r"data.image_size=48 does not suit model.arch=FPN.*multiple of 32"):
        fit.fit(module, datamodule=data)
    assert fit.global_step == 0
    with pytest.raises(ConfigError, match=r"data.image_size=48 .* model.depth=5: .* multiple of 32"):
        check_image_size(UNet(depth=5), 48)
    check_image_size(UNet(depth=4), 48)  # 48 = 3 * 16: fine
    pan = SegmentationModule(arch="PAN", encoder="resnet18").net
    with pytest.raises(ConfigError, match=r"data.image_size=64 is too small or otherwise unfit for model.arch=PAN"):
        check_image_size(pan, 64, "PAN")
    assert pan.training  # the probe left the network in training mode


def test_a_decaying_schedule_without_any_budget_is_refused(tmp_path):
    module = SegmentationModule(**TINY, scheduler="cosine")
    with pytest.raises(ConfigError, match="max_epochs, trainer.max_steps or trainer.max_time"):
        trainer(tmp_path, max_epochs=-1, limit_val_batches=0).fit(
            module, train_dataloaders=DataLoader(disc_batches(1), batch_size=2))


# ---- late dropout ----


class RecordDropout(pl.Callback):
    """Per epoch: the dropout layers' rates, and whether two training-mode passes over one input differ."""

    def __init__(self) -> None:
        self.rates: dict[int, list[float]] = {}
        self.random: dict[int, bool] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx:
            return
        self.rates[trainer.current_epoch] = [layer.p for layer in pl_module.dropout_rates]
        with torch.no_grad():
            image = batch["image"].float()
            self.random[trainer.current_epoch] = not torch.equal(pl_module.net(image), pl_module.net(image))


def test_late_dropout_is_off_before_its_start_epoch_and_at_the_networks_rates_from_then_on(tmp_path):
    torch.manual_seed(0)
    module = SegmentationModule(**TINY, loss="bce", dropout_start_epoch=2)
    configured = list(module.dropout_rates.values())
    assert len(configured) == 5 and all(rate > 0 for rate in configured)  # depth 2: 3 down, 2 up
    recorder = RecordDropout()
    trainer(tmp_path, [recorder], max_epochs=4, limit_val_batches=0).fit(
        module, train_dataloaders=DataLoader(disc_batches(2), batch_size=2))
    assert recorder.rates == {0: [0.0] * 5, 1: [0.0] * 5, 2: configured, 3: configured}
    assert recorder.random == {0: False, 1: False, 2: True, 3: True}


def test_without_late_dropout_the_rates_are_never_touched(tmp_path):
    module = SegmentationModule(**TINY, loss="bce", dropout_scale=0.5)
    recorder = RecordDropout()
    trainer(tmp_path, [recorder], max_epochs=1, limit_val_batches=0).fit(
        module, train_dataloaders=DataLoader(disc_batches(1), batch_size=2))
    assert recorder.rates[0] == list(module.dropout_rates.values()) and recorder.random[0]


# ---- old checkpoints ----


def test_a_checkpoint_saved_before_these_options_loads_strictly_as_the_same_network():
    path = REPO / "tests" / "data" / "pre_predictor.ckpt"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert "norm" not in saved["hyper_parameters"] and "optimizer" not in saved["hyper_parameters"]
    module = SegmentationModule.load_from_checkpoint(path, map_location="cpu")  # strict: every key matches
    assert isinstance(module.net, UNet) and module.net.norm == "none" and module.net.side_heads is None
    assert type(module.configure_optimizers()) is KerasAdam
    old_batch_norm = {**{k: v for k, v in saved["hyper_parameters"].items() if k[0] != "_"}, "batch_norm": True}
    keys = SegmentationModule(**old_batch_norm).state_dict().keys()
    # the layer names BatchNorm had before norm existed: conv 0, norm 1, relu 2, dropout 3, conv 4, norm 5
    assert {"net.encoder.0.1.running_mean", "net.encoder.0.5.weight", "net.decoder.1.block.5.bias"} <= set(keys)


# ---- the recipe learns ----


class RecordLoss(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_a_small_model_learns_with_every_ingredient_on(tmp_path):
    """overfit_batches-style: the recipe's ingredients together drive the loss down on two fixed batches."""
    torch.manual_seed(0)
    module = SegmentationModule(base_filters=8, depth=3, norm="batch", deep_supervision=True, loss="dice_bce_batch",
                                optimizer="adamw", lr=0.01, weight_decay=0.01, warmup_epochs=1.0,
                                scheduler="cosine", ema_decay=0.9, hausdorff=False, channels_last=False)
    recorder = RecordLoss()
    fit = trainer(tmp_path, [recorder], max_epochs=20, overfit_batches=2, limit_val_batches=0)
    fit.fit(module, train_dataloaders=DataLoader(disc_batches(2, size=32, batch_size=4), batch_size=4))
    first, last = sum(recorder.losses[:2]) / 2, sum(recorder.losses[-2:]) / 2
    assert last < 0.5 * first, f"loss fell only from {first:.3f} to {last:.3f}"
