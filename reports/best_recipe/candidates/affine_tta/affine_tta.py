"""Does test-time augmentation beyond mirroring help: small zooms and rotations, on top of mirror TTA?

Validation patients only. Usage: python affine_tta.py CHECKPOINT
Each extra view warps the preprocessed slice (cv2.warpAffine about the centre, zeros outside), predicts it with
mirror TTA and warps the probabilities back; a TTA set's probability is the mean over its views. The views stay
inside the recipe's training augmentation (zoom +-15 %, rotation +-15 degrees). Every slice is scored at its
original size with the shipped rule (largest connected component) at thresholds 0.4 and 0.5.
"""
import sys

import cv2
import numpy as np
from torch.utils.data import DataLoader

from lightning_bts.data.dataset import SliceDataset
from lightning_bts.evaluation.data import evaluation_data, read_original_mask
from lightning_bts.evaluation.postprocess import PostProcessing
from lightning_bts.evaluation.predictor import Predictor, to_original_size
from lightning_bts.evaluation.selection import SliceCounter

VIEWS = {"identity": (0.0, 1.0), "zoom_out": (0.0, 0.9), "zoom_in": (0.0, 1.1), "rotate_minus": (-10.0, 1.0),
         "rotate_plus": (10.0, 1.0)}
SETS = {"mirror": ("identity",), "mirror + zooms": ("identity", "zoom_out", "zoom_in"),
        "mirror + rotations": ("identity", "rotate_minus", "rotate_plus"), "mirror + zooms + rotations": tuple(VIEWS)}
THRESHOLDS = (0.4, 0.5)


def warp(array: np.ndarray, angle: float, zoom: float, inverse: bool = False) -> np.ndarray:
    """``array`` (S, S) or (S, S, C) rotated by ``angle`` degrees and zoomed by ``zoom`` about its centre."""
    size = array.shape[0]
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, zoom)
    flags = cv2.INTER_LINEAR | (cv2.WARP_INVERSE_MAP if inverse else 0)
    return cv2.warpAffine(array, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


predictor = Predictor.from_checkpoints([sys.argv[1]], "cpu", "32-true", tta="mirror", postprocessing=PostProcessing())
datamodule, _ = evaluation_data(predictor.sources, part="val")
loader = DataLoader(SliceDataset(datamodule.data, datamodule.indices("val")), batch_size=16)
mask_paths = datamodule.records["mask_path"].to_numpy()
rules = {t: PostProcessing(threshold=t, components="largest") for t in THRESHOLDS}
totals = {(name, t): np.zeros(3) for name in SETS for t in THRESHOLDS}
per_slice = {(name, t): [] for name in SETS for t in THRESHOLDS}
for batch in loader:
    images = batch["image"].numpy()  # uint8 (N, C, S, S)
    views = {}
    for view, (angle, zoom) in VIEWS.items():
        warped = np.stack([warp(image.transpose(1, 2, 0), angle, zoom).reshape(image.shape[1], image.shape[2], -1)
                           .transpose(2, 0, 1) for image in images])
        views[view] = [warp(p, angle, zoom, inverse=True) for p in predictor.probabilities(warped)]
    for row, index in enumerate(batch["index"].tolist()):
        truth = read_original_mask(mask_paths[index])
        for name, members in SETS.items():
            probability = to_original_size(np.mean([views[v][row] for v in members], axis=0), truth.shape)
            counter = SliceCounter(probability, truth)
            for t, rule in rules.items():
                tp, fp, fn = counter.counts(rule)
                totals[(name, t)] += [tp, fp, fn]
                per_slice[(name, t)].append(2 * tp / max(2 * tp + fp + fn, 1))
n_slices = len(per_slice[("mirror", THRESHOLDS[0])])
print(f"{sys.argv[1]}: {n_slices} validation slices, original size, largest component")
for t in THRESHOLDS:
    for name in SETS:
        tp, fp, fn = totals[(name, t)]
        print(f"threshold {t}  {name:28s} pooled {100 * 2 * tp / (2 * tp + fp + fn):.2f} %  "
              f"per slice {100 * np.mean(per_slice[(name, t)]):.2f} %  precision {100 * tp / (tp + fp):.2f} %  "
              f"recall {100 * tp / (tp + fn):.2f} %")
