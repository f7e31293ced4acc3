"""Validation Dice against wall-clock time: the Keras original's recipe vs this toolkit's best CPU recipe.

    python benchmarks/time_to_dice.py --out reports/time_to_dice.md            # 10 Keras epochs, then 60 minutes
    python benchmarks/time_to_dice.py --keras-epochs 1 --ours-minutes 0.3 --limit-patients 12   # a smoke run

Both frameworks get exactly the same training and validation slices of one fold of the toolkit's patient-level
split (same root, fold, num_folds, test_fraction, split seed, image size), preprocessed once by the toolkit's
``BrainTumorDataModule`` (skull stripping and channels as ``--config`` sets them). Keras runs the notebook's model
(``lightning_bts/keras/reference.py``), its loss (BCE, or ``--keras-loss focal``), Adam(1e-3), batch 16, in a
subprocess of its own (TensorFlow never shares a process with torch here); it is timed from ``fit`` to the
Dice of each epoch (training + validation; loading the arrays is not timed). Ours is ``train()`` on
``configs/best_cpu.yaml`` with ``--trainer.max_time`` from ``--ours-minutes``; its curve is ``val/dice`` against
``time/minutes`` from the run's metrics.csv (minutes since training began, validation included). Dice is
pooled over all validation slices at threshold 0.5 in both. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

Curve = Sequence[tuple[float, float]]  # (seconds, Dice) per validation, in time order


def seconds_to_reach(curve: Curve, target: float) -> float | None:
    """The first validation time at which ``curve`` reaches Dice >= ``target``; ``None`` if it never does."""
    return next((seconds for seconds, dice in curve if dice >= target), None)


def compare(keras_curve: Curve, ours_curve: Curve) -> dict[str, float | None]:
    """The headline numbers: Keras' final Dice and time, and when (and how much sooner) ours reaches that Dice."""
    keras_seconds, keras_final = keras_curve[-1]
    ours_seconds = seconds_to_reach(ours_curve, keras_final)
    return {
        "keras_final_dice": keras_final,
        "ours_final_dice": ours_curve[-1][1] if ours_curve else None,
        "keras_seconds": keras_seconds,
        "ours_seconds_to_keras_final_dice": ours_seconds,
        "speedup_to_keras_final_dice": keras_seconds / ours_seconds if ours_seconds else None,
    }


