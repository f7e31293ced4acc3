"""The ablation runner: each row of a rows file trained (or selected), scored on the test patients; resumable.

Why: issue 13 asks what each ingredient of the best recipe buys at equal wall-clock budgets, on patients neither
training nor selection touched. A trained row runs ``scripts/fit.py`` in a subprocess, one at a time (nothing
of one row leaks into the next; a crash names the row's log) with ``trainer.max_time`` from ``--minutes``, then
``scripts/evaluate.py --part test`` scores its last checkpoint at native size with the paper's rule. A select row
copies a checkpoint (the original stays untouched) and chooses post-processing on the validation patients with
``scripts/select_postprocessing.py``, without TTA (``--no-tta``: the post-processing row) or with it. A best_run
row scores ``--best-run``.
Files: ``RUNS/<row>/`` (:class:`~.ablation_rows.RowFiles`), the report in ``OUT`` (:mod:`.ablation_report`). A row
with ``test/metrics.json`` is skipped when the command is repeated; one trained with other arguments stops the run.

    python scripts/ablation.py --minutes 15 --best-run runs/best_recipe/best_cpu_seed42/<version>
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_bts.evaluation.outputs import to_json, write_files_atomically
from lightning_bts.experiments.ablation_report import write_report
from lightning_bts.experiments.ablation_rows import RESERVED, AblationError, Row, RowFiles, load_rows
from lightning_bts.files import atomic_path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROWS = "configs/ablation/best_recipe.yaml"
DEFAULT_OUT = "reports/best_recipe"
DEFAULT_RUNS = "runs/ablation"
DEFAULT_MINUTES = 15.0


@dataclass
class Settings:
    """What every row shares: where runs go, the budget, the extra fit.py arguments, the best run, the device."""

    runs_dir: Path
    minutes: float = DEFAULT_MINUTES
    extra_args: list[str] = field(default_factory=list)
    best_run: Path | None = None
    device: str = "auto"

    @property
    def cache_dir(self) -> Path:
        return self.runs_dir / "cache"


def max_time(minutes: float) -> str:
    """``trainer.max_time`` as Lightning reads it, ``DD:HH:MM:SS`` (whole seconds, at least one)."""
    if not math.isfinite(minutes) or minutes <= 0:
        raise AblationError(f"--minutes must be a positive number, got {minutes}")
    seconds = max(1, round(minutes * 60))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    return f"{days:02d}:{hours:02d}:{seconds // 60:02d}:{seconds % 60:02d}"


def fit_command(row: Row, settings: Settings) -> list[str]:
    """The whole fit.py command of a trained row: its overrides, the budget, the user's extras, its folder."""
    cache = [] if any(a.split("=", 1)[0] == "--data.cache_dir" for a in settings.extra_args) else [
        f"--data.cache_dir={settings.cache_dir}"]
    return [sys.executable, str(REPO / "scripts" / "fit.py"), *row.fit_args(), *cache,
            f"--trainer.max_time={max_time(settings.minutes)}", "--trainer.enable_progress_bar=false",
            *settings.extra_args, "--output_dir", str(settings.runs_dir), "--run_name", row.name,
            "--version", RowFiles.of(settings.runs_dir, row.name).run_dir.name]


def shown(command: Sequence[str]) -> str:
    """A command as a user would type it: ``python scripts/NAME.py ...`` (the script's path relative to here)."""
    return shlex.join(["python", os.path.relpath(command[1]), *command[2:]])


def _script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / f"{name}.py"), *args]


def _run(command: list[str], log: Path, what: str) -> None:
    """Run ``command``, its output to the console and to ``log``; a failure names the row and the log. A runner
    stopped meanwhile (Ctrl-C, SIGTERM) stops the command too, rather than leaving it training alone."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[ablation] {what}: {shown(command)}", flush=True)
    lines: list[str] = []
    with log.open("w") as stream, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   text=True) as process:
        try:
            for line in process.stdout or ():
                sys.stdout.write(line)
                stream.write(line)
                lines = [*lines[-4:], line.strip()]
            code = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
    if code != 0:
        last = next((line for line in reversed(lines) if line), "")
        raise AblationError(f"{what} failed (exit {code}): {last} (whole output: {log})")


def _record(files: RowFiles, record: dict[str, Any]) -> None:
    """Write a row's record; its old test scores, if any, belonged to other weights or another choice: gone."""
    shutil.rmtree(files.evaluation, ignore_errors=True)
    write_files_atomically(files.folder, {files.record.name: to_json(record)})


