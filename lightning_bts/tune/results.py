"""A finished sweep's files: ``results.csv``, ``results.md``, the best trial's config and checkpoint.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path
from typing import Any

from lightning_bts.files import write_atomically
from lightning_bts.training.config import parse_config
from lightning_bts.tune.settings import SweepResult
from lightning_bts.tune.space import METRIC, MODE
from lightning_bts.tune.trial_args import TrainConfig

# ------------------------------------------------------------------------------------------------- results


def write_results(grid: Any, experiment_dir: Path, parsed: TrainConfig, keys: list[str], num_samples: int,
                  cv: bool = False, ddp: bool = False) -> SweepResult:
    """All trials as CSV and Markdown, the best trial as a fit.py config, and its best checkpoint copied
    (with ``cv`` its last, which holds every fold; for multi-worker trials (``ddp``) the best of its Ray Train run).

    ``complete`` is False when a trial did not finish or fewer than ``num_samples`` trials exist yet (an
    interrupted sweep, which ``resume`` continues).
    """
    trials = _trials(grid)
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial = trials.get(Path(result.path).name)
        row = {"trial": trial.trial_id if trial else Path(result.path).name,
               "status": trial.status if trial else "ERROR" if result.error else "UNKNOWN",
               METRIC: metrics.get(METRIC), "iterations": metrics.get("training_iteration"),
               "failures": trial.num_failures if trial else None,
               "error": str(result.error).splitlines()[0][:120] if result.error else "",
               "path": Path(result.path).name}
        row.update({key: result.config.get(key) for key in keys})
        rows.append(row)
    rows.sort(key=lambda r: -r[METRIC] if isinstance(r[METRIC], float) and not math.isnan(r[METRIC]) else math.inf)
    columns = ["trial", "status", METRIC, "iterations", "failures", *keys, "error"]
    trials_csv, trials_md = experiment_dir / "trials.csv", experiment_dir / "trials.md"
    write_atomically(trials_csv, _csv(rows, [*columns, "path"]))
    write_atomically(trials_md, _markdown(rows, columns))
    complete = len(rows) >= num_samples and all(r["status"] == "TERMINATED" for r in rows)

    best_config = best_checkpoint = None
    best_metrics: dict[str, Any] = {}
    best_overrides: dict[str, Any] = {}
    scored = [r for r in grid if r.metrics and r.metrics.get(METRIC) is not None]
    if scored:
        best = grid.get_best_result(metric=METRIC, mode=MODE, scope="last", filter_nan_and_inf=True)
        best_metrics = dict(best.metrics)
        best_overrides = {key: best.config[key] for key in keys}
        best_config = experiment_dir / "best_config.yaml"
        header = (f"# Best trial of the sweep in {experiment_dir} ({METRIC} {best_metrics.get(METRIC):.4f}, "
                  f"trial {best_metrics.get('trial_id')}).\n"
                  f"# Retrain: python scripts/fit.py --config {best_config}\n")
        write_atomically(best_config, header + parsed.dump(best_overrides))
        parse_config(["--config", str(best_config)], parser=parsed.parser)  # what fit.py --config will read
        if cv:
            checkpoint = best.checkpoint
        elif ddp:
            from lightning_bts.tune.ddp import best_checkpoint as best_ddp_checkpoint

            checkpoint = best_ddp_checkpoint(Path(best.path))
        else:
            checkpoint = best.get_best_checkpoint(METRIC, MODE) if best.best_checkpoints else best.checkpoint
        if checkpoint is not None:
            best_checkpoint = experiment_dir / "best_checkpoint"
            staging = experiment_dir / ".best_checkpoint.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            checkpoint.to_directory(str(staging))
            shutil.rmtree(best_checkpoint, ignore_errors=True)
            staging.rename(best_checkpoint)
    return SweepResult(experiment_dir, trials_csv, trials_md, best_config, best_checkpoint, best_metrics,
                       best_overrides, complete)


def _trials(grid: Any) -> dict[str, Any]:
    """Tune's trials by folder name, for their status and failure count.

    Private Ray API, on purpose: Ray 2.60's public ``Result`` (``ray/tune/result_grid.py``) has the metrics, the
    error and the path of a trial but not its status (an unfinished trial has no error either) nor how often it
    failed, and ``ResultGrid.get_dataframe()`` has only the reported metrics; ``ResultGrid.num_errors`` and
    ``num_terminated`` read these same ``Trial`` objects.
    """
    return {Path(trial.path).name: trial for trial in grid._experiment_analysis.trials}


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows({c: ("" if row.get(c) is None else row.get(c)) for c in columns} for row in rows)
    return buffer.getvalue()


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(c)).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines) + "\n"
