"""Choosing TTA and post-processing on validation data, nnU-Net's way: a rule stays only if it helps.

The checkpoints predict the validation patients of their own fold (recomputed from the data settings they
record and checked against their run's ``splits.json``); members of different folds each predict their own
fold and the slices are pooled (out-of-fold, as nnU-Net chooses post-processing for a fold ensemble). Every
slice is scored at its original size. Then, in four stages, each starting from the choice so far (the paper's
rule, without TTA, at first):

1. TTA: none, flip, mirror (:mod:`lightning_bts.evaluation.tta`; skipped with ``allow_tta=False``, and no
   mirrored inference is run);
2. threshold: :data:`THRESHOLDS`;
3. components: all, the largest only, or dropping those under each of :data:`MIN_AREAS` of the slice;
4. fallback for slices left empty: none, or each of :data:`FALLBACKS`;

the best candidate of a stage replaces the choice only if its pooled validation Dice is higher by more than
``min_gain``; ties keep the simpler choice. Pooled counts of every combination are gathered in one pass over
the data (connected components labelled once per threshold and slice), so the stages cost no extra passes.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from lightning_bts.data import BrainTumorDataModule
from lightning_bts.evaluation.data import evaluation_data, iterate_slices
from lightning_bts.evaluation.postprocess import PostProcessing, most_probable_component
from lightning_bts.evaluation.predictor import Predictor, to_original_size
from lightning_bts.evaluation.settings import InferenceSettings, store_settings
from lightning_bts.evaluation.tta import TTA_MODES, describe_tta

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREAS = (0.0002, 0.0005, 0.001, 0.002, 0.005)  # 52 to 1311 px of a 512x512 slice
FALLBACKS = (0.1, 0.2, 0.3, 0.4)
METRIC = "pooled Dice over the validation slices, each at its original size"


@dataclass(frozen=True)
class Candidate:
    """One combination: a TTA mode and a post-processing rule."""

    tta: str
    rule: PostProcessing

    def describe(self) -> str:
        return self.rule.describe() + describe_tta(self.tta)


def tta_options(allow_tta: bool = True) -> tuple[str, ...]:
    """The TTA modes the selection compares: all of them, simplest first, or only ``none``."""
    return TTA_MODES if allow_tta else ("none",)


def candidate_grid(allow_tta: bool = True) -> list[Candidate]:
    """Every combination the stages can reach (the paper's rule without TTA among them)."""
    components = [("all", 0.0), ("largest", 0.0), *(("drop_small", area) for area in MIN_AREAS)]
    return [Candidate(tta, PostProcessing(threshold, rule, area, fallback))
            for tta, threshold, (rule, area), fallback in itertools.product(
                tta_options(allow_tta), THRESHOLDS, components, (None, *FALLBACKS))]


class SliceCounter:
    """TP, FP and FN of any rule on one slice, from its components' areas and overlaps with the truth.

    Uses :meth:`PostProcessing.kept_components` and :func:`most_probable_component`, the definitions
    :meth:`PostProcessing.apply` uses, so the counts are those of the applied masks (a test checks it).
    """

    def __init__(self, probability: np.ndarray, truth: np.ndarray) -> None:
        self.probability, self.truth = probability, truth
        self.tumour = int(np.count_nonzero(truth))
        self._components: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self._fallbacks: dict[float, tuple[int, int]] = {}

    def counts(self, rule: PostProcessing) -> tuple[int, int, int]:
        if rule.threshold not in self._components:
            above = self.probability > rule.threshold
            count, labels, stats, _ = cv2.connectedComponentsWithStats(above.view(np.uint8), connectivity=8)
            overlaps = np.bincount(labels[self.truth], minlength=count)[1:]
            self._components[rule.threshold] = (stats[1:, cv2.CC_STAT_AREA], overlaps)
        areas, overlaps = self._components[rule.threshold]
        keep = rule.kept_components(areas, self.probability.size)
        predicted, tp = int(areas[keep].sum()), int(overlaps[keep].sum())
        if predicted == 0 and rule.empty_fallback is not None:
            if rule.empty_fallback not in self._fallbacks:
                mask = most_probable_component(self.probability, rule.empty_fallback)
                self._fallbacks[rule.empty_fallback] = (int(mask.sum()), int(np.count_nonzero(mask & self.truth)))
            predicted, tp = self._fallbacks[rule.empty_fallback]
        return tp, predicted - tp, self.tumour - tp


@dataclass
class Selection:
    """The chosen settings, their validation Dice against the paper's rule, and every stage's candidates."""

    settings: InferenceSettings
    baseline_dice: float
    dice: float
    stages: list[dict[str, Any]]
    record: dict[str, Any]


def choose(dice: dict[Candidate, float], min_gain: float = 0.0,
           allow_tta: bool = True) -> tuple[Candidate, list[dict[str, Any]]]:
    """The greedy stages over pooled Dice per candidate (``dice`` must hold :func:`candidate_grid` of the same
    ``allow_tta``; without it the TTA stage is left out)."""
    current = Candidate("none", PostProcessing())
    stages: list[tuple[str, Callable[[Candidate], list[Candidate]]]] = [
        *([("tta", lambda c: [Candidate(mode, c.rule) for mode in TTA_MODES])] if allow_tta else []),
        ("threshold", lambda c: [Candidate(c.tta, dataclasses.replace(c.rule, threshold=t)) for t in THRESHOLDS]),
        ("components", lambda c: [Candidate(c.tta, dataclasses.replace(c.rule, components=rule, min_area=area))
                                  for rule, area in [("all", 0.0), ("largest", 0.0),
                                                     *(("drop_small", a) for a in MIN_AREAS)]]),
        ("empty_fallback", lambda c: [Candidate(c.tta, dataclasses.replace(c.rule, empty_fallback=f))
                                      for f in (None, *FALLBACKS)]),
    ]
    history = []
    for name, options in stages:
        candidates = options(current)
        best = max(candidates, key=lambda c: dice[c])  # the first of equals: simpler settings come first
        kept = dice[best] > dice[current] + min_gain
        history.append({"stage": name, "before": current.describe(), "before_dice": dice[current],
                        "candidates": [{"setting": c.describe(), "dice": dice[c]} for c in candidates],
                        "best": best.describe(), "kept": bool(kept)})
        if kept:
            current = best
    return current, history


def validation_dice(pairs: Sequence[tuple[Predictor, BrainTumorDataModule]],
                    allow_tta: bool = True) -> tuple[dict[Candidate, float], int]:
    """Pooled Dice of every :func:`candidate_grid` combination over the validation slices of each
    (predictor, data module) pair, at each slice's original size; and the number of slices."""
    grid = candidate_grid(allow_tta)
    totals = np.zeros((len(grid), 3), dtype=np.int64)
    n_images = 0
    modes = tta_options(allow_tta)
    for predictor, datamodule in pairs:
        for item in iterate_slices(predictor, datamodule, "val", modes):
            counters = {mode: SliceCounter(to_original_size(p, item.mask.shape), item.mask)
                        for mode, p in zip(modes, item.probabilities)}
            totals += np.array([counters[c.tta].counts(c.rule) for c in grid], dtype=np.int64)
            n_images += 1
    tp, fp, fn = totals.T.astype(np.float64)
    scores = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)
    return dict(zip(grid, scores.tolist())), n_images


