"""k-fold cross-validation of several losses: the paper's focal-vs-BCE experiment, made leakage-free.

The user's training arguments are parsed once (:func:`lightning_bts.training.config.parse_config`, so a bad
option fails before any run); every (fold, loss) run is one call of :func:`lightning_bts.training.train.train`
on a copy of that configuration with ``data.fold = K`` and ``model.loss = LOSS``. Each call builds its run from
the configuration afresh, so ``seed_everything`` re-seeds and the model is built anew: every fold and every loss
starts from the *same* initial weights (the notebook re-used one model across folds), and the split depends only
on the data, ``data.seed`` and ``data.num_folds``, so every loss sees the same folds. Comparisons are therefore
paired.

After each run the weights of its LAST epoch (what the paper reports, not the best epoch: picking the
best on the validation fold would bias it upward; saved as ``final.ckpt``, see :class:`FinalCheckpoint`) are
evaluated on the fold's validation slices with :func:`lightning_bts.evaluation.evaluate_checkpoints`, the
predictor evaluate.py and predict.py use: at each slice's original size (the fold's top-level metrics) and at
the model's grid (``model_grid``), with the threshold given here and whatever else the checkpoint stores
(nothing, for a fresh run). Results go to ``OUT``:

    protocol.json                 command, git commit, training args, losses, folds
    folds/<loss>_fold<k>.json     pooled and per-image metrics, split, resolved config (written last: a run
                                  whose file exists is finished, and is skipped when the command is re-run)
    per_image/<loss>_fold<k>.csv  one row per validation slice (native columns, then model_grid_*)
    curves/<loss>_fold<k>.csv     per-epoch learning curves (from the run's metrics.csv)
    predictions/<loss>_fold<k>.npz  predicted validation masks at the model's grid (bit-packed), for the gallery
    folds.csv, per_image.csv, curves.csv   the above, concatenated
    runs/, cache/                 checkpoints, logs and the preprocessing cache (git-ignored: large)

    python scripts/cv.py --out reports/cv_sample --config configs/quick_cpu.yaml --trainer.max_epochs 5

With ``--seeds N`` each (fold, loss) is trained N times from ``seed_everything`` S, S+1, ... (runs
``<loss>_fold<k>_seed<s>``, :mod:`.seeds`). With ``--address`` the runs are Ray tasks on a local Ray or a cluster,
several at a time (:mod:`.parallel`; ``--out`` must then be on storage every node reaches), with the same files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml
from pytorch_lightning.callbacks import Callback

from lightning_bts.evaluation import (
    PRECISIONS,
    evaluate_checkpoints,
    predictions_npz,
    to_json,
    write_files_atomically,
)
from lightning_bts.experiments.runs import CVError, RunsFailed, collect, result_path, run_name
from lightning_bts.experiments.seeds import seed_values
from lightning_bts.training.config import Config, parse_config
from lightning_bts.training.train import train

if TYPE_CHECKING:
    from lightning_bts.experiments.parallel import RaySettings

DEFAULT_LOSSES = ("focal", "bce")
VERSION = "cv"
# Set by the runner on every run's config; passing them too would silently be overridden.
RESERVED = ("--data.fold", "--data.num_folds", "--model.loss", "--run_name", "--version", "--output_dir",
            "--ckpt_path")
# What makes two invocations the same experiment (a re-run may add losses or folds, nothing else).
PROTOCOL_KEYS = ("train_args", "num_folds", "threshold", "eval_precision", "seeds")
PROTOCOL_DEFAULTS = {"seeds": 1}  # protocol.json has "seeds" only when > 1 (as before --seeds existed)



class FinalCheckpoint(Callback):
    """Saves the weights after the last epoch to ``<log_dir>/checkpoints/final.ckpt`` (weights only).

    The evaluated checkpoint must not depend on how a config sets up checkpointing: Lightning 2.6's
    ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only in epochs that save a new best (seen
    here: a 2-epoch run left last.ckpt at epoch 0), and a config may replace the default callbacks.
    """

    def __init__(self) -> None:
        self.path: Path | None = None

    def on_fit_end(self, trainer, pl_module) -> None:
        self.path = Path(trainer.log_dir) / "checkpoints" / "final.ckpt"
        trainer.save_checkpoint(self.path, weights_only=True)


def git_commit() -> str:
    """The commit of the code that ran, with ``+dirty`` when files differ from it; ``unknown`` outside git."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _check_args(train_args: Sequence[str]) -> None:
    for arg in train_args:
        name = arg.split("=", 1)[0]
        if name in RESERVED:
            raise CVError(f"{name} is set by the cross-validation runner for each run; remove it from the arguments")


