"""Are the shipped model's failed validation slices the same for every other model trained on fold 0?

Usage: python shared_failures.py (from the repository root; reads the committed per-image CSVs, trains nothing)
A slice fails when its Dice after the model's own post-processing is under 0.1. For each other model's
``validation_postprocessed_per_image.csv`` under ``reports/best_recipe`` (361 validation slices): how many slices it
fails and how many of them the shipped model fails too; then, for each of the shipped model's failed slices, how
many of the other models fail it; and what the shipped model's scores would be without those slices.
"""
from pathlib import Path

import pandas as pd

REPORTS = Path("reports/best_recipe")
SHIPPED = REPORTS / "mirror_run" / "validation_postprocessed_per_image.csv"


def pooled_dice(scores: pd.DataFrame) -> float:
    tp, fp, fn = scores[["tp", "fp", "fn"]].sum()
    return 2 * tp / (2 * tp + fp + fn)


shipped = pd.read_csv(SHIPPED, dtype={"key": str})
failed = set(shipped.loc[shipped["dice"] < 0.1, "key"])
print(f"shipped model ({SHIPPED}): {len(failed)} of {len(shipped)} validation slices under 0.1 Dice")
counts = dict.fromkeys(failed, 0)
others = 0
for path in sorted(REPORTS.rglob("validation_postprocessed_per_image.csv")):
    scores = pd.read_csv(path, dtype={"key": str})
    if path == SHIPPED or len(scores) != len(shipped):
        continue
    others += 1
    own = set(scores.loc[scores["dice"] < 0.1, "key"])
    print(f"{path.parent.relative_to(REPORTS)}: {len(own)} failed, {len(own & failed)} of them the shipped model's too")
    for key in own & failed:
        counts[key] += 1
print(f"\nthe shipped model's failed slices, failed by how many of the {others} other models:")
print(" ".join(f"{key}:{counts[key]}" for key in sorted(counts, key=lambda key: (counts[key], key))))
print(f"failed by all {others}: {sum(n == others for n in counts.values())}; by at least 20: "
      f"{sum(n >= 20 for n in counts.values())}")
rest = shipped[~shipped["key"].isin(failed)]
share = shipped.loc[shipped["key"].isin(failed), "tumor_pixels"].sum() / shipped["tumor_pixels"].sum()
print(f"shipped model, all slices: pooled {100 * pooled_dice(shipped):.2f} %, per slice "
      f"{100 * shipped['dice'].mean():.2f} %; without its failed slices ({100 * share:.1f} % of the tumour pixels): "
      f"pooled {100 * pooled_dice(rest):.2f} %, per slice {100 * rest['dice'].mean():.2f} %")
print("failed slices by tumour type:", shipped[shipped["key"].isin(failed)]["tumor_type"].value_counts().to_dict())
print("by patient group:", shipped[shipped["key"].isin(failed)]["patient_group"].value_counts().to_dict())
