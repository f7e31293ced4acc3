"""The ablation's report: one table row per finished row, gains over the row above and over the paper, a plot.

Reads only the files the runner left (``RUNS/<row>/row.json``, ``test/metrics.json`` from evaluate.py, the run's
``metrics.csv`` and ``config.yaml``), so the report can be rewritten at any time, and writes ``ablation.md``,
``ablation.csv`` and ``dice_vs_minutes.png``. Every number of the Markdown is in the CSV. ``ci95`` (a patient
bootstrap interval per metric, when evaluate.py wrote one) is used where present and never required.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from lightning_bts.evaluation.outputs import write_files_atomically  # noqa: E402
from lightning_bts.evaluation.tta import check_tta, describe_tta  # noqa: E402
from lightning_bts.experiments.ablation_rows import Ablation, AblationError, RowFiles  # noqa: E402

METRICS = ("dice", "dice_per_image", "precision", "recall", "hd95")
HEADERS = {"dice": "Dice", "dice_per_image": "per-image Dice", "precision": "precision", "recall": "recall",
           "hd95": "HD95"}
CURVE_COLUMNS = ("time/minutes", "val/dice")


def _interval(value: Any) -> tuple[float, float] | None:
    """``[low, high]`` (evaluate.py's form) or ``{"low": .., "high": ..}``; anything else: no interval."""
    if isinstance(value, dict):
        value = [value.get("low"), value.get("high")]
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        return float(value[0]), float(value[1])
    return None


def training_progress(metrics_csv: Path) -> dict[str, float]:
    """Minutes of training at the last validation, and validated epochs, from a run's metrics.csv."""
    if not metrics_csv.is_file():
        return {}
    table = pd.read_csv(metrics_csv)
    result: dict[str, float] = {}
    if "val/dice" in table and "epoch" in table:
        validated = table.dropna(subset=["val/dice"])
        if len(validated):
            result["epochs"] = float(validated["epoch"].max() + 1)
    if "time/minutes" in table and table["time/minutes"].notna().any():
        result["train_minutes"] = float(table["time/minutes"].max())
    return result


def training_precision(config_yaml: Path) -> str:
    """The ``trainer.precision`` a run trained with, from the config fit.py saved ("" when unknown): the same
    minutes hold several times more epochs in bf16 than in fp32 on a CPU with native bf16."""
    if not config_yaml.is_file():
        return ""
    trainer = (yaml.safe_load(config_yaml.read_text()) or {}).get("trainer") or {}
    return str(trainer.get("precision") or "")


def learning_curve(metrics_csv: Path) -> pd.DataFrame:
    """Validation Dice against wall-clock minutes (empty for a run logged before time/minutes existed)."""
    if not metrics_csv.is_file():
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    table = pd.read_csv(metrics_csv)
    if not set(CURVE_COLUMNS) <= set(table.columns):
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    return table.dropna(subset=list(CURVE_COLUMNS))[list(CURVE_COLUMNS)].sort_values("time/minutes")


def row_result(files: RowFiles) -> dict[str, Any]:
    """The table's entries of one finished row."""
    record = json.loads(files.record.read_text())
    metrics = json.loads(files.metrics.read_text())
    result: dict[str, Any] = {"dice": metrics["dice"], "dice_per_image": metrics["per_image"]["dice"],
                              "precision": metrics["precision"], "recall": metrics["recall"], "hd95": metrics["hd95"]}
    for name in METRICS:
        interval = _interval((metrics.get("ci95") or {}).get(name))
        if interval is not None:
            result[f"{name}_ci95_low"], result[f"{name}_ci95_high"] = interval
    run_dir = Path(record["run_dir"]) if record.get("run_dir") else None
    result.update(training_progress(run_dir / "metrics.csv") if run_dir else {})
    result["training_precision"] = training_precision(run_dir / "config.yaml") if run_dir else ""
    result.update({
        "wall_minutes": record.get("wall_minutes", math.nan), "n_test_images": metrics.get("n_images"),
        "postprocessing": metrics.get("postprocessing_rule", ""), "tta": check_tta(metrics.get("tta", False)),
        "hd_units": metrics.get("hd_units", ""), "source": record.get("source", ""),
        "run_dir": record.get("run_dir", ""), "git_commit": record.get("git_commit", ""),
        "fit_command": record.get("fit_command", ""),
    })
    return result


def build_table(ablation: Ablation, runs_dir: str | Path) -> pd.DataFrame:
    """One line per finished row, in the file's order, with Dice gains over ``compare`` and the reference row
    (``nan`` where that row has not finished)."""
    lines = []
    for row in ablation.rows:
        files = RowFiles.of(runs_dir, row.name)
        if files.finished():
            lines.append({"row": row.name, "label": row.label, "kind": row.kind, "compare": row.compare or "",
                          **row_result(files)})
    table = pd.DataFrame(lines)
    if table.empty:
        return table
    dice = dict(zip(table["row"], table["dice"]))
    table["gain_previous"] = [d - dice[c] if c in dice else math.nan for c, d in zip(table["compare"], table["dice"])]
    reference = dice.get(ablation.reference, math.nan)
    table["gain_reference"] = table["dice"] - reference
    return table


def _pct(value: float) -> str:
    return "–" if pd.isna(value) else f"{100 * value:.1f}"


def _gain(value: float) -> str:
    return "–" if pd.isna(value) else f"{100 * value:+.1f}"


def _cell(line: pd.Series, name: str) -> str:
    low, high = line.get(f"{name}_ci95_low", math.nan), line.get(f"{name}_ci95_high", math.nan)
    if name == "hd95":
        value = "–" if pd.isna(line[name]) else f"{line[name]:.1f}"
        return value if pd.isna(low) else f"{value} ({low:.1f}–{high:.1f})"
    return _pct(line[name]) if pd.isna(low) else f"{_pct(line[name])} ({_pct(low)}–{_pct(high)})"


def commit_line(table: pd.DataFrame, current: str) -> str:
    """The commit(s) the finished rows were trained and scored at, so a report rewritten later (``--report-only``)
    still names them; ``current`` when no row records one."""
    by_commit: dict[str, list[str]] = {}
    for _, line in table.iterrows():
        if line.get("git_commit"):
            by_commit.setdefault(str(line["git_commit"]), []).append(str(line["row"]))
    if len(by_commit) <= 1:
        return f"Commit: `{next(iter(by_commit), current)}`"
    return "Commits: " + ", ".join(f"`{commit}` ({', '.join(rows)})" for commit, rows in by_commit.items())


def markdown(table: pd.DataFrame, ablation: Ablation, command: str, commit: str, minutes: float,
             has_plot: bool) -> str:
    """The report's text: protocol, table, what each select row chose, each trained row's command."""
    lines = ["# The best recipe, ingredient by ingredient", "",
             "Each trained row adds one ingredient to the row above (rows file: "
             f"`{ablation.path}`) and trains for the same wall-clock budget ({minutes:g} minutes, "
             "`trainer.max_time`, `max_epochs -1`: the schedule ends with the budget), from the same seed, on fold 0 "
             "of 5 with 15 % of the patient groups held out. Scores: the held-out **test** patients, every slice at "
             "its original size (`scripts/evaluate.py --part test`); pooled Dice, precision and recall, mean "
             "per-image Dice and HD95. Select rows train nothing: they copy the checkpoint of the row named in "
             "*source* and choose post-processing (and TTA) on its validation patients. *epochs* counts the "
             "epochs begun (the budget cuts the last one short). Gains are in Dice points, over the row named in "
             "*compared with* and over the paper's recipe.", "",
             f"Command: `{command}`  ", commit_line(table, commit), ""]
    if table.empty:
        return "\n".join([*lines, "No row has finished yet."]) + "\n"
    has_ci = any(c.endswith("_ci95_low") for c in table.columns)
    units = next((u for u in table["hd_units"] if u), "pixels")
    lines += [f"Values in % (HD95 in {units})" + ("; in brackets the 95 % interval of a bootstrap over the test "
                                                  "patients." if has_ci else "."), "",
              "| row | Dice | per-image Dice | precision | recall | HD95 | training min | epochs | source "
              "| compared with | Dice gain | Dice gain over paper |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for _, line in table.iterrows():
        minutes_cell = "–" if pd.isna(line.get("train_minutes", math.nan)) else f"{line['train_minutes']:.1f}"
        epochs_cell = "–" if pd.isna(line.get("epochs", math.nan)) else f"{line['epochs']:.0f}"
        cells = [line["label"], *(_cell(line, name) for name in METRICS), minutes_cell, epochs_cell,
                 line["source"] or "", line["compare"], _gain(line["gain_previous"]), _gain(line["gain_reference"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    missing = [row.name for row in ablation.rows if row.name not in set(table["row"])]
    if missing:
        lines += ["", f"Not finished (or left out): {', '.join(missing)}."]
    precisions = {line["row"]: line["training_precision"] for _, line in table.iterrows() if line["training_precision"]}
    if precisions:
        shown = (f"{next(iter(precisions.values()))} for every row's model" if len(set(precisions.values())) == 1
                 else ", ".join(f"{row} {precision}" for row, precision in precisions.items()))
        lines += ["", f"Training precision: {shown}."]
    lines += ["", "Inference settings of each row (paper: threshold 0.5, no TTA):", ""]
    lines += [f"- {line['row']}: {line['postprocessing']}{describe_tta(line['tta'])}"
              for _, line in table.iterrows()]
    if has_plot:
        lines += ["", "Validation Dice against wall-clock minutes of training:", "",
                  "![validation Dice against minutes](dice_vs_minutes.png)"]
    lines += ["", "Each trained row's command (run folders under the runs folder):", ""]
    lines += [f"- {line['row']}: `{line['fit_command']}`" for _, line in table.iterrows() if line["kind"] == "train"]
    return "\n".join(lines) + "\n"


def plot_dice_vs_minutes(curves: dict[str, pd.DataFrame]) -> bytes:
    """Validation Dice (pooled, model grid) against training minutes, one line per curve."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for label, curve in curves.items():
        axis.plot(curve["time/minutes"], curve["val/dice"], marker=".", linewidth=1.5, label=label)
    axis.set(xlabel="training time (minutes)", ylabel="validation Dice (pooled)", ylim=(0, 1))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def write_report(ablation: Ablation, runs_dir: str | Path, out_dir: str | Path, command: str, commit: str,
                 minutes: float) -> Path:
    """Write ``ablation.md``, ``ablation.csv`` and (when a curve row has curves) ``dice_vs_minutes.png``.

    Raises:
        AblationError: ``out_dir`` is not a folder.
    """
    table = build_table(ablation, runs_dir)
    curves = {}
    for line in ([] if table.empty else table.itertuples()):
        if ablation.row(line.row).curve and line.run_dir:
            curve = learning_curve(Path(line.run_dir) / "metrics.csv")
            if len(curve):
                curves[line.label] = curve
    files: dict[str, str | bytes] = {"ablation.md": markdown(table, ablation, command, commit, minutes, bool(curves)),
                                     "ablation.csv": table.to_csv(index=False)}
    if curves:
        files["dice_vs_minutes.png"] = plot_dice_vs_minutes(curves)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AblationError(f"--out {out_dir} exists and is not a folder")
    write_files_atomically(out_dir, files)
    return out_dir / "ablation.md"
