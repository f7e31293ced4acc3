"""How far can any model tried on fold 0 get on the test split? A bound from the committed test scores.

Usage: python test_bound.py (from the repository root; reads the committed per-image CSVs, trains nothing)
Reads every ``per_image.csv`` of the test split under ``reports/best_recipe`` (301 slices, 17 patients; each scored
once, after its selection on validation) and prints:
1. each model's pooled Dice, its Dice on the patient with the most tumour pixels (``MR040240``) and on the others;
2. the Dice that patient would need for the shipped model's pooled test Dice to reach the issue's 0.82, the other
   patients' masks unchanged and its own predicted area equal to its true one (then its denominator 2 TP + FP + FN is
   twice its tumour pixels);
3. an oracle that picks, for each slice, the model with the highest Dice on it: its pooled and per-slice Dice bound
   what choosing among these models could ever give (the choice uses the test masks, so it is a bound, not a model);
4. for each slice the shipped model fails (Dice under ``NOT_FOUND_DICE``) on validation and on test, whether the
   slice filed next to it (the figshare slice number one lower or higher, same patient) is failed too: the dataset
   stores single slices, but most patients' slices are consecutive numbers, so a model that saw its neighbours
   (2.5-D input) would only gain there if the neighbours were found;
5. whether consecutive figshare numbers of one patient are neighbouring slices of a scan: the Dice between the true
   masks of every such pair of the shared set (same patient ID, same size), against the overlap of two masks of one
   patient drawn at random.
"""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lightning_bts.evaluation.breakdown import NOT_FOUND_DICE, subgroup_scores

REPORTS = Path("reports/best_recipe")
SHIPPED_TEST = REPORTS / "mirror_test" / "per_image.csv"
SHIPPED_VALIDATION = REPORTS / "mirror_run" / "validation_postprocessed_per_image.csv"
TARGET = 0.82
DATA = Path("../shared/data/figshare_brain_tumor")


def pooled(scores: pd.DataFrame) -> float:
    tp, fp, fn = (float(scores[name].sum()) for name in ("tp", "fp", "fn"))
    return 2 * tp / (2 * tp + fp + fn)


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"key": str, "patient_group": str}).set_index("key").sort_index()


shipped = read(SHIPPED_TEST)
largest = subgroup_scores(shipped.reset_index())["by_patient"]["largest"]["patient_group"]
models = {path.parent.relative_to(REPORTS).as_posix(): read(path)
          for path in sorted(REPORTS.rglob("*per_image.csv")) if "test" in path.as_posix()}
models = {name: scores for name, scores in models.items() if len(scores) == len(shipped)}
print(f"{len(models)} test score files of {len(shipped)} slices; largest patient {largest}")
print(f"{'model':60s} {'pooled':>7s} {largest:>9s} {'others':>7s}")
for name, scores in models.items():
    mine = scores["patient_group"] == largest
    print(f"{name:60s} {100 * pooled(scores):6.2f}% {100 * pooled(scores[mine]):8.2f}% "
          f"{100 * pooled(scores[~mine]):6.2f}%")

mine = shipped["patient_group"] == largest
others = shipped[~mine]
other_numerator = 2 * float(others["tp"].sum())
other_denominator = float((2 * others["tp"] + others["fp"] + others["fn"]).sum())
own_denominator = 2 * float((shipped.loc[mine, "tp"] + shipped.loc[mine, "fn"]).sum())
needed = (TARGET * (other_denominator + own_denominator) - other_numerator) / own_denominator
share = own_denominator / 2 / float((shipped["tp"] + shipped["fn"]).sum())
print(f"\nshipped model: pooled {100 * pooled(shipped):.2f} %, {largest} {100 * pooled(shipped[mine]):.2f} % "
      f"({100 * share:.1f} % of the tumour pixels), the others {100 * pooled(others):.2f} %; "
      f"for {TARGET:.2f} pooled, {largest} would need {100 * needed:.1f} %")

dice = pd.DataFrame({name: scores["dice"] for name, scores in models.items()})
best = dice.idxmax(axis=1)
oracle = pd.DataFrame([models[name].loc[key] for key, name in best.items()])
oracle_largest = pooled(oracle[oracle["patient_group"] == largest])
print(f"oracle over the {len(models)} (best model on each slice): pooled {100 * pooled(oracle):.2f} %, "
      f"per slice {100 * oracle['dice'].mean():.2f} %, {largest} {100 * oracle_largest:.2f} %")


def neighbours_failed(scores: pd.DataFrame, split: str) -> None:
    failed = scores.index[scores["dice"] < NOT_FOUND_DICE]
    with_neighbour = both = 0
    for key in failed:
        near = [f"{int(key) + step:04d}" for step in (-1, 1)]
        group = scores.loc[key, "patient_group"]
        near = [k for k in near if k in scores.index and scores.loc[k, "patient_group"] == group]
        if near:
            with_neighbour += 1
            both += all(scores.loc[k, "dice"] < NOT_FOUND_DICE for k in near)
    print(f"{split}: {len(failed)} slices under {NOT_FOUND_DICE:g} Dice; {with_neighbour} have a neighbour filed "
          f"beside them; for {both} every such neighbour is failed too")


print("\nthe shipped model's failed slices and their neighbours:")
neighbours_failed(read(SHIPPED_VALIDATION), "validation")
neighbours_failed(shipped, "test")


def mask_dice(first: np.ndarray, second: np.ndarray) -> float:
    return 2 * float((first & second).sum()) / float(first.sum() + second.sum())


table = pd.read_csv(DATA / "metadata.csv", dtype={"patient_id": str})
masks = [cv2.imread(str(DATA / path), cv2.IMREAD_GRAYSCALE) > 0 for path in table["mask"]]
pairs = [mask_dice(masks[row], masks[row + 1]) for row in range(len(table) - 1)
         if table.loc[row, "patient_id"] == table.loc[row + 1, "patient_id"]
         and table.loc[row + 1, "slice_id"] == table.loc[row, "slice_id"] + 1
         and masks[row].shape == masks[row + 1].shape]
rng = np.random.default_rng(0)
chance = []
for rows in table.groupby("patient_id").indices.values():
    if len(rows) > 1:
        first, second = rng.choice(rows, 2, replace=False)
        if masks[first].shape == masks[second].shape:
            chance.append(mask_dice(masks[first], masks[second]))
print(f"\nconsecutive slices of one patient: {len(pairs)} pairs, true masks' Dice quartiles "
      f"{np.round(np.quantile(pairs, [0.25, 0.5, 0.75]), 2).tolist()}; two slices of one patient at random: "
      f"{len(chance)} pairs, {np.round(np.quantile(chance, [0.25, 0.5, 0.75]), 2).tolist()}")
