"""Post-processing chosen without flip TTA, for the ablation's post-processing row.

Why not ``scripts/select_postprocessing.py``: its first stage may switch flip TTA on, and every later stage is then
chosen on TTA-averaged probabilities, so its choice would mix two ingredients the ablation adds one at a time. This
runs the same stages on the same pooled validation Dice (:mod:`lightning_bts.evaluation.selection`) with every
TTA candidate scored below any other, which is exactly "select, TTA off"; the TTA row then uses the script itself.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from lightning_bts.evaluation.data import evaluation_data
from lightning_bts.evaluation.postprocess import PostProcessing
from lightning_bts.evaluation.predictor import Predictor
from lightning_bts.evaluation.selection import METRIC, Candidate, choose, validation_dice
from lightning_bts.evaluation.settings import InferenceSettings, store_settings


def select_without_tta(checkpoint: Path, device: str = "auto", cache_dir: Path | None = None) -> dict[str, Any]:
    """select_postprocessing.py's stages on ``checkpoint``'s validation patients with flip TTA ruled out, so the
    post-processing row measures post-processing alone; stores the choice in ``checkpoint``; returns its record.
    """
    predictor = Predictor.from_checkpoints([checkpoint], device, "32-true", tta=False, postprocessing=PostProcessing())
    datamodule, _ = evaluation_data(predictor.sources, part="val", cache_dir=cache_dir)
    dice, n_images = validation_dice([(predictor, datamodule)])
    chosen, stages = choose({c: (-math.inf if c.tta else d) for c, d in dice.items()})
    record = {"metric": METRIC, "part": "val", "n_images": n_images, "checkpoints": [str(checkpoint)],
              "tta": "not allowed (ablation: post-processing alone)",
              "baseline_dice": dice[Candidate(False, PostProcessing())], "chosen": chosen.describe(),
              "chosen_dice": dice[chosen],
              "stages": stages[1:], "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    store_settings([checkpoint], InferenceSettings(chosen.rule, False, "checkpoint"), record)
    print(f"[ablation] chosen without TTA: {chosen.describe()} (validation Dice {100 * dice[chosen]:.2f} %, "
          f"paper's rule {100 * record['baseline_dice']:.2f} %)", flush=True)
    return record