def _protocol(out_dir: Path, train_args: list[str], losses: Sequence[str], num_folds: int, threshold: float,
              eval_precision: str, command: str | None, seeds: int = 1) -> dict[str, Any]:
    """Record the experiment, or check that ``out_dir`` holds the same one (then add the new losses)."""
    protocol = {
        "train_args": train_args, "num_folds": num_folds, "threshold": threshold, "eval_precision": eval_precision,
        **({"seeds": seeds} if seeds > 1 else {}),
        "losses": list(losses), "command": command or " ".join(sys.argv), "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path = out_dir / "protocol.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        before, now = ({key: p.get(key, PROTOCOL_DEFAULTS.get(key)) for key in PROTOCOL_KEYS}
                       for p in (previous, protocol))
        differing = [key for key in PROTOCOL_KEYS if before[key] != now[key]]
        if differing:
            details = "; ".join(f"{key}: {before[key]!r} there, {now[key]!r} now" for key in differing)
            raise CVError(f"{out_dir} holds results of a different experiment ({details}); use another --out")
        previous["losses"] = list(dict.fromkeys([*previous.get("losses", []), *losses]))
        previous.setdefault("resumed", []).append({"command": protocol["command"], "git_commit": protocol["git_commit"],
                                                   "at": protocol["started"]})
        protocol = previous
    write_files_atomically(out_dir, {"protocol.json": to_json(protocol),
                                     ".gitignore": "# checkpoints, logs and the preprocessing cache\nruns/\ncache/\n"})
    return protocol


def learning_curves(metrics_csv: str | Path) -> pd.DataFrame:
    """One row per epoch from a CSVLogger metrics.csv (train and validation rows merged)."""
    table = pd.read_csv(metrics_csv)
    table = table.dropna(subset=["epoch"]).drop(columns=["step"], errors="ignore")
    columns = [c for c in table.columns if c == "epoch" or c.startswith(("train/", "val/", "lr"))]
    curves = table[columns].groupby("epoch", as_index=False).first()
    curves["epoch"] = curves["epoch"].astype(int)
    return curves


def _resolved_config(log_dir: Path) -> dict[str, Any]:
    """The settings a report states, from the config.yaml LightningCLI saved for the run."""
    config = yaml.safe_load((log_dir / "config.yaml").read_text())
    trainer, model, data = config["trainer"], config["model"], config["data"]
    return {
        "seed_everything": config.get("seed_everything"), "precision": trainer.get("precision"),
        "accelerator": trainer.get("accelerator"), "max_epochs": trainer.get("max_epochs"),
        "limit_train_batches": trainer.get("limit_train_batches"),
        "limit_val_batches": trainer.get("limit_val_batches"),
        "loss": model.get("loss"), "focal_gamma": model.get("focal_gamma"), "focal_alpha": model.get("focal_alpha"),
        "lr": model.get("lr"), "adam_eps": model.get("adam_eps"), "dropout_scale": model.get("dropout_scale"),
        "dropout_start_epoch": model.get("dropout_start_epoch", 0),
        "base_filters": model.get("base_filters"), "batch_norm": model.get("batch_norm"),
        "arch": model.get("arch", "paper_unet"), "encoder": model.get("encoder"), "norm": model.get("norm", "none"),
        "deep_supervision": model.get("deep_supervision", False), "optimizer": model.get("optimizer"),
        "keras_adam": model.get("keras_adam"), "weight_decay": model.get("weight_decay"),
        "scheduler": model.get("scheduler"), "warmup_epochs": model.get("warmup_epochs"),
        "ema_decay": model.get("ema_decay"), "augmentation": data.get("augmentation"),
        "root": data.get("root"), "image_size": data.get("image_size"), "in_channels": data.get("in_channels"),
        "skull_strip": data.get("skull_strip"), "num_folds": data.get("num_folds"), "fold": data.get("fold"),
        "split_seed": data.get("seed"), "batch_size": data.get("batch_size"), "augment": data.get("augment"),
        "test_fraction": data.get("test_fraction"), "neighbour_slices": data.get("neighbour_slices", False),
        "input_norm": model.get("input_norm", "scale"),
    }


def _check_same_split(out_dir: Path, fold: int, val_keys: list[str], name: str) -> None:
    for other in sorted((out_dir / "folds").glob("*.json")):
        previous = json.loads(other.read_text())
        if previous["fold"] == fold and previous["val_keys"] != val_keys:
            raise CVError(f"fold {fold} of {name} validated on other slices than {other.name}: the split changed "
                          "(data, data.seed or data.num_folds); use another --out")


def run_config(config: Config, out_dir: Path, loss: str, fold: int, num_folds: int,
               seed: int | None = None) -> Config:
    """A copy of the experiment's ``config`` for one (fold, loss[, seed]) run, in ``out_dir/runs/<run>/cv``.

    The preprocessing cache is ``out_dir/cache`` unless the user chose one; ``seed`` (None: the config's) sets
    ``seed_everything``.
    """
    run = config.clone()
    run.data.cache_dir = run.data.cache_dir or str(out_dir / "cache")
    run.data.num_folds, run.data.fold, run.model.loss = num_folds, fold, loss
    run.run_name, run.version, run.output_dir = run_name(loss, fold, seed), VERSION, str(out_dir / "runs")
    if seed is not None:
        run.seed_everything = seed
    return run


def run_one(out_dir: Path, config: Config, loss: str, fold: int, num_folds: int, threshold: float,
            eval_precision: str, callbacks: Sequence[Callback] = (), seed: int | None = None) -> dict[str, Any]:
    """Train one (fold, loss[, seed]) from fresh seeded weights, evaluate its last checkpoint, write its results.

    ``config`` is the experiment's (the user's training arguments, parsed); the run trains on a copy.
    """
    name = run_name(loss, fold, seed)
    shutil.rmtree(out_dir / "runs" / name / VERSION, ignore_errors=True)  # an interrupted attempt: start it over
    started = time.perf_counter()
    final = FinalCheckpoint()
    result = train(run_config(config, out_dir, loss, fold, num_folds, seed), callbacks=[*callbacks, final])
    train_seconds = time.perf_counter() - started
    if final.path is None or not final.path.is_file():
        raise CVError(f"run {name} ended without writing its final checkpoint in {result.log_dir}")
    evaluation = evaluate_checkpoints([final.path], part="val", threshold=threshold,
                                      precision=eval_precision, device="auto", keep_predictions=True)
    split = json.loads((result.log_dir / "splits.json").read_text())
    _check_same_split(out_dir, fold, split["val"], name)
    which = {"loss": loss, "fold": fold, **({"seed": seed} if seed is not None else {})}
    per_image = evaluation.per_image.assign(**which)
    curves = learning_curves(result.log_dir / "metrics.csv").assign(**which)
    record = {
        **which, "run": name, "metrics": evaluation.metrics,
        "logged_last_epoch": {k: v for k, v in result.metrics.items() if k.startswith("val/")},
        "train_seconds": round(train_seconds, 1),
        "config": _resolved_config(result.log_dir),
        "checkpoint": str(final.path.relative_to(out_dir) if final.path.is_relative_to(out_dir) else final.path),
        "val_keys": split["val"], "n_train": len(split["train"]),
        "val_groups": sorted(set(per_image["patient_group"])),
    }
    write_files_atomically(out_dir, {
        f"per_image/{name}.csv": per_image.to_csv(index=False),
        f"curves/{name}.csv": curves.to_csv(index=False),
        f"predictions/{name}.npz": predictions_npz(evaluation.per_image["key"], evaluation.predictions),
    })
    write_files_atomically(out_dir, {f"folds/{name}.json": to_json(record)})  # last: marks the run finished
    return record


def run_cv(
    train_args: Sequence[str],
    out_dir: str | Path,
    losses: Sequence[str] = DEFAULT_LOSSES,
    num_folds: int = 5,
    folds: Sequence[int] | None = None,
    threshold: float = 0.5,
    eval_precision: str = "32-true",
    callbacks: Sequence[Callback] = (),
    command: str | None = None,
    seeds: int = 1,
    ray: RaySettings | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) ``folds`` (default all) x ``losses`` (x ``seeds``); returns each finished run's record.

    Runs go fold by fold (all losses of fold 0, then fold 1, ...; with seeds: each seed's losses in turn) so a
    partial experiment is already paired. A run whose ``folds/<run>.json`` exists is skipped (its record has
    ``"skipped": True``). With ``ray`` the runs that are not are Ray tasks (:mod:`.parallel`), several at a time;
    a run that still fails after its retries does not stop the others. ``callbacks`` go to every run's Trainer
    (pickled to the Ray workers).

    Raises:
        CVError: reserved arguments given, bad seeds or Ray settings, ``out_dir`` holds another experiment, the
            split changed; with ``ray``, Ray cannot be joined or ``out_dir`` is not shared with a node.
        RunsFailed: (with ``ray``) runs failed after their retries; they are named, the others' files are written.
        ConfigError: a training argument does not parse (an unknown key, a bad value).
    """
    train_args = [str(arg) for arg in train_args]
    _check_args(train_args)
    if eval_precision not in PRECISIONS:
        raise CVError(f"unknown eval precision {eval_precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not losses:
        raise CVError("no loss to run")
    folds = list(range(num_folds)) if folds is None else list(folds)
    bad = [fold for fold in folds if not 0 <= fold < num_folds]
    if bad:
        raise CVError(f"folds {bad} are out of range for {num_folds} folds (0..{num_folds - 1})")
    config = parse_config(train_args)
    seed_list = seed_values(config.get("seed_everything"), seeds)
    out_dir = Path(out_dir)
    if ray is not None:
        from lightning_bts.experiments.parallel import prepare

        config, out_dir = prepare(ray, config, out_dir)
    _protocol(out_dir, train_args, losses, num_folds, threshold, eval_precision, command, seeds)
    records, pending = [], []
    runs = [(fold, seed, loss) for fold in folds for seed in seed_list for loss in losses]
    for fold, seed, loss in runs:
        name, path = run_name(loss, fold, seed), result_path(out_dir, loss, fold, seed)
        if path.is_file():
            print(f"[cv] {name}: finished earlier, skipped ({path})", flush=True)
            records.append({**json.loads(path.read_text()), "skipped": True})
            continue
        if ray is not None:
            pending.append((name, path, {"out_dir": out_dir, "config": config, "loss": loss, "fold": fold,
                                         "num_folds": num_folds, "threshold": threshold,
                                         "eval_precision": eval_precision, "callbacks": list(callbacks), "seed": seed}))
            continue
        print(f"[cv] {name}: training", flush=True)
        record = run_one(out_dir, config, loss, fold, num_folds, threshold, eval_precision, callbacks, seed)
        _announce(name, record)
        records.append({**record, "skipped": False})
    failed: dict[str, str] = {}
    if pending:
        from lightning_bts.experiments.parallel import run_on_ray

        finished, failed = run_on_ray(ray, pending, run_one, _announce)
        order = {run_name(loss, fold, seed): i for i, (fold, seed, loss) in enumerate(runs)}
        records = sorted(records + [{**record, "skipped": False} for record in finished],
                         key=lambda record: order[record["run"]])
    if records:
        collect(out_dir)
    if failed:
        listing = "; ".join(f"{name} ({reason})" for name, reason in failed.items())
        raise RunsFailed(f"{len(failed)} run(s) failed (a crash is retried {ray.retries} time(s), bad input not at "
                         f"all): {listing}. The {len(records)} "
                         f"finished run(s) are in {out_dir}; re-run the same command to retry the failed ones",
                         finished=len(records))
    return records


def _announce(name: str, record: dict[str, Any]) -> None:
    metrics = record["metrics"]
    print(f"[cv] {name}: dice {metrics['dice']:.4f}, hd95 {metrics['hd95']:.2f} ({record['train_seconds']:.0f} s)",
          flush=True)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description="k-fold cross-validation of several losses (default: 5 folds x focal, bce), resumable. "
        "Every other argument is passed to training as in scripts/fit.py (--config, --trainer.*, ...).",
        epilog="Example: python scripts/cv.py --out reports/cv_figshare --report --config configs/paper_focal.yaml "
        "--data.root ../shared/data/figshare_brain_tumor --data.image_size 64 --trainer.max_epochs 10",
        allow_abbrev=False,
    )
    parser.add_argument("--out", required=True, help="results folder (re-run the same command to resume)")
    parser.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES))
    parser.add_argument("--num-folds", type=int, default=5, help="k (sets data.num_folds for every run)")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="run only these folds (default all)")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the evaluation")
    parser.add_argument("--eval-precision", default="32-true", choices=tuple(PRECISIONS),
                        help="precision of the evaluation of each fold's last checkpoint (default 32-true)")
    parser.add_argument("--report", action="store_true", help="write the report (report.md, CSV, PNG) at the end")
    parser.add_argument("--report-only", action="store_true", help="only (re)write the report from finished runs")
    parser.add_argument("--seeds", type=int, default=1, metavar="N", help="train each (loss, fold) N times, "
                        "seed_everything S, S+1, ... (runs <loss>_fold<k>_seed<s>); the report adds the spread across "
                        "seeds (default 1)")
    ray = parser.add_argument_group("Ray (runs in parallel; see docs/cv.md)")
    ray.add_argument("--address", default=None, help="run each (loss, fold[, seed]) as a Ray task: auto (the "
                     "cluster `ray start` runs here), local (a new Ray on this machine) or HOST:PORT. --out must "
                     "then be a folder every node reaches at the same path (a shared filesystem)")
    ray.add_argument("--cpus-per-run", type=float, default=None, help="CPUs each run reserves, also its torch "
                     "threads (default 1)")
    ray.add_argument("--gpus-per-run", type=float, default=None, help="GPUs each run reserves (default 0; "
                     "fractions share a GPU); needs a GPU accelerator (auto or gpu)")
    ray.add_argument("--max-concurrent", type=int, default=None, help="at most this many runs at once (default: as "
                     "many as the cluster has room for)")
    ray.add_argument("--retries", type=int, default=None, help="times Ray re-runs a failed run before it counts as "
                     "failed (default 2); the command then fails, naming it, after the other runs and the report")
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args, train_args = parse_args(argv)
    if not args.report_only:
        from lightning_bts.experiments.parallel import settings_from_args

        ray = settings_from_args(args)
        command = " ".join(["python scripts/cv.py", *(sys.argv[1:] if argv is None else argv)])
        try:
            run_cv(train_args, args.out, args.losses, args.num_folds, args.folds, args.threshold, args.eval_precision,
                   command=command, seeds=args.seeds, ray=ray)
        except RunsFailed as failure:  # the report of the runs that finished, then the error naming the others
            if args.report and failure.finished:
                _write_report(args.out)
            raise
    if args.report or args.report_only:
        _write_report(args.out)


def _write_report(out: str) -> None:
    from lightning_bts.experiments.report import build_report

    print(f"[cv] report: {build_report(out)}")
