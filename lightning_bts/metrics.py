"""Segmentation metrics: pooled over all pixels (as the paper computed them) and as a mean per image.

Both come from torchmetrics' ``BinaryStatScores`` (TP, FP, TN, FN counts); the ratios are computed here so
that the rule for empty masks is explicit rather than a silent NaN that drops out of an average:

    **A ratio whose denominator is zero is 1 when the prediction is perfect (FP = FN = 0), else 0.**

So an image with no tumour and no predicted tumour scores Dice 1; an image with tumour and an empty
prediction scores precision 0 (not NaN), and pulls the mean down as it should.

Hausdorff distances are computed with SciPy's exact Euclidean distance transform on mask boundaries, in
pixels of the evaluated grid, or in mm when a pixel spacing is given. When exactly one of prediction and
target is empty the distance is undefined; we then score the image diagonal (the largest distance possible
on that grid), and when both are empty, 0. The count of such images is reported as ``hd_empty``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryStatScores

RATIO_NAMES = ("dice", "iou", "precision", "recall", "accuracy", "specificity")


def ratios_from_stats(
    tp: torch.Tensor, fp: torch.Tensor, tn: torch.Tensor, fn: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Dice, IoU, precision, recall, accuracy and specificity from confusion counts (any equal shapes)."""
    tp, fp, tn, fn = (x.double() for x in (tp, fp, tn, fn))
    perfect = (fp == 0) & (fn == 0)

    def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        empty_value = perfect.double()
        return torch.where(denominator > 0, numerator / denominator.clamp(min=1), empty_value)

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "accuracy": ratio(tp + tn, tp + fp + tn + fn),
        "specificity": ratio(tn, tn + fp),
    }


def logit_threshold(threshold: float) -> float:
    """The logit that corresponds to probability ``threshold`` (so masks come from logits, no sigmoid)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold}")
    return math.log(threshold / (1.0 - threshold))


class OverlapMetrics(nn.Module):
    """Pooled and per-image overlap metrics over an evaluation set.

    ``update`` takes logits and binary targets ``(N, 1, H, W)``; predictions are ``logits > logit(threshold)``.
    Inputs are binarised here and argument validation is off, so updates never sync with the host (XLA-safe).
    ``compute`` returns ``{name: pooled value}`` and ``{name_per_image: mean over images}``.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        self._logit_threshold = logit_threshold(threshold)
        self.pooled = BinaryStatScores(multidim_average="global", validate_args=False)
        self.per_image = BinaryStatScores(multidim_average="samplewise", validate_args=False)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        preds = (logits.detach() > self._logit_threshold).long().flatten(1)
        target = (target > 0.5).long().flatten(1)
        self.pooled.update(preds, target)
        self.per_image.update(preds, target)

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, tn, fn, _ = self.pooled.compute().unbind(-1)
        results = ratios_from_stats(tp, fp, tn, fn)
        tp, fp, tn, fn, _ = self.per_image.compute().unbind(-1)
        per_image = ratios_from_stats(tp, fp, tn, fn)
        results.update({f"{name}_per_image": values.mean() for name, values in per_image.items()})
        return {name: value.float() for name, value in results.items()}

    def per_image_scores(self) -> dict[str, torch.Tensor]:
        """Each image's ratios, in update order (for per-slice tables and paired tests)."""
        tp, fp, tn, fn, _ = self.per_image.compute().unbind(-1)
        return {name: value.float() for name, value in ratios_from_stats(tp, fp, tn, fn).items()}

    def reset(self) -> None:
        self.pooled.reset()
        self.per_image.reset()


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _crop_to_masks(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the smallest box that holds them.

    Hausdorff distances only look at the two boundaries, which lie inside the box, and Euclidean distances
    between pixels inside it do not depend on what lies outside, so the distances are exact; the distance
    transforms then cover the tumour's box instead of the whole slice (1.2 instead of 28 ms a slice on 300 of the
    shared set's 512x512 masks, 2 CPU cores).
    The boundaries do not change either: a mask pixel on the box's edge has its outward neighbour outside both
    masks, so it is a boundary pixel with or without the cut.
    """
    both = pred | target
    box = []
    for axis in range(both.ndim):
        present = np.flatnonzero(both.any(axis=tuple(a for a in range(both.ndim) if a != axis)))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return pred[tuple(box)], target[tuple(box)]


def hausdorff_distances(
    pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[float, float, bool]:
    """Hausdorff distance and HD95 between two binary masks ``(H, W)`` (or volumes ``(D, H, W)``), and whether
    one mask was empty.

    HD95 is the larger of the two directed 95th percentiles of boundary-to-boundary distances (MONAI's
    definition). Units: pixels, or the units of ``spacing`` (one value per axis) when given. An empty mask
    against a non-empty one scores the diagonal of the image (or volume).
    """
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    sampling = tuple(spacing) if spacing is not None else (1.0,) * pred.ndim
    if not pred.any() and not target.any():
        return 0.0, 0.0, False
    if not pred.any() or not target.any():
        diagonal = float(math.hypot(*(size * step for size, step in zip(pred.shape, sampling))))
        return diagonal, diagonal, True
    pred, target = _crop_to_masks(pred, target)
    pred_edge, target_edge = _boundary(pred), _boundary(target)
    to_target = ndimage.distance_transform_edt(~target_edge, sampling=sampling)[pred_edge]
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=sampling)[target_edge]
    hd = float(max(to_target.max(), to_pred.max()))
    hd95 = float(max(np.percentile(to_target, 95), np.percentile(to_pred, 95)))
    return hd, hd95, False


class HausdorffMetrics(Metric):
    """Per-image Hausdorff distance and HD95, averaged over images.

    Moves each batch's masks to the host (SciPy), so it syncs: leave it out where host syncs hurt (XLA).
    """

    full_state_update = False

    def __init__(self, threshold: float = 0.5, spacing: Sequence[float] | None = None) -> None:
        super().__init__()
        self._logit_threshold = logit_threshold(threshold)
        self.spacing = tuple(spacing) if spacing is not None else None
        self.add_state("hd", default=[], dist_reduce_fx="cat")
        self.add_state("hd95", default=[], dist_reduce_fx="cat")
        self.add_state("empty", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        preds = (logits.detach() > self._logit_threshold).cpu().numpy()
        targets = (target.detach() > 0.5).cpu().numpy()
        rows = [hausdorff_distances(p.squeeze(0), t.squeeze(0), self.spacing) for p, t in zip(preds, targets)]
        hd, hd95, empty = zip(*rows)
        # States on the metric's device, as every other score: the module stacks them all into one host copy,
        # and a distributed sync gathers them on the device (a CUDA run failed on CPU states here).
        self.hd.append(torch.tensor(hd, dtype=torch.float64, device=self.device))
        self.hd95.append(torch.tensor(hd95, dtype=torch.float64, device=self.device))
        self.empty.append(torch.tensor(empty, dtype=torch.float64, device=self.device))

    def per_image_scores(self) -> dict[str, torch.Tensor]:
        cat = torch.cat if isinstance(self.hd, list) else (lambda x: x)
        return {"hd": cat(self.hd).float(), "hd95": cat(self.hd95).float()}

    def compute(self) -> dict[str, torch.Tensor]:
        if isinstance(self.hd, list) and not self.hd:
            raise RuntimeError("HausdorffMetrics.compute() called before any update()")
        scores = self.per_image_scores()
        empty = torch.cat(self.empty) if isinstance(self.empty, list) else self.empty
        return {"hd": scores["hd"].mean(), "hd95": scores["hd95"].mean(), "hd_empty": empty.sum().float()}
