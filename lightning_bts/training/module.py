"""The LightningModule: a network (the paper's U-Net by default), a loss chosen by name, an optimiser and schedule
(Keras' Adam, constant, by default), optional weight averaging, and the metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import XLAAccelerator
from pytorch_lightning.utilities import rank_zero_warn

from lightning_bts.errors import ConfigError
from lightning_bts.losses import DeepSupervisionLoss, build_loss
from lightning_bts.metrics import HausdorffMetrics, OverlapMetrics
from lightning_bts.models.factory import DEFAULT_ENCODER, PAPER_UNET, build_network, check_image_size
from lightning_bts.training.optim import build_optimizer, resolve_optimizer
from lightning_bts.training.schedules import SCHEDULERS, lightning_schedulers

MONITOR = "val/dice"


class SegmentationModule(pl.LightningModule):
    """Trains a segmentation network on ``{"image", "mask"}`` batches. Every default is the paper's recipe.

    Network (:func:`~lightning_bts.models.build_network`): ``arch`` ``paper_unet`` (default) is
    :class:`~lightning_bts.models.UNet`, built from ``in_channels`` ... ``input_scale``, ``input_norm`` (``scale``,
    the paper's ``x / 255``, or ``zscore``: each slice's foreground to mean 0 and deviation 1), ``norm`` (``none``,
    ``batch``, ``instance``, ``group``; ``batch_norm=True`` is the older spelling of ``batch``) and
    ``deep_supervision``; ``dropout_scale`` multiplies the paper's dropout rates (0 turns dropout off), and
    ``dropout_start_epoch`` keeps dropout off for that many epochs first ("late dropout", Liu et al., ICML 2023,
    "Dropout Reduces Underfitting": a network learns sooner without it, and needs it only once it starts to fit
    its training data; 0, the paper's behaviour, keeps it on from the first step). Any other
    ``arch`` is a segmentation_models_pytorch architecture (``Unet``, ``FPN``, ...) with ``encoder``, randomly
    initialised. Loss arguments pick the loss by name (:data:`lightning_bts.losses.LOSS_NAMES`); ``loss_eps``
    overrides the probability clipping (0 = none; by default each loss clips as Keras trains it).

    Optimiser (:func:`~.optim.build_optimizer`): ``optimizer`` ``keras_adam`` (default: Keras' Adam
    step for step, ``lr`` 1e-3, ``adam_eps`` 1e-7 added before bias correction), ``adam``, ``adamw`` or ``sgd``
    (Nesterov, ``momentum``), with ``weight_decay``; ``keras_adam=False`` is the older spelling of ``adam``.
    Schedule (:mod:`lightning_bts.training.schedules`): ``warmup_epochs`` of linear warm-up (fractions allowed), then
    ``scheduler`` ``none`` (default), ``cosine`` or ``poly`` down to ``min_lr`` exactly when the run's budget
    (``max_epochs``/``max_steps``/``max_time``) ends, updated every step, or ``plateau`` (halve the rate after 2
    epochs without a better ``val/dice``). ``ema_decay`` keeps an exponential moving average of the weights
    (:class:`~lightning_bts.training.ema.WarmupEMA`, Lightning's weight averaging with a decay warm-up):
    validation, checkpoints' ``state_dict`` and the weights after ``fit`` are the averaged ones (checkpoints keep
    the raw weights under ``current_model_state``).

    ``init_weights`` fine-tunes from a Keras weights file of the
    original (``.h5``/``.keras``, e.g. a user's notebook model) or a Lightning checkpoint of this module: it is
    loaded when a fit starts fresh (a resumed fit restores its own checkpoint instead).

    Logged per epoch (names shared with checkpointing, early stopping and Ray Tune): ``train/loss``,
    ``val/loss`` and ``val/{dice,iou,precision,recall,accuracy,specificity}`` pooled over all validation
    pixels (as the paper), the same with ``_per_image`` (mean over slices), and with ``hausdorff=True``
    ``val/hd``, ``val/hd95`` (pixels, or mm with ``pixel_spacing_mm``) and ``val/hd_empty``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_filters: int = 16,
        depth: int = 4,
        dropout_scale: float = 1.0,
        dropout_start_epoch: int = 0,
        batch_norm: bool = False,
        input_scale: float = 1.0 / 255.0,
        input_norm: str = "scale",
        loss: str = "focal",
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        loss_eps: float | None = None,
        lr: float = 1e-3,
        adam_eps: float = 1e-7,
        keras_adam: bool = True,
        weight_decay: float = 0.0,
        scheduler: str = "none",
        threshold: float = 0.5,
        hausdorff: bool = True,
        pixel_spacing_mm: Sequence[float] | None = None,
        channels_last: bool = True,
        init_weights: str | None = None,
        arch: str = PAPER_UNET,
        encoder: str = DEFAULT_ENCODER,
        norm: str = "none",
        deep_supervision: bool = False,
        optimizer: str | None = None,
        momentum: float = 0.99,
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        resolve_optimizer(optimizer, keras_adam)
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"model.scheduler: unknown schedule {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if warmup_epochs < 0:
            raise ConfigError(f"model.warmup_epochs must be >= 0, got {warmup_epochs}")
        if not 0 <= min_lr <= lr:
            raise ConfigError(f"model.min_lr must be in [0, model.lr={lr}], got {min_lr}")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ConfigError(f"model.ema_decay must be in (0, 1) (e.g. 0.999) or null for none, got {ema_decay}")
        self.save_hyperparameters()
        self.net = build_network(arch, encoder, in_channels, base_filters, depth, dropout_scale, norm, batch_norm,
                                 input_scale, deep_supervision, input_norm)
        self.dropout_rates = {layer: layer.p for layer in self.net.modules()
                              if isinstance(layer, torch.nn.Dropout) and layer.p > 0}
        if dropout_start_epoch < 0 or int(dropout_start_epoch) != dropout_start_epoch:
            raise ConfigError(f"model.dropout_start_epoch must be a whole number of epochs >= 0, got "
                              f"{dropout_start_epoch}")
        if dropout_start_epoch and not self.dropout_rates:
            raise ConfigError(f"model.dropout_start_epoch={dropout_start_epoch} delays dropout, but this network has "
                              f"none (model.arch={arch}, model.dropout_scale={dropout_scale})")
        self.loss_fn = build_loss(loss, gamma=focal_gamma, alpha=focal_alpha, eps=loss_eps)
        if deep_supervision:
            self.loss_fn = DeepSupervisionLoss(self.loss_fn)
        self.val_overlap = OverlapMetrics(threshold)
        self.val_hausdorff = HausdorffMetrics(threshold, pixel_spacing_mm) if hausdorff else None
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
        image_size = getattr(self.trainer.datamodule, "hparams", {}).get("image_size")
        if image_size is not None:  # before any step: a size the network cannot take stops here, named
            check_image_size(self.net, image_size, self.hparams.get("arch", PAPER_UNET), self.hparams.in_channels)
        if stage == "fit" and self.hparams.get("init_weights") and self.trainer.ckpt_path is None:
            self.load_init_weights(self.hparams.init_weights)
        # XLA: Hausdorff runs SciPy on the host, a device sync every validation step; skip it (docs/tpu.md).
        if self.val_hausdorff is not None and isinstance(self.trainer.accelerator, XLAAccelerator):
            rank_zero_warn("hausdorff=True is skipped on XLA (SciPy syncs with the host each step): no val/hd*")
            self.val_hausdorff = None

    def load_init_weights(self, path: str | Path) -> None:
        """Copy the network weights of a Keras file (``.h5``/``.keras``) or a Lightning checkpoint into ours.

        Raises:
            ValueError: a missing file or a different architecture; the message names the file.
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"init_weights: {path} is not a file (expected a .ckpt, .h5 or .keras file)")
        if path.suffix in (".h5", ".keras"):
            if self.hparams.get("arch", PAPER_UNET) != PAPER_UNET:
                raise ConfigError(f"init_weights: {path} holds the paper U-Net's Keras weights, but model.arch is "
                                  f"{self.hparams.arch}")
            from lightning_bts.keras.weights import load_keras_weights

            load_keras_weights(self.net, path)
            return
        from lightning_bts.training.checkpoint_file import read_checkpoint

        state = read_checkpoint(path).get("state_dict", {})
        weights = {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}
        try:
            self.net.load_state_dict(weights)
        except RuntimeError as error:
            raise ValueError(f"init_weights: {path} does not hold this network's weights "
                             f"(arch={self.hparams.get('arch', PAPER_UNET)}, in_channels={self.hparams.in_channels}, "
                             f"base_filters={self.hparams.base_filters}, depth={self.hparams.depth}): "
                             f"{' '.join(str(error).split())[:300]}") from error

    def forward(self, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(N, 1, H, W)`` for uint8 or float images ``(N, C, H, W)`` in 0..255 (in training with deep
        supervision: a list, the main logits first, then the side outputs)."""
        images = images.float()
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def on_train_epoch_start(self) -> None:
        """Late dropout: rate 0 before ``dropout_start_epoch``, the network's own rates from then on (also on
        resuming, since the rates are set from the epoch and not saved)."""
        if not self.hparams.get("dropout_start_epoch", 0):
            return
        on = self.current_epoch >= self.hparams.dropout_start_epoch
        for layer, rate in self.dropout_rates.items():
            layer.p = rate if on else 0.0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(self(batch["image"]), batch["mask"])  # deep supervision: the loss takes the list
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]),
                 sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["mask"])
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]),
                 sync_dist=True)
        self.val_overlap.update(logits.float(), batch["mask"])
        if self.val_hausdorff is not None:
            self.val_hausdorff.update(logits.float(), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_overlap.compute()
        self.val_overlap.reset()
        if self.val_hausdorff is not None:
            scores.update(self.val_hausdorff.compute())
            self.val_hausdorff.reset()
        # One host transfer for all scores: on XLA one small graph instead of one per .item(), and ModelCheckpoint
        # compares CPU values instead of compiling a comparison graph on the device in epoch 2.
        scores = dict(zip(scores, torch.stack([value.float() for value in scores.values()]).cpu()))
        dice = scores.pop("dice")
        # Already global (torchmetrics syncs on compute); sync_dist averages equal values, which costs nothing
        # and tells Lightning these are not per-process numbers.
        self.log(MONITOR, dice, prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{name}": value for name, value in scores.items()}, sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        name = resolve_optimizer(hp.get("optimizer"), hp.get("keras_adam", True))
        optimizer = build_optimizer(name, self.parameters(), hp.lr, hp.weight_decay, hp.adam_eps,
                                    hp.get("momentum", 0.99))
        warmup_epochs, min_lr = hp.get("warmup_epochs", 0.0), hp.get("min_lr", 0.0)
        if hp.scheduler == "none" and not warmup_epochs:
            return optimizer
        schedulers = lightning_schedulers(optimizer, self.trainer, hp.scheduler, warmup_epochs, min_lr, MONITOR)
        return [optimizer], schedulers

    def configure_callbacks(self) -> list[pl.Callback]:
        """Weight averaging (``ema_decay``): an EMA of the weights after every optimizer step, with warm-up."""
        if self.hparams.get("ema_decay") is None:
            return []
        from lightning_bts.training.ema import WarmupEMA

        return [WarmupEMA(decay=self.hparams.ema_decay)]