def pooled_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice over all pixels of all slices (1 when both are empty), as ``lightning_bts.metrics`` pools it."""
    pred, target = pred.astype(bool), target.astype(bool)
    tp = np.count_nonzero(pred & target)
    wrong = np.count_nonzero(pred ^ target)
    return 2 * tp / (2 * tp + wrong) if 2 * tp + wrong else 1.0


# ------------------------------------------------------------------------------------ Keras (subprocess)


def keras_worker(spec_path: Path) -> None:
    """Train the original in TensorFlow on the saved arrays, validating after every epoch; write its curve."""
    spec = json.loads(spec_path.read_text())
    from lightning_bts.keras.reference import build_keras_unet, import_keras, keras_loss

    keras = import_keras()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(spec["threads"])
    with np.load(spec["arrays"]) as arrays:
        x_train, x_val = (arrays[f"{part}_images"].astype("float32") for part in ("train", "val"))
        y_train = arrays["train_masks"][..., None].astype("float32")
        y_val = arrays["val_masks"].astype(bool)
    model = build_keras_unet(in_channels=x_train.shape[-1], height=x_train.shape[1], seed=spec["seed"])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss=keras_loss(spec["loss"]))
    curve: list[dict[str, float]] = []

    class ValidationDice(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            probabilities = self.model.predict(x_val, batch_size=spec["batch_size"], verbose=0)
            dice = pooled_dice(probabilities[..., 0] > 0.5, y_val)
            curve.append({"epoch": epoch + 1, "seconds": time.perf_counter() - start, "dice": dice,
                          "loss": float((logs or {}).get("loss", float("nan")))})
            print(f"keras epoch {epoch + 1}: val Dice {dice:.4f} at {curve[-1]['seconds']:.1f} s", flush=True)

    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=spec["batch_size"], epochs=spec["epochs"], shuffle=True, verbose=0,
              callbacks=[ValidationDice()])
    threads = {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
               "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    Path(spec["out"]).write_text(json.dumps({"curve": curve, "threads": threads, "versions": versions}))


# ------------------------------------------------------------------------------------ the benchmark


def limited_root(root: Path, patients: int, seed: int, work: Path) -> Path:
    """A folder holding only a metadata.csv of ``patients`` random patient groups of ``root`` (absolute paths)."""
    import pandas as pd

    table = pd.read_csv(root / "metadata.csv", dtype=str)
    groups = np.sort(table["patient_group"].unique())
    chosen = np.random.default_rng(seed).choice(groups, size=min(patients, len(groups)), replace=False)
    table = table[table["patient_group"].isin(chosen)].copy()
    for column in ("image", "mask"):
        table[column] = [str((root / path).resolve()) for path in table[column]]
    subset = work / f"subset_{patients}"
    subset.mkdir(parents=True, exist_ok=True)
    table.to_csv(subset / "metadata.csv", index=False)
    return subset


def run_ours(args: argparse.Namespace, root: Path, work: Path) -> tuple[list[tuple[float, float]], Path, dict]:
    """Train the best CPU recipe for ``--ours-minutes``; its (seconds, val/dice) curve, log folder, threads."""
    import pandas as pd
    import torch
    import yaml

    from lightning_bts.training.config import parse_config
    from lightning_bts.training.train import train

    torch.set_num_threads(args.threads)
    seconds = max(1, round(args.ours_minutes * 60))
    config = parse_config(["--config", str(args.config)])
    data = config.data  # the split and preprocessing Keras gets too
    data.root, data.fold, data.num_folds, data.test_fraction = str(root), args.fold, args.num_folds, args.test_fraction
    data.seed, data.image_size, data.cache_dir = args.split_seed, args.image_size, str(work / "cache")
    days, hours, minutes = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60
    config.trainer.max_time = f"{days:02d}:{hours:02d}:{minutes:02d}:{seconds % 60:02d}"
    config.output_dir, config.run_name = str(work / "ours"), "best_cpu"
    result = train(parse_config(shlex.split(args.ours_args), base=config))  # --ours-args win, as they come last
    table = pd.read_csv(result.log_dir / "metrics.csv")
    rows = table.dropna(subset=["val/dice", "time/minutes"]).sort_values("time/minutes")
    curve = [(60.0 * float(m), float(d)) for m, d in zip(rows["time/minutes"], rows["val/dice"])]
    config = yaml.safe_load((result.log_dir / "config.yaml").read_text())
    threads = {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
               "loader_workers": config["data"]["num_workers"], "precision": config["trainer"]["precision"]}
    return curve, result.log_dir, threads


def plot(keras_curve: Curve, ours_curve: Curve, summary: dict, path: Path, keras_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for curve, label in ((keras_curve, keras_label), (ours_curve, "ours: configs/best_cpu.yaml")):
        ax.plot([s / 60 for s, _ in curve], [d for _, d in curve], marker="o", markersize=3, label=label)
    ax.axhline(summary["keras_final_dice"], color="grey", linestyle="--", linewidth=0.8, label="Keras final Dice")
    if summary["ours_seconds_to_keras_final_dice"] is not None:
        ax.axvline(summary["ours_seconds_to_keras_final_dice"] / 60, color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlabel="wall-clock minutes (training + validation)", ylabel="validation Dice (pooled, threshold 0.5)",
           title="Validation Dice against time, same fold, same machine")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU, its core count and its widest vector extensions. The name alone does not tell machines apart:
    "AMD EPYC" has named 2-core instances with AVX-512-BF16 (the recipe trains in bf16) and with AVX2 only (it
    trains in fp32, 1.2 minutes an epoch against 0.3-0.65), and the speedup differs between them."""
    info = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
               platform.processor() or platform.machine())
    description = f"{cpu}, {os.cpu_count()} cores visible"
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), None)
    if flags is not None:  # Linux on x86; elsewhere the extensions are not listed
        extensions = [name for name in ("amx_tile", "avx512_bf16", "avx512f", "avx2") if name in flags]
        description += f", {' '.join(extensions) or 'no AVX2'}"
    return description