def select_postprocessing(
    paths: Sequence[str | Path],
    device: str | torch.device = "auto",
    precision: str = "32-true",
    batch_size: int | None = None,
    cache_dir: str | Path | None = None,
    min_gain: float = 0.0,
    store: bool = True,
    allow_tta: bool = True,
) -> Selection:
    """Chooses TTA and post-processing for the checkpoints ``paths`` on their validation patients.

    ``allow_tta=False`` chooses post-processing alone (TTA stays off and is never computed): the ablation adds
    post-processing and TTA as two ingredients.

    With ``store`` the choice is written into every checkpoint (:func:`lightning_bts.evaluation.settings
    .store_settings`), so evaluation, prediction and the CV report apply it from then on.

    Raises:
        CheckpointError: a checkpoint records no fold or data, or its split changed since training.
        DatasetError: the data folder is missing or its validation part is empty.
    """
    base = Predictor.from_checkpoints(paths, device, precision, tta="none", postprocessing=PostProcessing())
    folds: dict[Any, list[int]] = {}
    for member, info in enumerate(base.sources):
        folds.setdefault(info.data.get("fold"), []).append(member)
    pairs = []
    for members in folds.values():
        group = Predictor([base.models[i] for i in members], base.preprocessing, base.device, "none", precision,
                          sources=[base.sources[i] for i in members])
        datamodule, _ = evaluation_data(group.sources, part="val", batch_size=batch_size, cache_dir=cache_dir)
        pairs.append((group, datamodule))
    dice, n_images = validation_dice(pairs, allow_tta)
    roots = [str(datamodule.hparams.root) for _, datamodule in pairs]
    chosen, stages = choose(dice, min_gain, allow_tta)
    settings = InferenceSettings(chosen.rule, chosen.tta, "checkpoint")
    record = {
        "metric": METRIC, "part": "val", "folds": sorted(f for f in folds if f is not None),
        "data_root": roots[0] if len(set(roots)) == 1 else roots, "n_images": n_images,
        "checkpoints": [str(p) for p in paths], "min_gain": min_gain, "tta_allowed": allow_tta,
        "inference_precision": precision,
        "baseline": Candidate("none", PostProcessing()).describe(),
        "baseline_dice": dice[Candidate("none", PostProcessing())], "chosen": chosen.describe(),
        "chosen_dice": dice[chosen], "stages": stages, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if store:
        store_settings(paths, settings, record)
    return Selection(settings, record["baseline_dice"], dice[chosen], stages, record)
