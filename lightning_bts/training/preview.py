"""The picture a run ends with: a few validation slices, the true outline and the predicted one.

Numbers say how well a model does; a picture says what it does. :class:`ValidationPreview` writes
``validation_preview.png`` into the run folder when fitting ends (``fit.py`` prints its path), drawn with
:func:`outline_figure`: the image as the model saw it, the true tumour outlined in green, the prediction in red.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from lightning_bts.metrics import logit_threshold  # noqa: E402

PREVIEW_FILE = "validation_preview.png"


def outline_figure(images: Sequence[np.ndarray], truths: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                   titles: Sequence[str], caption: str = "green: true tumour, red: prediction") -> bytes:
    """PNG bytes: one panel per slice, ``images`` (H, W) or (H, W, C) uint8 with both masks (H, W) outlined."""
    figure, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.5), squeeze=False)
    for axis, image, truth, prediction, title in zip(axes[0], images, truths, predictions, titles):
        # the middle channel: the slice itself, also where the others hold its neighbours (data.neighbour_slices)
        axis.imshow(image if image.ndim == 2 else image[..., image.shape[-1] // 2], cmap="gray")
        for mask, colour in ((truth, "lime"), (prediction, "red")):
            if mask.any():
                axis.contour(mask, levels=[0.5], colors=colour, linewidths=1)
        axis.set_title(title, fontsize=8)
        axis.axis("off")
    figure.suptitle(caption, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def preview_indices(tumour_pixels: Sequence[int], count: int) -> list[int]:
    """Positions of ``count`` slices spread evenly over those with tumour (all slices if none has tumour)."""
    candidates = [i for i, pixels in enumerate(tumour_pixels) if pixels > 0] or list(range(len(tumour_pixels)))
    if len(candidates) <= count:
        return candidates
    return [candidates[round(k)] for k in np.linspace(0, len(candidates) - 1, count)]


class ValidationPreview(Callback):
    """At the end of fitting, writes :data:`PREVIEW_FILE` with ``count`` validation slices into the run folder.

    The slices are the same for every run on the same split (spread evenly over the validation slices that hold
    tumour), so two runs' pictures compare directly. The model predicts as it stands after the last epoch.
    """

    def __init__(self, count: int = 4) -> None:
        self.count = count
        self.path: Path | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if self.count <= 0 or datamodule is None:
            return
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, or rank 0 waits forever
        if not trainer.is_global_zero or log_dir is None:
            return
        indices = datamodule.indices("val")
        if len(indices) == 0:
            return
        data = datamodule.data
        picks = [indices[i] for i in preview_indices([int(data.masks[i].sum()) for i in indices], self.count)]
        images = np.stack([data.images[i] for i in picks])
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        cut = logit_threshold(pl_module.hparams.get("threshold", 0.5))
        with torch.no_grad():
            predicted = (pl_module(batch).float() > cut).cpu().numpy()[:, 0]
        pl_module.train(was_training)
        truths = [data.masks[i].reshape(predicted.shape[1:]) > 0 for i in picks]
        keys = datamodule.records["key"].to_numpy()
        titles = [f"{keys[i]}: Dice {_dice(t, p):.2f}" for i, t, p in zip(picks, truths, predicted)]
        self.path = Path(log_dir) / PREVIEW_FILE
        self.path.write_bytes(outline_figure(list(images), truths, list(predicted), titles))


def _dice(truth: np.ndarray, prediction: np.ndarray) -> float:
    total = truth.sum() + prediction.sum()
    return 1.0 if total == 0 else 2.0 * float((truth & prediction).sum()) / float(total)