def git_commit() -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return (git("rev-parse", "HEAD") or "unknown") + (" (with uncommitted changes)" if dirty else "")


def report(args: argparse.Namespace, facts: dict, keras_curve: Curve, ours_curve: Curve, summary: dict,
           png: Path) -> str:
    def number(value: float | None, digits: int = 4) -> str:
        return "never" if value is None else f"{value:.{digits}f}"

    lines = ["# Validation Dice against wall-clock time: the Keras original vs our best CPU recipe", "",
             f"Command: `python benchmarks/time_to_dice.py {shlex.join(facts['argv'])}`", "",
             f"Git commit: {facts['commit']}", "", f"Machine: {facts['machine']}", "",
             f"Data: {facts['root']}, fold {args.fold} of {args.num_folds}, test_fraction {args.test_fraction}, "
             f"split seed {args.split_seed}, {args.image_size}x{args.image_size}; {facts['train_slices']} training "
             f"and {facts['val_slices']} validation slices ({facts['val_patients']} validation patient groups), "
             "identical for both (checked against our run's splits.json).", "",
             f"Keras: the notebook's U-Net, loss `{args.keras_loss}`, Adam(1e-3), batch 16, {args.keras_epochs} "
             f"epochs, float32; TensorFlow {facts['keras_versions']['tensorflow']}, intra-op threads "
             f"{facts['keras_threads']['intra_op']}, inter-op threads {facts['keras_threads']['inter_op']}. "
             "Time: from `fit` to each epoch's validation Dice (arrays already in memory; the first epoch includes "
             "tracing the graph, as ours includes its warm-up).", "",
             f"Ours: `{args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}` for "
             f"{args.ours_minutes} minutes (`--trainer.max_time`), extra arguments `{args.ours_args}`; torch threads "
             f"{facts['ours_threads']['torch']} (inter-op {facts['ours_threads']['torch_interop']}), "
             f"{facts['ours_threads']['loader_workers']} loader workers, precision "
             f"{facts['ours_threads']['precision']}. Time: `time/minutes` (since training began, validation "
             "included). Validation uses the EMA weights where the recipe keeps them.", "",
             "Dice is pooled over all validation slices at threshold 0.5 in both.", "",
             f"- Keras final Dice: {number(summary['keras_final_dice'])} after {summary['keras_seconds']:.1f} s",
             f"- ours final Dice: {number(summary['ours_final_dice'])} after {number(facts['ours_seconds'], 1)} s",
             f"- ours first reaches Keras' final Dice at: {number(summary['ours_seconds_to_keras_final_dice'], 1)} s"
             f" (speedup {number(summary['speedup_to_keras_final_dice'], 2)}x)", "",
             f"![Dice against minutes]({png.name})", "",
             "| recipe | validation | minutes | val Dice |", "|---|---:|---:|---:|"]
    for name, curve in (("Keras", keras_curve), ("ours", ours_curve)):
        lines += [f"| {name} | {i} | {s / 60:.2f} | {d:.4f} |" for i, (s, d) in enumerate(curve, 1)]
    return "\n".join(lines + ["", "```json", json.dumps(summary), "```", ""])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "figshare_brain_tumor")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--num-folds", type=int, default=5)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--split-seed", type=int, default=42)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--limit-patients", type=int, help="use only this many (random) patient groups")
    parser.add_argument("--keras-epochs", type=int, default=10)
    parser.add_argument("--keras-loss", choices=("bce", "focal"), default="bce")
    parser.add_argument("--ours-minutes", type=float, default=60.0)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "best_cpu.yaml")
    parser.add_argument("--ours-args", default="", help="extra train() arguments, e.g. '--data.num_workers 0'")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for both frameworks")
    parser.add_argument("--seed", type=int, default=42, help="Keras' weight initialisation and shuffling")
    parser.add_argument("--work-dir", type=Path, help="arrays, runs, cache (default runs/time_to_dice/<time>)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "time_to_dice.md")
    parser.add_argument("--keras-worker", type=Path, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.config = args.config.resolve()
    if args.keras_worker is not None:
        return keras_worker(args.keras_worker)

    import yaml

    from lightning_bts.data import BrainTumorDataModule

    work = (args.work_dir or REPO / "runs" / "time_to_dice" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = args.data_root.resolve()
    if args.limit_patients:
        root = limited_root(root, args.limit_patients, args.split_seed, work)
    data_config = (yaml.safe_load(args.config.read_text()) or {}).get("data", {})
    dm = BrainTumorDataModule(str(root), image_size=args.image_size, in_channels=data_config.get("in_channels", 3),
                              skull_strip=data_config.get("skull_strip", "safe"), num_folds=args.num_folds,
                              fold=args.fold, seed=args.split_seed, test_fraction=args.test_fraction,
                              cache_dir=str(work / "cache"), num_workers=0)
    dm.load()
    parts = {part: dm.indices(part) for part in ("train", "val")}
    arrays = {f"{part}_{kind}": getattr(dm.data, kind)[index] for part, index in parts.items()
              for kind in ("images", "masks")}
    np.savez(work / "keras_arrays.npz", **arrays)
    spec = {"arrays": str(work / "keras_arrays.npz"), "threads": args.threads, "seed": args.seed, "batch_size": 16,
            "epochs": args.keras_epochs, "loss": args.keras_loss, "out": str(work / "keras_curve.json")}
    (work / "keras_spec.json").write_text(json.dumps(spec))
    print(f"Keras: {args.keras_epochs} epochs on {len(parts['train'])} slices, {len(parts['val'])} validation",
          flush=True)
    subprocess.run([sys.executable, __file__, "--keras-worker", str(work / "keras_spec.json")], check=True)
    (work / "keras_arrays.npz").unlink()
    keras_run = json.loads(Path(spec["out"]).read_text())
    keras_curve = [(row["seconds"], row["dice"]) for row in keras_run["curve"]]

    print(f"ours: {args.config.name} for {args.ours_minutes} minutes", flush=True)
    ours_curve, log_dir, ours_threads = run_ours(args, root, work)
    splits = json.loads((log_dir / "splits.json").read_text())
    for part in ("train", "val"):
        if set(splits[part]) != set(dm.records["key"].iloc[parts[part]]):
            raise RuntimeError(f"our run's {part} slices differ from Keras' ({log_dir / 'splits.json'})")
    if not ours_curve:
        raise RuntimeError(f"our run logged no validation in {args.ours_minutes} minutes ({log_dir})")

    summary = compare(keras_curve, ours_curve)
    facts = {"argv": argv, "commit": git_commit(), "machine": cpu_description(), "root": root,
             "train_slices": len(parts["train"]), "val_slices": len(parts["val"]),
             "val_patients": dm.records["patient_group"].iloc[parts["val"]].nunique(),
             "keras_threads": keras_run["threads"], "keras_versions": keras_run["versions"],
             "ours_threads": ours_threads, "ours_seconds": ours_curve[-1][0]}
    out, png = args.out.resolve(), args.out.resolve().with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(keras_curve, ours_curve, summary, png, f"Keras original ({args.keras_loss}, Adam 1e-3)")
    out.write_text(report(args, facts, keras_curve, ours_curve, summary, png))
    extra = {"keras_epochs": len(keras_curve), "ours_validations": len(ours_curve), "ours_seconds": ours_curve[-1][0],
             "keras_best_dice": max(d for _, d in keras_curve), "ours_best_dice": max(d for _, d in ours_curve),
             "keras_threads": keras_run["threads"], "ours_threads": ours_threads, "report": str(out), "plot": str(png),
             "ours_log_dir": str(log_dir)}
    print(f"report: {out}\nplot: {png}")
    print(json.dumps({**summary, **extra}))


if __name__ == "__main__":
    main()
