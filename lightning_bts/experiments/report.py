"""The cross-validation report: the paper's table beside ours, paired statistics, curves, box plots, gallery.

Reads only what :mod:`lightning_bts.experiments.cv` wrote to its results folder (plus the dataset, for the gallery's
images) and writes, next to it: ``report.md``, ``summary.csv`` (mean, sd, 95% t-interval across folds per
loss and metric, with the paper's value), ``paired.csv`` (the paired tests), ``curves.png``,
``dice_by_type.png`` and ``gallery.png``. Every number in the Markdown comes from those CSVs.

    python scripts/report.py reports/cv_figshare
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lightning_bts.data.preprocess import preprocess_slice  # noqa: E402
from lightning_bts.data.records import load_records  # noqa: E402
from lightning_bts.errors import UserError  # noqa: E402
from lightning_bts.evaluation import load_predictions, write_files_atomically  # noqa: E402
from lightning_bts.evaluation.tta import describe_tta  # noqa: E402
from lightning_bts.experiments import seeds  # noqa: E402
from lightning_bts.experiments.runs import collect, run_name  # noqa: E402
from lightning_bts.experiments.stats import paired_t_test, summarize, wilcoxon_signed_rank  # noqa: E402

# The paper's 5-fold means (its headline table) and its Hausdorff interval for focal loss (mm).
PAPER = {
    "focal": {"accuracy": 0.9944, "dice": 0.81, "precision": 0.8292, "recall": 0.7932},
    "bce": {"accuracy": 0.9903, "dice": 0.7452, "precision": 0.7616, "recall": 0.719},
}
PAPER_HD_CI_FOCAL_MM = (43.22, 52.92)
TABLE_METRICS = ("accuracy", "dice", "precision", "recall")
EXTRA_METRICS = ("iou", "specificity")
DISTANCES = ("hd", "hd95")
SLICE_METRICS = ("dice", "precision", "recall", "accuracy", "hd95")


def _load(out_dir: Path) -> dict[str, Any]:
    protocol = json.loads((out_dir / "protocol.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted((out_dir / "folds").glob("*.json"))]
    tables = collect(out_dir)
    losses = [loss for loss in protocol["losses"] if loss in set(tables["folds"]["loss"])]
    # with --seeds N: one row per run in "runs"; the tables the report is made of hold each fold's mean over seeds
    return {"protocol": protocol, "records": records, "losses": losses, **seeds.mean_over_seeds(tables),
            "runs": tables["folds"], "gallery": seeds.first_seed(tables["per_image"])}


def summary_table(folds: pd.DataFrame, losses: Sequence[str]) -> pd.DataFrame:
    """Per loss and metric: mean, sd and 95% t-interval across folds of the pooled fold metrics."""
    rows = []
    for loss in losses:
        table = folds[folds["loss"] == loss]
        for metric in (*TABLE_METRICS, *EXTRA_METRICS, *DISTANCES, "dice_per_image"):
            s = summarize(table[metric].to_numpy())
            rows.append({"loss": loss, "metric": metric, "n_folds": s.n, "mean": s.mean, "sd": s.sd,
                         "ci95_low": s.ci_low, "ci95_high": s.ci_high,
                         "paper": PAPER.get(loss, {}).get(metric, np.nan)})
    return pd.DataFrame(rows)


def paired_table(folds: pd.DataFrame, per_image: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """``a`` vs ``b``: paired t-test across folds (pooled fold metrics) and Wilcoxon across slices."""
    rows = []
    fa = folds[folds["loss"] == a].set_index("fold")
    fb = folds[folds["loss"] == b].set_index("fold")
    common = sorted(set(fa.index) & set(fb.index))
    if len(common) >= 2:
        for metric in (*TABLE_METRICS, *DISTANCES):
            test = paired_t_test(fa.loc[common, metric], fb.loc[common, metric])
            rows.append({"level": "folds", "metric": metric, **test.__dict__})
    slices = per_image[per_image["loss"] == a].merge(per_image[per_image["loss"] == b], on="key", suffixes=("_a", "_b"))
    if len(slices) >= 2:
        for metric in SLICE_METRICS:
            test = wilcoxon_signed_rank(slices[f"{metric}_a"], slices[f"{metric}_b"])
            rows.append({"level": "slices", "metric": f"{metric} (per slice)", **test.__dict__})
    return pd.DataFrame(rows)


# --- figures -----------------------------------------------------------------------------------------------

def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def plot_curves(curves: pd.DataFrame, losses: Sequence[str]) -> bytes:
    """Training loss, validation loss and validation Dice per epoch: each fold thin, the mean thick."""
    panels = [("train/loss", "training loss", True), ("val/loss", "validation loss", True),
              ("val/dice", "validation Dice (pooled)", False)]
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for axis, (column, title, log) in zip(axes, panels):
        for color, loss in zip(plt.cm.tab10.colors, losses):
            table = curves[curves["loss"] == loss].dropna(subset=[column]) if column in curves else pd.DataFrame()
            if table.empty:
                continue
            for _, fold in table.groupby("fold"):
                axis.plot(fold["epoch"], fold[column], color=color, alpha=0.3, linewidth=1)
            mean = table.groupby("epoch")[column].mean()
            axis.plot(mean.index, mean.to_numpy(), color=color, linewidth=2.2, label=f"{loss} (mean of folds)")
        axis.set(title=title, xlabel="epoch")
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if log:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[-1].legend(loc="lower right", fontsize=8)
    return _png(figure)


def plot_dice_by_type(per_image: pd.DataFrame, losses: Sequence[str]) -> bytes:
    """Per-slice Dice by tumour type, one box per loss."""
    types = sorted(per_image["tumor_type"].unique())
    figure, axis = plt.subplots(figsize=(2.2 + 1.6 * len(types) * len(losses) / 2, 4))
    width = 0.8 / len(losses)
    for i, (color, loss) in enumerate(zip(plt.cm.tab10.colors, losses)):
        data = [per_image[(per_image["loss"] == loss) & (per_image["tumor_type"] == t)]["dice"].to_numpy()
                for t in types]
        positions = np.arange(len(types)) + (i - (len(losses) - 1) / 2) * width
        boxes = axis.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                             flierprops={"markersize": 2})
        for patch in boxes["boxes"]:
            patch.set(facecolor=color, alpha=0.5)
        axis.plot([], [], color=color, linewidth=8, alpha=0.5, label=loss)
    counts = per_image[per_image["loss"] == losses[0]]["tumor_type"].value_counts()
    axis.set_xticks(np.arange(len(types)), [f"{t}\n(n={counts.get(t, 0)})" for t in types])
    axis.set(ylabel="Dice per slice", ylim=(-0.02, 1.02), title="Per-slice Dice on the validation folds")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def gallery_slices(per_image: pd.DataFrame, loss: str) -> pd.DataFrame:
    """The best, median and worst validation slices of ``loss`` by Dice (ties: by key)."""
    table = per_image[per_image["loss"] == loss].sort_values(["dice", "key"], ascending=[False, True],
                                                              ignore_index=True)
    picks = {"best": 0, "median": len(table) // 2, "worst": len(table) - 1}
    return pd.concat([table.iloc[[i]].assign(rank=name) for name, i in picks.items()], ignore_index=True)


def plot_gallery(out_dir: Path, per_image: pd.DataFrame, losses: Sequence[str], config: dict[str, Any]) -> bytes:
    """Image (as the model saw it) with the true (green) and predicted (red) outlines, per loss."""
    picks = gallery_slices(per_image, losses[0])
    records = load_records(config["root"]).set_index("key")
    figure, axes = plt.subplots(len(picks), len(losses), figsize=(3.2 * len(losses), 3.3 * len(picks)),
                                squeeze=False)
    for row, pick in picks.iterrows():
        record = records.loc[pick["key"]]
        image, mask = preprocess_slice(record["image_path"], record["mask_path"], config["image_size"],
                                       config["skull_strip"], rgb=False)
        for column, loss in enumerate(losses):
            axis = axes[row, column]
            name = run_name(loss, int(pick["fold"]), seeds.seed_of(pick))
            prediction = load_predictions(out_dir / "predictions" / f"{name}.npz").get(pick["key"])
            score = per_image[(per_image["loss"] == loss) & (per_image["key"] == pick["key"])]["dice"]
            axis.imshow(image[..., 0], cmap="gray")
            axis.contour(mask, levels=[0.5], colors="lime", linewidths=1)
            if prediction is not None and prediction.any():
                axis.contour(prediction, levels=[0.5], colors="red", linewidths=1)
            dice = f"{float(score.iloc[0]):.3f}" if len(score) else "n/a"
            axis.set_title(f"{pick['rank']} ({losses[0]}): {pick['key']} {pick['tumor_type']}\n{loss}: Dice {dice}",
                           fontsize=8)
            axis.axis("off")
    figure.suptitle("green: true tumour, red: prediction", fontsize=9)
    return _png(figure)


# --- markdown ----------------------------------------------------------------------------------------------

def _pct(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{100 * value:.2f}"


def _num(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.2f}"


def _p(value: float) -> str:
    return "n/a" if pd.isna(value) else (f"{value:.2e}" if value < 1e-3 else f"{value:.3f}")


def _table(rows: list[dict[str, str]], align: str) -> str:
    """A Markdown table of already formatted cells; ``align`` has an ``l`` or ``r`` per column.

    The cells are strings on purpose (``disable_numparse``): tabulate would otherwise re-format numbers such as
    ``1.20e-04`` and drop the report's rounding.
    """
    columns = tuple({"l": "left", "r": "right"}[a] for a in align)
    return pd.DataFrame(rows).to_markdown(index=False, tablefmt="pipe", colalign=columns, disable_numparse=True)


def _checks(records: list[dict], losses: Sequence[str]) -> list[str]:
    """Leakage and pairing checks recomputed from the results, stated as facts in the report."""
    lines = []
    for loss in losses:
        groups = list({r["fold"]: set(r["val_groups"]) for r in records if r["loss"] == loss}.values())
        shared = set().union(*[a & b for i, a in enumerate(groups) for b in groups[i + 1:]])
        lines.append(f"- {loss}: {len(groups)} validation folds, patient groups in more than one validation fold: "
                     f"{len(shared)} {'(none: no leakage across folds)' if not shared else sorted(shared)[:5]}")
    by_fold: dict[int, set] = {}
    for record in records:
        by_fold.setdefault(record["fold"], set()).add(tuple(record["val_keys"]))
    same = all(len(keys) == 1 for keys in by_fold.values())
    lines.append(f"- every loss validated on the same slices in each fold: {'yes' if same else 'NO'}")
    return lines


def _protocol_lines(data: dict[str, Any]) -> list[str]:
    protocol, records = data["protocol"], data["records"]
    config = records[0]["config"]
    varying = {key for key in config if key not in ("loss", "fold", "seed_everything")
               and len({json.dumps(r["config"].get(key)) for r in records}) > 1}
    per_image = data["per_image"]
    first = per_image[per_image["loss"] == data["losses"][0]]
    types = first["tumor_type"].value_counts().to_dict()
    hours = sum(r["train_seconds"] for r in records) / 3600
    lines = [
        f"- data: `{config['root']}`, {len(first)} slices validated once each across the folds, "
        f"{first['patient_group'].nunique()} patient groups; tumour types {types}",
        f"- split: {protocol['num_folds']}-fold `StratifiedGroupKFold` by `patient_group` (stratified by tumour "
        f"type), split seed {config['split_seed']}, the same folds for every loss",
        f"- model: {_network(config)}, base filters {config['base_filters']}, norm `{_norm(config)}` (batch norm "
        f"{config['batch_norm']}), deep supervision {config.get('deep_supervision', False)}, dropout scale "
        f"{config['dropout_scale']}"
        + (f" from epoch {config['dropout_start_epoch']}" if config.get("dropout_start_epoch") else "")
        + f"; weights re-initialised from `seed_everything({seeds.seed_label(records)})` "
        "for every fold and loss (identical initial weights: a paired comparison)",
        f"- input: {config['image_size']}x{config['image_size']} px, {config['in_channels']} channels"
        + (" (the slices before, at and after: `data.neighbour_slices`)" if config.get("neighbour_slices") else "")
        + f", `input_norm` {config.get('input_norm') or 'scale'}, skull stripping `{config['skull_strip']}`, "
        f"augmentation {config['augment']} (`data.augmentation` {config.get('augmentation')})",
        f"- training: {config['max_epochs']} epochs, batch {config['batch_size']}, optimizer `{_optimizer(config)}` "
        f"lr {config['lr']} eps {config['adam_eps']}, scheduler `{config.get('scheduler') or 'none'}`, warm-up "
        f"{config.get('warmup_epochs') or 0} epochs, EMA decay {config.get('ema_decay')}, precision "
        f"`{config['precision']}`, accelerator `{config['accelerator']}`"
        + (f", limit_train_batches {config['limit_train_batches']}" if config.get("limit_train_batches") else "")
        + f"; focal gamma {config['focal_gamma']}, alpha {config['focal_alpha']}",
        f"- evaluation: the weights after the last epoch (not the best epoch) on the fold's validation slices, "
        f"{_evaluation_rule(records[0]['metrics'], protocol)}, precision `{protocol['eval_precision']}`; "
        f"{_resolution(records[0]['metrics'], config)}; ratios pooled over all pixels of the fold (as the paper), "
        "then mean ± sd and 95% t-interval across folds",
        f"- code: git commit `{protocol['git_commit']}`; total training time {hours:.2f} h",
        f"- command: `{protocol['command']}`",
    ]
    if varying:
        lines.append(f"- WARNING: settings differ between runs: {sorted(varying)}")
    return lines


def _network(config: dict[str, Any]) -> str:
    """``paper_unet`` (the U-Net) or the smp architecture and encoder; runs recorded before ``model.arch``: U-Net."""
    arch = config.get("arch") or "paper_unet"
    return "U-Net (`paper_unet`)" if arch == "paper_unet" else f"`{arch}` (encoder `{config.get('encoder')}`)"


def _norm(config: dict[str, Any]) -> str:
    """``model.norm``, with the older ``batch_norm: true`` meaning ``batch`` (as the module reads them)."""
    norm = config.get("norm") or "none"
    return "batch" if norm == "none" and config.get("batch_norm") else norm


def _optimizer(config: dict[str, Any]) -> str:
    """``model.optimizer``; runs recorded before it: ``keras_adam`` unless ``keras_adam: false`` (then ``adam``)."""
    return config.get("optimizer") or ("adam" if config.get("keras_adam") is False else "keras_adam")


def _resolution(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """Where the fold metrics were scored (folds evaluated before native-resolution scores: the model grid)."""
    if metrics.get("resolution") == "native":
        return (f"scored at each slice's original size (probabilities of the {config['image_size']}x"
                f"{config['image_size']} model resized back; model-grid scores in folds.csv as model_grid_*)")
    return f"scored at the model's {config['image_size']}x{config['image_size']} grid"


def _evaluation_rule(metrics: dict[str, Any], protocol: dict[str, Any]) -> str:
    if "postprocessing_rule" in metrics:
        return f"post-processing: {metrics['postprocessing_rule']}{describe_tta(metrics.get('tta'))}"
    return f"threshold {protocol['threshold']}"


def _markdown(data: dict[str, Any], summary: pd.DataFrame, paired: pd.DataFrame, has_gallery: str,
              spread: pd.DataFrame) -> str:
    losses = data["losses"]
    units = data["records"][0]["metrics"].get("hd_units", "pixels")
    resolution = _resolution(data["records"][0]["metrics"], data["records"][0]["config"])
    n_folds = int(summary["n_folds"].max())
    lines = [f"# {' vs '.join(losses)}: {n_folds}-fold cross-validation", "",
             "Reproduction of the headline comparison of *A Quantitative Comparison between Focal Loss and Binary "
             "Cross-Entropy Loss in Brain Tumor Auto-Segmentation Using U-Net* with `scripts/cv.py`.", "",
             "## Protocol", "", *_protocol_lines(data), "", "Checks on the results:", "",
             *_checks(data["records"], losses), ""]

    lines += ["## The paper's table", "",
              "Percent; mean ± sd across folds, 95% t-interval across folds (clipped to 0–100; summary.csv has the "
              "raw interval), and the paper's 5-fold mean. The paper measured on its own private set of 314 "
              "images (800x512), not on the figshare data: its numbers are context, not a target here.", ""]
    rows = []
    for metric in (*TABLE_METRICS, *EXTRA_METRICS, "dice_per_image"):
        cells = {"metric": "Dice (mean per slice)" if metric == "dice_per_image" else metric}
        for loss in losses:
            row = summary[(summary["loss"] == loss) & (summary["metric"] == metric)].iloc[0]
            cells[f"{loss} mean ± sd"] = f"{_pct(row['mean'])} ± {_pct(row['sd'])}"
            cells[f"{loss} 95% CI"] = f"{_pct(max(row['ci95_low'], 0.0))}–{_pct(min(row['ci95_high'], 1.0))}"
            cells[f"paper {loss}"] = _pct(row["paper"]) if not pd.isna(row["paper"]) else ""
        rows.append(cells)
    lines.append(_table(rows, "l" + "rrr" * len(losses)))
    lines += ["", "## Hausdorff distances", "",
              f"Mean per slice within a fold, then mean ± sd and 95% t-interval across folds; {units}, "
              f"{resolution}. A slice with an empty prediction scores the image diagonal. The paper "
              f"reports a 95% CI of {PAPER_HD_CI_FOCAL_MM[0]}–{PAPER_HD_CI_FOCAL_MM[1]} mm for focal loss; "
              "millimetres and a different resolution make the numbers not directly comparable.", ""]
    rows = []
    for metric in DISTANCES:
        cells = {"metric": metric}
        for loss in losses:
            row = summary[(summary["loss"] == loss) & (summary["metric"] == metric)].iloc[0]
            cells[f"{loss} mean ± sd"] = f"{_num(row['mean'])} ± {_num(row['sd'])}"
            cells[f"{loss} 95% CI"] = f"{_num(row['ci95_low'])}–{_num(row['ci95_high'])}"
        rows.append(cells)
    lines.append(_table(rows, "l" + "rr" * len(losses)))

    if len(losses) >= 2 and not paired.empty:
        a, b = losses[:2]
        lines += ["", f"## Paired comparison: {a} vs {b}", "",
                  f"Differences are {a} minus {b}. Across folds: paired t-test on the pooled fold metrics, effect "
                  "size Cohen's d_z. Across slices: Wilcoxon signed-rank on per-slice metrics (each slice "
                  "predicted by the model of the fold that held it out), effect size the matched-pairs "
                  "rank-biserial correlation. Two-sided; no correction for multiple comparisons.", ""]
        rows = []
        for _, row in paired.iterrows():
            scale = 100 if row["metric"].split()[0] in (*TABLE_METRICS, *EXTRA_METRICS) else 1
            unit = " pp" if scale == 100 else ""
            statistic = "n/a" if pd.isna(row["statistic"]) else f"{row['statistic']:.3g}"
            effect = "n/a" if pd.isna(row["effect_size"]) else f"{row['effect_size']:+.2f}"
            rows.append({"level": row["level"], "metric": row["metric"], "n": str(row["n"]),
                         "mean difference": f"{scale * row['mean_difference']:+.2f}{unit}", "test": row["name"],
                         "statistic": statistic, "p": _p(row["p_value"]),
                         "effect size": f"{row['effect_size_name']} {effect}"})
        lines.append(_table(rows, "llrrlrrl"))
        if n_folds < 5:
            lines += ["", f"With {n_folds} folds the t-test has {n_folds - 1} degree(s) of freedom: weak evidence."]

    lines += ["", *seeds.seed_lines(spread, seeds.seed_label(data["records"]), _table)]
    lines += ["## Learning curves", "", "![learning curves](curves.png)", "",
              "## Per-slice Dice by tumour type", "", "![Dice by tumour type](dice_by_type.png)", "",
              "## Best, median and worst slices", ""]
    lines += (["![gallery](gallery.png)"] if has_gallery == "yes" else [f"Gallery not drawn: {has_gallery}"])
    lines += ["", "## Files", "",
              "`summary.csv` (this table), `paired.csv` (the tests), `folds.csv` (one row per fold and loss), "
              "`per_image.csv` (one row per validation slice), `curves.csv` (per-epoch logs), `protocol.json`, "
              "`folds/*.json` (each run's metrics, split and resolved settings).", ""]
    return "\n".join(lines)


def build_report(out_dir: str | Path) -> Path:
    """Write the report files into ``out_dir`` (a cross-validation results folder); returns report.md."""
    out_dir = Path(out_dir)
    if not (out_dir / "protocol.json").is_file():
        raise UserError(f"{out_dir} is not a cross-validation results folder (no protocol.json)")
    data = _load(out_dir)
    losses = data["losses"]
    summary = summary_table(data["folds"], losses)
    paired = paired_table(data["folds"], data["per_image"], *losses[:2]) if len(losses) >= 2 else pd.DataFrame()
    spread = seeds.seed_spread(data["runs"], losses)
    files: dict[str, str | bytes] = {
        "summary.csv": summary.to_csv(index=False),
        "paired.csv": paired.to_csv(index=False),
        "curves.png": plot_curves(data["curves"], losses),
        "dice_by_type.png": plot_dice_by_type(data["per_image"], losses),
    }
    try:
        files["gallery.png"] = plot_gallery(out_dir, data["gallery"], losses, data["records"][0]["config"])
        has_gallery = "yes"
    except (OSError, ValueError, KeyError) as error:  # dataset moved or absent: the rest still stands
        has_gallery = f"the dataset could not be read ({error})"
    files.update({"seeds.csv": spread.to_csv(index=False)} if not spread.empty else {})
    files["report.md"] = _markdown(data, summary, paired, has_gallery, spread)
    write_files_atomically(out_dir, files)
    return out_dir / "report.md"


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Write the cross-validation report from scripts/cv.py's results.")
    parser.add_argument("out", help="the --out folder of scripts/cv.py")
    path = build_report(parser.parse_args(argv).out)
    print(path)
    return path