def train_row(row: Row, settings: Settings, commit: str) -> dict[str, Any]:
    """Train a row (unless its record says it was, with the same command); its record."""
    files = RowFiles.of(settings.runs_dir, row.name)
    command = fit_command(row, settings)
    args = command[2:]
    if files.record.is_file():
        record = json.loads(files.record.read_text())
        if record.get("fit_args") != args:
            raise AblationError(f"row {row.name} in {settings.runs_dir} was trained with other arguments "
                                f"({shlex.join(record.get('fit_args', []))}); use another --runs folder, or delete "
                                f"{files.folder} to train it again")
        return record
    shutil.rmtree(files.run_dir, ignore_errors=True)  # an interrupted attempt: start it over
    started = time.perf_counter()
    _run(command, files.folder / "fit.log", f"row {row.name}: training")
    checkpoint = files.run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise AblationError(f"row {row.name}: training ended without {checkpoint}")
    record = {"name": row.name, "kind": row.kind, "fit_args": args, "fit_command": shown(command),
              "run_dir": str(files.run_dir), "checkpoint": str(checkpoint),
              "wall_minutes": (time.perf_counter() - started) / 60, "git_commit": commit}
    _record(files, record)
    return record


def check_best_run(run_dir: Path) -> Path:
    """``run_dir``'s last checkpoint, checked before any row trains, so a wrong ``--best-run`` costs no time."""
    if not run_dir.is_dir():
        raise AblationError(f"--best-run: folder {run_dir} not found (a finished run of configs/best_cpu.yaml: "
                            "RUNS/RUN_NAME/VERSION)")
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise AblationError(f"--best-run: {run_dir} holds no checkpoints/last.ckpt: is it a fit.py run folder?")
    return checkpoint


def best_run_record(row: Row, settings: Settings, commit: str) -> dict[str, Any] | None:
    """A best_run row's record: ``--best-run``'s last checkpoint (``None`` without one); a new record (and new
    scores) whenever that checkpoint changed since (a run scored while it was still training, then finished)."""
    if settings.best_run is None:
        print(f"[ablation] row {row.name}: no --best-run given, row left out", flush=True)
        return None
    checkpoint = check_best_run(settings.best_run)
    if not (settings.best_run / "validation_preview.png").is_file():
        print(f"[ablation] warning: {settings.best_run} has no validation_preview.png, which fit.py draws when a run "
              "ends: is it still training?", flush=True)
    files = RowFiles.of(settings.runs_dir, row.name)
    record = {"name": row.name, "kind": row.kind, "run_dir": str(settings.best_run), "checkpoint": str(checkpoint),
              "checkpoint_identity": [str(checkpoint), os.stat(checkpoint).st_mtime_ns], "git_commit": commit}
    if files.record.is_file():
        previous = json.loads(files.record.read_text())
        if previous.get("checkpoint_identity") == record["checkpoint_identity"]:
            return previous
    _record(files, record)
    return record


def select_row(row: Row, source: dict[str, Any], settings: Settings, commit: str) -> dict[str, Any]:
    """Copy ``source``'s checkpoint into the row's folder and store the chosen post-processing in the copy; done
    (and scored) again when the source checkpoint changed since: the choice belongs to those weights."""
    files = RowFiles.of(settings.runs_dir, row.name)
    identity = [source["checkpoint"], os.stat(source["checkpoint"]).st_mtime_ns]
    if files.record.is_file() and files.selected.is_file():
        previous = json.loads(files.record.read_text())
        if previous.get("source_checkpoint") == identity:
            return previous
    files.folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(files.selected) as partial:
        shutil.copyfile(source["checkpoint"], partial)
    with_tta = row.select == "tta"
    _run(_script("select_postprocessing", "--ckpt", str(files.selected), "--cache-dir", str(settings.cache_dir),
                 *(["--device", settings.device] if settings.device != "auto" else []),
                 *([] if with_tta else ["--no-tta"])),
         files.folder / "select.log",
         f"row {row.name}: choosing post-processing " + ("and TTA" if with_tta else "without TTA"))
    record = {**{k: v for k, v in source.items() if k in ("run_dir", "wall_minutes", "fit_command")},
              "name": row.name, "kind": row.kind, "source": source["name"], "selection": row.select,
              "source_checkpoint": identity, "checkpoint": str(files.selected), "git_commit": commit}
    _record(files, record)
    return record


def evaluate_row(row: Row, record: dict[str, Any], settings: Settings) -> None:
    """``scripts/evaluate.py --part test``: the paper's rule for a plain checkpoint, the stored one for a copy."""
    files = RowFiles.of(settings.runs_dir, row.name)
    plain = ["--postprocessing", "paper", "--no-tta"] if row.select is None else []
    device = ["--device", settings.device] if settings.device != "auto" else []
    _run(_script("evaluate", "--ckpt", record["checkpoint"], "--part", "test", "--out", str(files.evaluation),
                 "--cache-dir", str(settings.cache_dir), *plain, *device),
         files.folder / "evaluate.log", f"row {row.name}: scoring the test patients")


