"""Cross-validation on Ray (``scripts/cv.py --address``) and with repeated seeds (``--seeds``).

Fast: the settings a user can get wrong, the seeds' run names and loop, the report's seed tables on made-up
numbers. Slow (a local Ray of 2 CPUs, the tiny runs of tests/test_cv.py): 2 losses x 2 folds, 2 at a time, give
the sequential runner's numbers; a crashed run is retried; a run failing for good is named after the others
finished and the report of those is written; a repeated command trains nothing; seeds on Ray.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_bts.errors import ConfigError
from lightning_bts.experiments import cv
from lightning_bts.experiments.parallel import RaySettings, check_settings, settings_from_args
from lightning_bts.experiments.report import build_report
from lightning_bts.experiments.runs import CVError, RunsFailed, run_name
from lightning_bts.experiments.seeds import mean_over_seeds, seed_lines, seed_spread, seed_values
from tests.faults import crash_once, fail_always
from tests.test_cv import TRAIN_ARGS

# ------------------------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    ("settings", "accelerator", "message"),
    [
        (RaySettings("somewhere"), None, "--address must be auto, local, HOST:PORT or ray://HOST:PORT"),
        (RaySettings("host:port"), None, "--address must be"),
        (RaySettings("local", max_concurrent=0), None, "--max-concurrent must be >= 1, got 0"),
        (RaySettings("local", retries=-1), None, "--retries must be an integer >= 0"),
        (RaySettings("local", cpus_per_run=0), None, "--cpus-per-run must be > 0"),
        (RaySettings("local", cpus_per_run=float("nan")), None, "must be numbers"),
        (RaySettings("local", gpus_per_run=1), "cpu", "--accelerator cpu would leave the reserved GPUs/TPUs idle"),
        (RaySettings("local"), "gpu", "--accelerator gpu needs --gpus-per-run > 0"),
        (RaySettings("local", gpus_per_run=1.5), None, "--gpus-per-run above 1 must be a whole number"),
    ],
)
def test_bad_ray_settings_are_refused(settings, accelerator, message):
    with pytest.raises(CVError) as error:
        check_settings(settings, accelerator)
    assert message in str(error.value)


def test_good_ray_settings_pass():
    check_settings(RaySettings("auto"), "auto")
    check_settings(RaySettings("10.0.0.1:6379", cpus_per_run=8, gpus_per_run=1), "gpu")
    check_settings(RaySettings("ray://head:10001", gpus_per_run=0.5), None)


def test_command_line_ray_flags():
    args, forwarded = cv.parse_args(["--out", "o", "--address", "local", "--cpus-per-run", "2", "--max-concurrent",
                                     "3", "--seeds", "2", "--trainer.max_epochs", "1"])
    assert settings_from_args(args) == RaySettings("local", cpus_per_run=2, max_concurrent=3, retries=2)
    assert args.seeds == 2 and forwarded == ["--trainer.max_epochs", "1"]
    args, _ = cv.parse_args(["--out", "o"])
    assert settings_from_args(args) is None and args.seeds == 1  # no --address: the runs one after another
    args, _ = cv.parse_args(["--out", "o", "--gpus-per-run", "1", "--retries", "1"])
    with pytest.raises(CVError, match="--gpus-per-run, --retries only apply to runs on Ray; add --address"):
        settings_from_args(args)


@pytest.mark.parametrize(("extra", "message"), [
    (["--seeds", "0"], "--seeds must be an integer >= 1, got 0"),
    (["--seeds", "2", "--seed_everything", "true"], "counts up from the configuration's seed_everything"),
    (["--address", "nowhere"], "--address must be"),
    (["--address", "local", "--max-concurrent", "-1"], "--max-concurrent must be >= 1"),
    (["--address", "local", "--gpus-per-run", "1", "--trainer.accelerator", "cpu"], "GPUs/TPUs idle"),
])
def test_bad_command_lines_fail_before_anything_is_written(tmp_path, extra, message):
    out = tmp_path / "cv"
    with pytest.raises(CVError) as error:
        cv.main(["--out", str(out), "--num-folds", "2", *TRAIN_ARGS, *extra])
    assert message in str(error.value)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------- seeds


def test_seed_values():
    assert seed_values(42, 1) == [None]  # one seed: the configuration's, today's run names
    assert seed_values(42, 3) == [42, 43, 44]
    assert run_name("focal", 2, 43) == "focal_fold2_seed43" and run_name("focal", 2) == "focal_fold2"


def test_seeds_repeat_each_fold_and_loss_with_counted_up_seeds(tmp_path, monkeypatch):
    calls = []

    def fake_run_one(out_dir, config, loss, fold, num_folds, threshold, eval_precision, callbacks, seed):
        run = cv.run_config(config, out_dir, loss, fold, num_folds, seed)
        calls.append((run.run_name, run.seed_everything, run.data.fold, run.model.loss))
        return {"loss": loss, "fold": fold, "seed": seed, "run": run.run_name, "train_seconds": 0.0,
                "metrics": {"dice": 0.5, "hd95": 1.0}}

    monkeypatch.setattr(cv, "run_one", fake_run_one)
    monkeypatch.setattr(cv, "collect", lambda out_dir: None)
    records = cv.run_cv(TRAIN_ARGS, tmp_path / "cv", num_folds=2, seeds=2)
    assert [c[0] for c in calls] == ["focal_fold0_seed42", "bce_fold0_seed42", "focal_fold0_seed43",
                                     "bce_fold0_seed43", "focal_fold1_seed42", "bce_fold1_seed42",
                                     "focal_fold1_seed43", "bce_fold1_seed43"]
    assert [c[1] for c in calls] == [42, 42, 43, 43, 42, 42, 43, 43]
    assert len(records) == 8 and json.loads((tmp_path / "cv" / "protocol.json").read_text())["seeds"] == 2
    with pytest.raises(CVError, match=r"seeds: 2 there, 3 now"):  # other names: another experiment
        cv.run_cv(TRAIN_ARGS, tmp_path / "cv", num_folds=2, seeds=3)
    calls.clear()
    cv.run_cv(TRAIN_ARGS, tmp_path / "one", num_folds=2, folds=[1], losses=["bce"])
    assert calls == [("bce_fold1", 42, 1, "bce")]
    assert "seeds" not in json.loads((tmp_path / "one" / "protocol.json").read_text())


def _seeded_runs() -> dict[str, pd.DataFrame]:
    """2 losses x 2 folds x 3 seeds: Dice = loss offset + fold offset + seed noise (sd 0.01 within a fold)."""
    rows, per_image = [], []
    for loss, offset in (("focal", 0.60), ("bce", 0.50)):
        for fold, fold_offset in ((0, 0.0), (1, 0.10)):
            for seed, noise in ((42, -0.01), (43, 0.0), (44, 0.01)):
                dice = offset + fold_offset + noise
                rows.append({"loss": loss, "fold": fold, "seed": seed, "dice": dice, "dice_per_image": dice,
                             "precision": dice, "recall": dice, "hd95": 10 * dice, "n_val": 3})
                per_image += [{"key": f"{fold}{k}", "tumor_type": "glioma", "dice": dice, "loss": loss, "fold": fold,
                               "seed": seed} for k in range(3)]
    curves = pd.DataFrame([{"epoch": 0, "val/dice": r["dice"], "loss": r["loss"], "fold": r["fold"],
                            "seed": r["seed"]} for r in rows])
    return {"folds": pd.DataFrame(rows), "per_image": pd.DataFrame(per_image), "curves": curves}


def test_report_tables_use_each_folds_mean_over_seeds_and_the_seed_spread():
    tables = _seeded_runs()
    means = mean_over_seeds(tables)
    assert len(means["folds"]) == 4 and "seed" not in means["folds"]
    assert means["folds"].set_index(["loss", "fold"])["dice"].to_dict() == pytest.approx(
        {("bce", 0): 0.5, ("bce", 1): 0.6, ("focal", 0): 0.6, ("focal", 1): 0.7})
    assert len(means["per_image"]) == 12 and set(means["per_image"]["tumor_type"]) == {"glioma"}
    assert len(means["curves"]) == 4
    no_seeds = {name: table.drop(columns="seed") for name, table in tables.items()}
    assert mean_over_seeds(no_seeds) is no_seeds

    spread = seed_spread(tables["folds"], ["focal", "bce"]).set_index(["loss", "metric"])
    focal = spread.loc[("focal", "dice")]
    assert (focal["n_folds"], focal["n_seeds"]) == (2, 3)
    assert focal["mean"] == pytest.approx(0.65)
    assert focal["sd_across_seeds"] == pytest.approx(0.01)  # the noise of one run
    assert focal["sd_across_folds"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    lines = seed_lines(spread.reset_index(), "42–44", lambda rows, align: str(rows))
    assert lines[0] == "## Seeds" and "3 times, with `seed_everything` 42–44" in lines[2]
    assert seed_spread(no_seeds["folds"], ["focal"]).empty and seed_lines(pd.DataFrame(), "42", None) == []


# ----------------------------------------------------------------------------------------- on a local Ray


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2,
             log_to_driver=False)
    yield ray
    ray.shutdown()




@pytest.fixture(scope="module")
def on_ray(ray_session, tmp_path_factory):
    """The tiny 2 x 2 experiment one run after another (1 torch thread, as a 1-CPU Ray run), then on Ray, 2 at a
    time, with one run crashing once."""
    root = tmp_path_factory.mktemp("cv_ray")
    args = [*TRAIN_ARGS, "--data.cache_dir", str(root / "cache")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = cv.run_cv(args, root / "sequential", num_folds=2)
    finally:
        torch.set_num_threads(threads)
    marker = root / "crashed_once"
    settings = RaySettings("local", cpus_per_run=1, max_concurrent=2, retries=1)
    parallel = cv.run_cv(args, root / "parallel", num_folds=2, callbacks=[crash_once(marker)], ray=settings)
    return {"args": args, "root": root, "sequential": sequential, "parallel": parallel, "marker": marker,
            "settings": settings}


@pytest.mark.slow
@pytest.mark.tune
def test_runs_on_ray_give_the_sequential_numbers_and_a_crash_is_retried(on_ray):
    assert on_ray["marker"].exists(), "the fault injection did not run"
    parallel, sequential = on_ray["parallel"], on_ray["sequential"]
    assert [r["run"] for r in parallel] == ["focal_fold0", "bce_fold0", "focal_fold1", "bce_fold1"]
    assert not any(r["skipped"] for r in parallel)
    # fp32 on CPU with one torch thread in both: the same numbers (tolerance 1e-6 relative, for the float sums)
    for seq, par in zip(sequential, parallel):
        for name in ("dice", "iou", "precision", "recall", "hd", "hd95"):
            assert par["metrics"][name] == pytest.approx(seq["metrics"][name], rel=1e-6), (par["run"], name)
            assert par["metrics"]["model_grid"][name] == pytest.approx(seq["metrics"]["model_grid"][name],
                                                                       rel=1e-6), (par["run"], name)
        assert par["val_keys"] == seq["val_keys"]
    root = on_ray["root"]
    columns = ["loss", "fold", "key", "dice", "hd95"]
    pd.testing.assert_frame_equal(pd.read_csv(root / "parallel" / "per_image.csv", dtype={"key": str})[columns],
                                  pd.read_csv(root / "sequential" / "per_image.csv", dtype={"key": str})[columns],
                                  rtol=1e-6)
    text = build_report(root / "parallel").read_text()
    assert "## Paired comparison: focal vs bce" in text and "![gallery](gallery.png)" in text
    assert "## Seeds" not in text


@pytest.mark.slow
@pytest.mark.tune
def test_repeated_command_skips_finished_runs_and_a_failed_run_is_named(on_ray, monkeypatch, capsys):
    out = on_ray["root"] / "parallel"
    again = cv.run_cv(on_ray["args"], out, num_folds=2, callbacks=[fail_always()], ray=on_ray["settings"])
    assert all(r["skipped"] for r in again) and len(again) == 4  # nothing trained: nothing failed

    (out / "folds" / "bce_fold1.json").unlink()
    (out / "report.md").unlink(missing_ok=True)
    run_cv = cv.run_cv
    monkeypatch.setattr(cv, "run_cv", functools.partial(run_cv, callbacks=[fail_always()]))
    with pytest.raises(RunsFailed, match=r"1 run\(s\) failed \(a crash is retried 0 time\(s\), bad input not at "
                                         r"all\): bce_fold1 \(RuntimeError: injected permanent failure\)") as error:
        cv.main(["--out", str(out), "--num-folds", "2", "--report", "--address", "local", "--retries", "0",
                 *on_ray["args"]])
    assert error.value.finished == 3
    assert len(pd.read_csv(out / "folds.csv")) == 3
    assert "The 3 finished run(s)" in str(error.value)
    assert "## Paired comparison" in (out / "report.md").read_text()  # the report of the runs that finished
    assert "[cv] bce_fold1: failed after 1 attempt(s)" in capsys.readouterr().out

    # bad input fails the same way every time: Ray does not retry it, whatever --retries says
    attempts = on_ray["root"] / "attempts"
    monkeypatch.setattr(cv, "run_cv", functools.partial(run_cv, callbacks=[fail_always(attempts, ConfigError)]))
    with pytest.raises(RunsFailed, match=r"bce_fold1 \(ConfigError: injected permanent failure\)"):
        cv.main(["--out", str(out), "--num-folds", "2", "--address", "local", "--retries", "2", *on_ray["args"]])
    assert len(list(attempts.iterdir())) == 1
    assert "[cv] bce_fold1: failed (not retried: the input or an option is wrong)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.tune
def test_seeds_on_ray(on_ray):
    """One loss, 2 folds x 2 seeds, one epoch: each seed's own weights, the same folds, and the seed table."""
    out = on_ray["root"] / "seeds"
    args = [*on_ray["args"], "--trainer.max_epochs", "1"]
    records = cv.run_cv(args, out, losses=["focal"], num_folds=2, seeds=2, ray=on_ray["settings"])
    assert [r["run"] for r in records] == ["focal_fold0_seed42", "focal_fold0_seed43", "focal_fold1_seed42",
                                           "focal_fold1_seed43"]
    assert [r["config"]["seed_everything"] for r in records] == [42, 43, 42, 43]
    assert records[0]["val_keys"] == records[1]["val_keys"] != records[2]["val_keys"]
    assert records[0]["metrics"]["dice"] != records[1]["metrics"]["dice"]  # other seed, other weights
    folds = pd.read_csv(out / "folds.csv")
    assert list(folds["seed"]) == [42, 43, 42, 43]
    text = build_report(out).read_text()
    assert "## Seeds" in text and "`seed_everything` 42–43" in text and "(none: no leakage across folds)" in text
    spread = pd.read_csv(out / "seeds.csv")
    assert set(spread["n_seeds"]) == {2} and set(spread["n_folds"]) == {2}
    assert (out / "gallery.png").is_file()
