"""The best recipe's ablation: the rows file, the table and its gains, the runner end to end on a tiny dataset."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from lightning_bts.experiments.ablation_report import build_table, write_report
from lightning_bts.experiments.ablation_rows import AblationError, RowFiles, load_rows, parse_rows
from tests.conftest import REPO, write_dataset

ROWS_FILE = REPO / "configs" / "ablation" / "best_recipe.yaml"


def test_the_shipped_rows_add_one_ingredient_per_row():
    ablation = load_rows(ROWS_FILE, REPO)
    assert ablation.names() == ["paper", "norm", "schedule", "augmentation", "loss", "postprocessing", "tta",
                                "smp_unet_resnet18", "smp_unet_resnet18_tta", "best_60min"]
    assert ablation.reference == "paper"
    paper, norm, schedule, augmentation, loss = (ablation.row(n) for n in ablation.names()[:5])
    assert paper.configs[0].endswith("configs/paper_bce.yaml")
    for before, after in [(paper, norm), (norm, schedule), (schedule, augmentation), (augmentation, loss)]:
        assert after.kind == "train" and after.configs == before.configs
        assert after.args[:len(before.args)] == before.args and len(after.args) > len(before.args)
    assert norm.args[len(paper.args):] == ("--model.norm=batch",)
    assert [ablation.row(n).source for n in ("postprocessing", "tta", "smp_unet_resnet18_tta")] == \
        ["loss", "loss", "smp_unet_resnet18"]
    assert [ablation.row(n).select for n in ("postprocessing", "tta", "best_60min")] == [
        "postprocessing", "tta", "tta"]
    assert ablation.row("smp_unet_resnet18").compare == "loss" and ablation.row("best_60min").kind == "best_run"
    assert {row.name for row in ablation.rows if row.curve} == {"paper", "loss", "best_60min"}


def test_the_loss_row_is_the_best_cpu_recipe_and_the_paper_row_the_paper_bce_recipe(tmp_path):
    """All ingredients added = configs/best_cpu.yaml (but for the budget); the first row = paper_bce at 128x128."""
    from lightning_bts.training.cli import BTSCLI

    ablation = load_rows(ROWS_FILE, REPO)

    def parsed(args):
        cli = BTSCLI([*args, "--output_dir", str(tmp_path)])
        trainer = {key: cli.config.trainer.get(key) for key in ("accelerator", "precision", "max_epochs")}
        return dict(cli.model.hparams), dict(cli.datamodule.hparams), trainer, cli.config.seed_everything

    loss_row = parsed(ablation.row("loss").fit_args())
    assert loss_row == parsed(["--config", str(REPO / "configs/best_cpu.yaml")])
    model, data, _, _ = parsed(ablation.row("paper").fit_args())
    paper_model, paper_data, _, _ = parsed(["--config", str(REPO / "configs/paper_bce.yaml")])
    assert model == {**paper_model, "channels_last": True}  # speed only
    differing = {key for key in data if data[key] != paper_data[key]}
    assert differing == {"image_size", "test_fraction"} and data["image_size"] == 128
    smp_model, *_ = parsed(ablation.row("smp_unet_resnet18").fit_args())
    assert smp_model["arch"] == "Unet" and smp_model["encoder"] == "resnet18" and smp_model["loss"] == "dice_bce_image"


@pytest.mark.parametrize(("rows", "message"), [
    ({"rows": [{"name": "a", "config": "configs/quick_cpu.yaml", "lr": 1}]}, "unknown key(s) ['lr']"),
    ({"rows": [{"name": "a", "args": ["--model.lr=1"]}]}, "needs a 'config' or a trained row above it"),
    ({"rows": [{"name": "a", "config": "configs/quick_cpu.yaml"}, {"name": "a", "args": []}]}, "used twice"),
    ({"rows": [{"name": "a", "config": "configs/quick_cpu.yaml"}, {"name": "b", "base": "z"}]}, "base: no row 'z'"),
    ({"rows": [{"name": "a", "config": "configs/quick_cpu.yaml", "args": ["--model.lr", "1"]}]}, "'--option=value'"),
    ({"rows": [{"name": "a", "config": "configs/quick_cpu.yaml", "args": ["--trainer.max_time=00:00:01:00"]}]},
     "--minutes sets the budget"),
    ({"rows": [{"name": "a", "config": "configs/missing.yaml"}]}, "configs/missing.yaml not found"),
    ({"rows": [{"name": "a", "select": "tta"}]}, "needs a trained or best_run row above it"),
    ({"rows": [{"name": "a", "config": "configs/quick_cpu.yaml"}, {"name": "b", "select": "both"}]},
     "select must be one of postprocessing, tta"),
    ({"rows": [{"name": "a", "config": "configs/quick_cpu.yaml"}, {"name": "b", "select": "tta", "args": []}]},
     "a select row trains nothing"),
    ({"rows": [{"name": "a/b", "config": "configs/quick_cpu.yaml"}]}, "it is a folder"),
    ({"reference": "z", "rows": [{"name": "a", "config": "configs/quick_cpu.yaml"}]}, "reference: no row 'z'"),
    ({"rows": []}, "non-empty list 'rows'"),
    ({"rows": [{"name": "a", "config": "configs/quick_cpu.yaml", "from_recipe": ["model.lr"]}]},
     "from_recipe needs a top-level 'recipe: CONFIG'"),
    ({"recipe": "configs/best_cpu.yaml", "rows": [{"name": "a", "config": "configs/quick_cpu.yaml",
                                                  "from_recipe": ["model.nope"]}]},
     "from_recipe: model.nope is not set in"),
    ({"recipe": "configs/best_cpu.yaml", "rows": [{"name": "a", "config": "configs/quick_cpu.yaml"},
                                                  {"name": "b", "select": "tta", "from_recipe": ["model.lr"]}]},
     "a select row trains nothing"),
    ({"recipe": "configs/missing.yaml", "rows": [{"name": "a", "config": "configs/quick_cpu.yaml"}]},
     "recipe: config file configs/missing.yaml not found"),
])
def test_a_bad_rows_file_names_the_row_and_the_key(rows, message):
    with pytest.raises(AblationError) as error:
        parse_rows(rows, Path("rows.yaml"), REPO)
    assert message in str(error.value) and "rows.yaml" in str(error.value)


def test_a_rows_file_or_recipe_that_is_not_yaml_or_not_a_mapping_is_named(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("rows: [unclosed\n")
    with pytest.raises(AblationError, match=f"rows file {broken} is not valid YAML"):
        load_rows(broken)
    with pytest.raises(AblationError, match=f"rows file {tmp_path / 'gone.yaml'} not found"):
        load_rows(tmp_path / "gone.yaml")
    rows = {"recipe": str(broken), "rows": [{"name": "a", "config": "configs/quick_cpu.yaml"}]}
    with pytest.raises(AblationError, match=f"recipe {broken} is not valid YAML"):
        parse_rows(rows, Path("rows.yaml"), REPO)
    broken.write_text("- a list, not options\n")
    with pytest.raises(AblationError, match=f"rows.yaml: recipe: {broken} is not a mapping of options"):
        parse_rows(rows, Path("rows.yaml"), REPO)


def test_from_recipe_takes_the_values_from_the_recipe_so_the_rows_follow_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"lr": 0.01, "norm": "group", "deep_supervision": True},
                                      "data": {"augmentation": {"flip": 0.5}}}))
    rows = {"recipe": str(recipe), "rows": [
        {"name": "a", "config": "configs/quick_cpu.yaml", "args": ["--model.lr=1"],
         "from_recipe": ["model.lr", "model.norm", "model.deep_supervision", "data.augmentation"]}]}
    assert parse_rows(rows, tmp_path / "rows.yaml", REPO).row("a").args == (
        "--model.lr=1", "--model.lr=0.01", "--model.norm=group", "--model.deep_supervision=true",
        '--data.augmentation={"flip": 0.5}')


def test_an_unknown_row_name_is_named():
    with pytest.raises(AblationError, match="unknown row 'nope'.*paper, norm"):
        load_rows(ROWS_FILE, REPO).pick(["paper", "nope"])


def _fake_row(runs: Path, name: str, dice: float | None, minutes: list[float], ci95: bool = False,
              run_dir: Path | None = None, **record) -> None:
    files = RowFiles.of(runs, name)
    run_dir = run_dir or files.run_dir
    if minutes:
        run_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"epoch": list(range(len(minutes))), "step": range(len(minutes)),
                      "val/dice": [(dice or 0.3) * (i + 1) / len(minutes) for i in range(len(minutes))],
                      "time/minutes": minutes}).to_csv(run_dir / "metrics.csv", index=False)
    files.folder.mkdir(parents=True, exist_ok=True)
    files.record.write_text(json.dumps({"name": name, "run_dir": str(run_dir), "git_commit": "abc", **record}))
    if dice is None:
        return
    metrics = {"dice": dice, "precision": dice + 0.01, "recall": dice - 0.01, "hd95": 10 * dice, "n_images": 7,
               "per_image": {"dice": dice - 0.02}, "postprocessing_rule": "threshold 0.5", "tta": False,
               "hd_units": "pixels of the original slices"}
    if ci95:
        metrics["ci95"] = {"dice": [dice - 0.05, dice + 0.05], "hd95": [1.0, 2.0]}
    files.evaluation.mkdir()
    files.metrics.write_text(json.dumps(metrics))


def _ablation(tmp_path: Path):
    rows = {"reference": "paper", "rows": [
        {"name": "paper", "config": "configs/quick_cpu.yaml", "curve": True},
        {"name": "norm", "args": ["--model.norm=batch"], "curve": True},
        {"name": "pp", "select": "postprocessing"},
        {"name": "late", "args": ["--model.lr=0.1"]},
        {"name": "other", "base": "paper", "args": ["--model.lr=0.2"], "compare": "norm"},
    ]}
    return parse_rows(rows, tmp_path / "rows.yaml", REPO)


def test_the_table_holds_each_finished_row_with_its_gains_and_intervals_where_given(tmp_path):
    runs = tmp_path / "runs"
    _fake_row(runs, "paper", 0.50, [1.0, 2.0, 3.0])  # no ci95: evaluated before intervals existed
    _fake_row(runs, "norm", 0.60, [1.5, 3.1], ci95=True, wall_minutes=4.0, fit_command="python scripts/fit.py x")
    _fake_row(runs, "pp", 0.65, [], run_dir=RowFiles.of(runs, "norm").run_dir, source="norm")
    _fake_row(runs, "late", None, [1.0])  # trained, not yet evaluated: not in the table
    _fake_row(runs, "other", 0.55, [2.0])
    table = build_table(_ablation(tmp_path), runs).set_index("row")
    assert list(table.index) == ["paper", "norm", "pp", "other"]
    assert math.isnan(table.loc["paper", "gain_previous"]) and table.loc["paper", "gain_reference"] == 0
    assert table.loc["norm", "gain_previous"] == pytest.approx(0.10)
    assert table.loc["pp", "gain_previous"] == pytest.approx(0.05)
    assert table.loc["pp", "gain_reference"] == pytest.approx(0.15)
    assert table.loc["other", "gain_previous"] == pytest.approx(-0.05)  # compare: norm
    assert table.loc["paper", "dice_per_image"] == pytest.approx(0.48)
    assert math.isnan(table.loc["paper", "dice_ci95_low"]) and table.loc["norm", "dice_ci95_high"] == 0.65
    assert "precision_ci95_low" not in table  # only the intervals given
    assert table.loc["paper", "train_minutes"] == 3.0 and table.loc["paper", "epochs"] == 3
    assert table.loc["pp", "train_minutes"] == 3.1 and table.loc["pp", "epochs"] == 2  # the source's model


def test_the_report_states_command_commit_and_table_and_draws_the_curve_rows(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "report"
    _fake_row(runs, "paper", 0.50, [1.0, 2.0, 3.0])
    _fake_row(runs, "norm", 0.60, [1.5, 3.1], ci95=True, fit_command="python scripts/fit.py --model.norm=batch")
    report = write_report(_ablation(tmp_path), runs, out, "python scripts/ablation.py --minutes 3", "abc123", 3)
    text = report.read_text()
    assert "Command: `python scripts/ablation.py --minutes 3`" in text
    assert "Commit: `abc`" in text  # the rows' own commit, not the one the report was rewritten at
    assert "| paper | 50.0 | 48.0 | 51.0 | 49.0 | 5.0 | 3.0 | 3 |" in text
    assert "| norm | 60.0 (55.0–65.0) |" in text and "| +10.0 | +10.0 |" in text
    assert "Not finished (or left out): pp, late, other." in text
    assert "`python scripts/fit.py --model.norm=batch`" in text
    assert (out / "dice_vs_minutes.png").read_bytes()[:4] == b"\x89PNG"
    assert list(pd.read_csv(out / "ablation.csv")["row"]) == ["paper", "norm"]


def test_rows_scored_at_different_commits_are_named_with_their_commits(tmp_path):
    runs = tmp_path / "runs"
    _fake_row(runs, "paper", 0.50, [1.0])
    _fake_row(runs, "norm", 0.60, [1.5], git_commit="def")
    text = write_report(_ablation(tmp_path), runs, tmp_path / "out", "c", "now", 3).read_text()
    assert "Commits: `abc` (paper), `def` (norm)" in text
    empty = write_report(_ablation(tmp_path), tmp_path / "none", tmp_path / "empty", "c", "now", 3).read_text()
    assert "Commit: `now`" in empty


def test_report_only_shows_the_command_that_trains_the_rows(tmp_path):
    from lightning_bts.experiments import ablation
    _fake_row(tmp_path / "runs", "paper", 0.50, [1.0])
    rows = tmp_path / "rows.yaml"
    rows.write_text(yaml.safe_dump({"reference": "paper",
                                    "rows": [{"name": "paper", "config": "configs/quick_cpu.yaml"}]}))
    arguments = ["--rows", str(rows), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report"),
                 "--minutes", "3"]
    out = ablation.main([*arguments, "--report-only"])
    shown = shlex.join(["python", "scripts/ablation.py", *arguments])
    assert f"Command: `{shown}`" in (out / "ablation.md").read_text()


def test_the_report_states_each_models_training_precision(tmp_path):
    runs = tmp_path / "runs"
    _fake_row(runs, "paper", 0.50, [1.0])
    _fake_row(runs, "norm", 0.60, [1.5])
    for name, precision in (("paper", "32-true"), ("norm", "bf16-mixed")):
        config = yaml.safe_dump({"trainer": {"precision": precision}})
        (RowFiles.of(runs, name).run_dir / "config.yaml").write_text(config)
    text = write_report(_ablation(tmp_path), runs, tmp_path / "mixed", "c", "abc", 3).read_text()
    assert "Training precision: paper 32-true, norm bf16-mixed." in text
    bf16 = yaml.safe_dump({"trainer": {"precision": "bf16-mixed"}})
    (RowFiles.of(runs, "paper").run_dir / "config.yaml").write_text(bf16)
    text = write_report(_ablation(tmp_path), runs, tmp_path / "same", "c", "abc", 3).read_text()
    assert "Training precision: bf16-mixed for every row's model." in text
    assert build_table(_ablation(tmp_path), runs)["training_precision"].tolist() == ["bf16-mixed", "bf16-mixed"]


def test_budgets_become_lightning_max_time_strings():
    from lightning_bts.experiments.ablation import max_time

    assert max_time(15) == "00:00:15:00" and max_time(60) == "00:01:00:00" and max_time(0.05) == "00:00:00:03"
    assert max_time(24 * 60 + 1.5) == "01:00:01:30"
    with pytest.raises(AblationError, match="positive"):
        max_time(0)


def test_a_missing_best_run_or_a_config_for_every_row_stops_before_any_training(tmp_path):
    from lightning_bts.experiments.ablation import main

    common = ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    with pytest.raises(AblationError, match=f"--best-run: folder {tmp_path / 'gone'} not found"):
        main([*common, "--best-run", str(tmp_path / "gone")])
    with pytest.raises(AblationError, match="--config cannot be given to every row"):
        main([*common, "--config", "configs/best_cpu.yaml"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow  # a subprocess: ~11 s of imports
def test_the_script_prints_one_error_line_for_an_unknown_row(tmp_path):
    completed = subprocess.run([sys.executable, str(REPO / "scripts" / "ablation.py"), "--only", "nope", "--runs",
                                str(tmp_path / "runs"), "--out", str(tmp_path / "out")], cwd=tmp_path,
                               capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error: unknown row 'nope'")


@pytest.mark.slow
def test_the_runner_trains_selects_scores_reports_and_resumes(tmp_path):
    data = write_dataset(tmp_path / "tiny", groups=12, slices_per_group=2, size=48)
    rows = tmp_path / "rows.yaml"
    rows.write_text(yaml.safe_dump({"reference": "paper", "common": [
        "--data.image_size=32", "--data.num_folds=5", "--data.fold=0", "--data.test_fraction=0.15",
        "--data.num_workers=0", "--data.batch_size=4", "--trainer.max_epochs=-1", "--trainer.max_steps=8",
        "--trainer.num_sanity_val_steps=0", "--precision=32-true", "--preview_slices=0"], "rows": [
        {"name": "paper", "config": "configs/quick_cpu.yaml", "curve": True},
        {"name": "norm", "args": ["--model.norm=batch", "--model.scheduler=cosine"], "curve": True},
        {"name": "pp", "select": "postprocessing"},
        {"name": "best", "best_run": True, "compare": "paper"},
    ]}))
    command = [sys.executable, str(REPO / "scripts" / "ablation.py"), "--rows", str(rows), "--runs", "runs",
               "--out", "report", "--minutes", "0.1", "--data.root", str(data)]

    def run(*extra: str) -> str:
        process = subprocess.Popen([*command, *extra], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=1800)
        finally:
            if process.poll() is None:  # timed out: stop the runner and the fit or evaluate it started
                os.killpg(process.pid, signal.SIGKILL)
        assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
        return stdout

    run()
    runs, report = tmp_path / "runs", tmp_path / "report"
    table = pd.read_csv(report / "ablation.csv")
    assert list(table["row"]) == ["paper", "norm", "pp"]
    assert table.loc[2, "gain_previous"] == pytest.approx(table.loc[2, "dice"] - table.loc[1, "dice"])
    assert (table["n_test_images"] > 0).all() and (table["train_minutes"] > 0).all()
    assert (report / "dice_vs_minutes.png").is_file()
    text = (report / "ablation.md").read_text()
    assert "--minutes 0.1" in text and "Not finished (or left out): best." in text
    assert "Training precision: 32-true for every row's model." in text
    for name in ("paper", "norm"):
        metrics = json.loads((runs / name / "test" / "metrics.json").read_text())
        assert metrics["part"] == "test" and metrics["resolution"] == "native" and metrics["tta"] == "none"
    original = torch.load(runs / "norm" / "train" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    copy = torch.load(runs / "pp" / "selected.ckpt", map_location="cpu", weights_only=True)
    assert "postprocessing" not in original and copy["postprocessing"]["tta"] == "none"  # the choice: in the copy
    split = json.loads((runs / "paper" / "train" / "splits.json").read_text())
    assert split["test"] and json.loads((runs / "norm" / "train" / "splits.json").read_text())["test"] == split["test"]

    stamps = {path: path.stat().st_mtime_ns for path in runs.rglob("*") if path.is_file()}
    again = run()
    assert again.count("finished earlier, skipped") == 3 and ": training:" not in again
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps

    run("--best-run", str(runs / "paper" / "train"), "--only", "best")
    table = pd.read_csv(report / "ablation.csv").set_index("row")
    assert list(table.index) == ["paper", "norm", "pp", "best"]
    assert table.loc["best", "dice"] == pytest.approx(table.loc["paper", "dice"])  # the same checkpoint, scored
    assert table.loc["best", "gain_previous"] == pytest.approx(0.0)
    assert not any(name.startswith(".") for name in os.listdir(runs / "pp"))  # no partial copy left