def run_rows(rows: Sequence[Row], settings: Settings, commit: str) -> None:
    """Run (or resume) ``rows`` in order; select rows need their source row trained (in this call or before)."""
    for arg in settings.extra_args:
        if arg.split("=", 1)[0] in (*RESERVED, "--config"):
            raise AblationError(f"{arg.split('=', 1)[0]} cannot be given to every row: the runner sets the folders "
                                "and --minutes the budget, and configs belong in the rows file")
    if settings.best_run is not None and any(row.kind == "best_run" for row in rows):
        check_best_run(settings.best_run)
    for row in rows:
        files = RowFiles.of(settings.runs_dir, row.name)
        if row.kind == "train":
            record = train_row(row, settings, commit)
        elif row.kind == "best_run":
            record = best_run_record(row, settings, commit)
            if record is None:
                continue
        else:
            record = None
        if row.select is not None:
            source = record if row.kind == "best_run" else _source_record(row, settings)
            record = select_row(row, source, settings, commit)
        if files.metrics.is_file():
            print(f"[ablation] row {row.name}: finished earlier, skipped ({files.metrics})", flush=True)
            continue
        evaluate_row(row, record, settings)


def _source_record(row: Row, settings: Settings) -> dict[str, Any]:
    source = RowFiles.of(settings.runs_dir, row.source or "")
    if not source.record.is_file():
        raise AblationError(f"row {row.name} copies the checkpoint of row {row.source}, which is not trained in "
                            f"{settings.runs_dir} yet: run row {row.source} first")
    return json.loads(source.record.read_text())


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="ablation.py", allow_abbrev=False,
        description="Train each row of an ablation (ingredients added one at a time) for the same wall-clock budget, "
        "score it on the held-out test patients at native resolution, and write the report (ablation.md, "
        "ablation.csv, dice_vs_minutes.png). Re-run the same command to resume. Other arguments go to every "
        "training, as in scripts/fit.py (--data.root, --precision, ...).",
        epilog="Example: python scripts/ablation.py --minutes 15 --best-run runs/best_recipe/best_cpu_seed42/VERSION")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"the rows file (default {DEFAULT_ROWS})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"the report's folder (default {DEFAULT_OUT})")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"the rows' runs, resumable (default {DEFAULT_RUNS})")
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                        help="training budget of every trained row, trainer.max_time (default 15)")
    parser.add_argument("--best-run", default=None, metavar="DIR",
                        help="a finished fit.py run folder of configs/best_cpu.yaml (with checkpoints/last.ckpt): "
                        "scored as the best_run row instead of training it again")
    parser.add_argument("--only", nargs="+", default=None, metavar="ROW", help="run only these rows (default all)")
    parser.add_argument("--device", default="auto", help="device of the evaluation and selection (default: auto)")
    parser.add_argument("--dry-run", action="store_true", help="print each trained row's fit.py command, run nothing")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from finished rows")
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> Path | None:
    """Runs the rows, then writes the report; returns the report's folder (``None`` for ``--dry-run``).

    Raises:
        AblationError: a bad rows file, an unknown row, a missing --best-run folder, a failed row.
    """
    from lightning_bts.experiments.cv import git_commit

    args, extra = parse_args(argv)
    rows_file = Path(args.rows)
    if not rows_file.is_file() and not rows_file.is_absolute() and (REPO / rows_file).is_file():
        rows_file = REPO / rows_file  # the default, from another working directory
    ablation = load_rows(rows_file, REPO)
    rows = ablation.pick(args.only)
    settings = Settings(Path(args.runs), args.minutes, extra, Path(args.best_run) if args.best_run else None,
                        args.device)
    given = sys.argv[1:] if argv is None else list(argv)
    # the command that trains and scores the rows: --report-only only rewrites its report
    command = shlex.join(["python", "scripts/ablation.py", *(arg for arg in given if arg != "--report-only")])
    commit = git_commit()
    if args.dry_run:
        for row in rows:
            if row.kind == "train":
                print(f"{row.name}: {shown(fit_command(row, settings))}")
        return None
    if not args.report_only:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through _run, which stops its command
        run_rows(rows, settings, commit)
    report = write_report(ablation, settings.runs_dir, Path(args.out), command, commit, settings.minutes)
    print(f"[ablation] report: {report}", flush=True)
    return report.parent
