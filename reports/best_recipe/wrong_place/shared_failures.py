"""Are the shipped model's failed validation slices the same for every other model trained on fold 0?

Usage: python shared_failures.py (from the repository root; reads the committed per-image CSVs, trains nothing)
A slice fails when its Dice after the model's own post-processing is under 0.1 (``NOT_FOUND_DICE``, the cut of
``not_found`` in metrics.json). For each other model's
``validation_postprocessed_per_image.csv`` under ``reports/best_recipe`` (361 validation slices): how many slices it
fails and how many of them the shipped model fails too; then, for each of the shipped model's failed slices, how
many of the other models fail it; and what the shipped model's scores would be without those slices.
"""
import json
from pathlib import Path

import pandas as pd

from lightning_bts.evaluation.breakdown import NOT_FOUND_DICE, subgroup_scores

REPORTS = Path("reports/best_recipe")
SHIPPED = REPORTS / "mirror_run" / "validation_postprocessed_per_image.csv"
SHIPPED_METRICS = SHIPPED.with_name("validation_postprocessed_metrics.json")


shipped = pd.read_csv(SHIPPED, dtype={"key": str})
failed = set(shipped.loc[shipped["dice"] < NOT_FOUND_DICE, "key"])
print(f"shipped model ({SHIPPED}): {len(failed)} of {len(shipped)} validation slices under {NOT_FOUND_DICE:g} Dice")
counts = dict.fromkeys(failed, 0)
others = 0
for path in sorted(REPORTS.rglob("validation_postprocessed_per_image.csv")):
    scores = pd.read_csv(path, dtype={"key": str})
    if path == SHIPPED or len(scores) != len(shipped):
        continue
    others += 1
    own = set(scores.loc[scores["dice"] < NOT_FOUND_DICE, "key"])
    print(f"{path.parent.relative_to(REPORTS)}: {len(own)} failed, {len(own & failed)} of them the shipped model's too")
    for key in own & failed:
        counts[key] += 1
print(f"\nthe shipped model's failed slices, failed by how many of the {others} other models:")
print(" ".join(f"{key}:{counts[key]}" for key in sorted(counts, key=lambda key: (counts[key], key))))
print(f"failed by all {others}: {sum(n == others for n in counts.values())}; by at least 20: "
      f"{sum(n >= 20 for n in counts.values())}")
metrics, missed = json.loads(SHIPPED_METRICS.read_text()), subgroup_scores(shipped)["not_found"]
print(f"shipped model, all slices: pooled {100 * metrics['dice']:.2f} %, per slice "
      f"{100 * metrics['per_image']['dice']:.2f} %; without its failed slices "
      f"({100 * missed['tumor_pixel_share']:.1f} % of the tumour pixels): pooled {100 * missed['others_dice']:.2f} %, "
      f"per slice {100 * missed['others_dice_per_slice']:.2f} %")
print("failed slices by tumour type:", shipped[shipped["key"].isin(failed)]["tumor_type"].value_counts().to_dict())
print("by patient group:", shipped[shipped["key"].isin(failed)]["patient_group"].value_counts().to_dict())
