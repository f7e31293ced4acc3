"""The LightningModule: the paper's U-Net, a loss chosen by name, Adam as Keras configures it, metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import XLAAccelerator
from pytorch_lightning.utilities import rank_zero_warn

from lightning_bts.losses import build_loss
from lightning_bts.metrics import HausdorffMetrics, OverlapMetrics
from lightning_bts.models.unet import UNet, paper_dropout_rates
from lightning_bts.optim import KerasAdam

SCHEDULERS = ("none", "cosine", "plateau")


class SegmentationModule(pl.LightningModule):
    """Trains :class:`~lightning_bts.models.UNet` on ``{"image", "mask"}`` batches.

    Network arguments (``in_channels`` ... ``input_scale``) build the U-Net; ``dropout_scale`` multiplies the
    paper's dropout rates (0 turns dropout off). Loss arguments pick the loss by name (``focal``, ``bce``,
    ``dice``, ``dice_focal``, ``dice_bce``); ``loss_eps`` overrides the probability clipping (0 = none; by
    default each loss clips as Keras trains it). The optimiser is Keras' Adam step for step
    (:class:`~lightning_bts.optim.KerasAdam`: ``lr`` 1e-3, ``adam_eps`` 1e-7 added before bias correction);
    ``keras_adam=False`` gives torch's stock Adam. ``init_weights`` fine-tunes from a Keras weights file of the
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
        batch_norm: bool = False,
        input_scale: float = 1.0 / 255.0,
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
    ) -> None:
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if dropout_scale < 0:
            raise ValueError(f"dropout_scale must be >= 0, got {dropout_scale}")
        self.save_hyperparameters()
        dropout_down, dropout_up = paper_dropout_rates(depth)
        self.net = UNet(
            in_channels=in_channels,
            base_filters=base_filters,
            depth=depth,
            dropout_down=[min(rate * dropout_scale, 0.9) for rate in dropout_down],
            dropout_up=[min(rate * dropout_scale, 0.9) for rate in dropout_up],
            batch_norm=batch_norm,
            input_scale=input_scale,
        )
        self.loss_fn = build_loss(loss, gamma=focal_gamma, alpha=focal_alpha, eps=loss_eps)
        self.val_overlap = OverlapMetrics(threshold)
        self.val_hausdorff = HausdorffMetrics(threshold, pixel_spacing_mm) if hausdorff else None
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
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
            from lightning_bts.keras_io import load_keras_weights

            load_keras_weights(self.net, path)
            return
        from lightning_bts.checkpoints import read_checkpoint

        state = read_checkpoint(path).get("state_dict", {})
        weights = {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}
        try:
            self.net.load_state_dict(weights)
        except RuntimeError as error:
            raise ValueError(f"init_weights: {path} does not hold this U-Net's weights "
                             f"(in_channels={self.hparams.in_channels}, base_filters={self.hparams.base_filters}, "
                             f"depth={self.hparams.depth}): {' '.join(str(error).split())[:300]}") from error

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1, H, W)`` for uint8 or float images ``(N, C, H, W)`` in 0..255."""
        images = images.float()
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(self(batch["image"]), batch["mask"])
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
        self.log("val/dice", dice, prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{name}": value for name, value in scores.items()}, sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        adam = KerasAdam if hp.get("keras_adam", True) else torch.optim.Adam
        optimizer = adam(self.parameters(), lr=hp.lr, eps=hp.adam_eps, weight_decay=hp.weight_decay)
        if hp.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.trainer.max_epochs, 1))
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        if hp.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/dice"}}
        return optimizer

