"""Which connected component to keep: the largest (the selection's rule) or the most confident one?

Validation patients only. Usage: python component_choice.py CHECKPOINT
Mirror TTA, every slice at its original size; at thresholds 0.3/0.4/0.5, the pooled and per-slice Dice of keeping
all components, the largest, the one with the most probability mass (sum of probabilities), the one holding the
most probable pixel, or the one with the highest mean probability.
"""
import sys

import cv2
import numpy as np

from lightning_bts.evaluation.data import evaluation_data, iterate_slices
from lightning_bts.evaluation.postprocess import PostProcessing
from lightning_bts.evaluation.predictor import Predictor, to_original_size

RULES = ("all", "largest", "mass", "peak", "mean")
THRESHOLDS = (0.3, 0.4, 0.5)

predictor = Predictor.from_checkpoints([sys.argv[1]], "cpu", "32-true", tta="mirror", postprocessing=PostProcessing())
datamodule, _ = evaluation_data(predictor.sources, part="val")
totals = {(rule, t): np.zeros(3) for rule in RULES for t in THRESHOLDS}
per_slice = {(rule, t): [] for rule in RULES for t in THRESHOLDS}
n_slices = 0
for item in iterate_slices(predictor, datamodule, "val", ("mirror",)):
    probability, truth = to_original_size(item.probabilities[0], item.mask.shape), item.mask
    tumour = int(truth.sum())
    for t in THRESHOLDS:
        count, labels, stats, _ = cv2.connectedComponentsWithStats((probability > t).view(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        overlaps = np.bincount(labels[truth], minlength=count)[1:]
        mass = np.bincount(labels.ravel(), weights=probability.ravel(), minlength=count)[1:]
        peak = np.zeros(count)
        np.maximum.at(peak, labels.ravel(), probability.ravel())
        scores = {"largest": areas, "mass": mass, "peak": peak[1:], "mean": mass / np.maximum(areas, 1)}
        for rule in RULES:
            keep = np.ones(len(areas), bool)
            if rule != "all" and len(areas) > 1:
                keep = np.arange(len(areas)) == int(np.argmax(scores[rule]))
            tp, predicted = overlaps[keep].sum(), areas[keep].sum()
            totals[(rule, t)] += [tp, predicted - tp, tumour - tp]
            per_slice[(rule, t)].append(2 * tp / max(predicted + tumour, 1))
    n_slices += 1
print(f"{sys.argv[1]}: {n_slices} validation slices, mirror TTA, original size")
for t in THRESHOLDS:
    for rule in RULES:
        tp, fp, fn = totals[(rule, t)]
        print(f"threshold {t}  {rule:8s} pooled {100 * 2 * tp / (2 * tp + fp + fn):.2f} %  "
              f"per slice {100 * np.mean(per_slice[(rule, t)]):.2f} %")
