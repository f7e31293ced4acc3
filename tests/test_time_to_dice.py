"""benchmarks/time_to_dice.py: when ours reaches Keras' final Dice, and a tiny end-to-end run of both frameworks."""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from lightning_bts.data import load_records
from tests.conftest import REPO, write_dataset

spec = importlib.util.spec_from_file_location("time_to_dice", REPO / "benchmarks" / "time_to_dice.py")
time_to_dice = importlib.util.module_from_spec(spec)
spec.loader.exec_module(time_to_dice)

KEYS = {"keras_final_dice", "ours_final_dice", "keras_seconds", "ours_seconds_to_keras_final_dice",
        "speedup_to_keras_final_dice"}
KERAS = [(100.0, 0.30), (200.0, 0.55), (300.0, 0.60)]  # final Dice 0.60 after 300 s


def test_ours_crossing_in_the_middle():
    ours = [(50.0, 0.20), (100.0, 0.58), (150.0, 0.62), (200.0, 0.59), (250.0, 0.70)]
    summary = time_to_dice.compare(KERAS, ours)
    assert set(summary) == KEYS
    assert summary["keras_final_dice"] == 0.60 and summary["keras_seconds"] == 300.0
    assert summary["ours_final_dice"] == 0.70
    assert summary["ours_seconds_to_keras_final_dice"] == 150.0  # the first validation at or above, not the best
    assert summary["speedup_to_keras_final_dice"] == pytest.approx(2.0)


def test_ours_never_reaching_keras():
    summary = time_to_dice.compare(KERAS, [(60.0, 0.10), (120.0, 0.59), (180.0, 0.40)])
    assert summary["ours_seconds_to_keras_final_dice"] is None
    assert summary["speedup_to_keras_final_dice"] is None
    assert summary["ours_final_dice"] == 0.40
    json.dumps(summary)  # None is JSON null


def test_ours_above_keras_at_its_first_validation():
    summary = time_to_dice.compare(KERAS, [(40.0, 0.60), (80.0, 0.65)])  # equal counts as reached
    assert summary["ours_seconds_to_keras_final_dice"] == 40.0
    assert summary["speedup_to_keras_final_dice"] == pytest.approx(7.5)


def test_seconds_to_reach_and_a_slower_ours():
    assert time_to_dice.seconds_to_reach([], 0.5) is None
    summary = time_to_dice.compare(KERAS, [(400.0, 0.5), (600.0, 0.61)])
    assert summary["speedup_to_keras_final_dice"] == pytest.approx(0.5)  # below 1: ours is slower


def test_cpu_description_names_the_vector_extensions_that_tell_machines_apart(tmp_path):
    def describe(flags: str | None) -> str:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\n" + (f"flags\t\t: {flags}\n" if flags else ""))
        return time_to_dice.cpu_description(cpuinfo)

    cores = f"AMD EPYC, {os.cpu_count()} cores visible"
    assert describe("fpu sse avx2 avx512f avx512_bf16 amx_tile") == f"{cores}, amx_tile avx512_bf16 avx512f avx2"
    assert describe("fpu sse avx2 fma") == f"{cores}, avx2"
    assert describe("fpu sse4_2") == f"{cores}, no AVX2"
    assert describe(None) == cores  # no flags line (not x86): nothing claimed either way


def test_pooled_dice_pools_pixels_and_scores_empty_as_perfect():
    target = np.zeros((2, 4, 4), bool)
    target[0, :2, :2] = True  # 4 pixels
    pred = np.zeros_like(target)
    pred[0, :2, :1] = True  # 2 right
    pred[1, 0, 0] = True  # 1 wrong on an empty slice
    assert time_to_dice.pooled_dice(pred, target) == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert time_to_dice.pooled_dice(np.zeros((1, 4, 4)), np.zeros((1, 4, 4))) == 1.0


def test_limited_root_keeps_whole_patients(tmp_path):
    root = write_dataset(tmp_path / "data", groups=6, slices_per_group=3)
    subset = time_to_dice.limited_root(root, 4, seed=0, work=tmp_path / "work")
    records = load_records(subset)
    assert records["patient_group"].nunique() == 4 and len(records) == 12
    assert set(records["key"]) <= set(load_records(root)["key"])


@pytest.mark.slow
@pytest.mark.keras
def test_tiny_run_reports_both_curves_and_prints_the_summary_last(tmp_path):
    if importlib.util.find_spec("tensorflow") is None:  # not imported here: the benchmark's subprocess loads it
        pytest.skip("needs TensorFlow (pip install 'lightning_bts[keras]')")
    root = write_dataset(tmp_path / "data", groups=8, slices_per_group=4)
    out = tmp_path / "report" / "time_to_dice.md"
    command = [sys.executable, "benchmarks/time_to_dice.py", "--data-root", str(root), "--num-folds", "2",
               "--image-size", "64", "--keras-epochs", "1", "--ours-minutes", "0.2",
               "--ours-args", "--data.num_workers 0 --preview_slices 0",
               "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    # A session of its own, so that a timeout also ends the Keras subprocess the benchmark starts.
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        stdout, stderr = run.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
        raise
    assert run.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert KEYS <= set(summary)
    assert summary["keras_epochs"] == 1 and summary["ours_validations"] >= 1
    assert 0 <= summary["keras_final_dice"] <= 1 and 0 <= summary["ours_final_dice"] <= 1
    assert summary["keras_seconds"] > 0
    assert summary["keras_threads"] == {"intra_op": summary["ours_threads"]["torch"],
                                        "inter_op": summary["ours_threads"]["torch"]}
    reached, speedup = summary["ours_seconds_to_keras_final_dice"], summary["speedup_to_keras_final_dice"]
    if summary["ours_best_dice"] >= summary["keras_final_dice"]:
        assert 0 < reached <= summary["ours_seconds"]
        assert math.isclose(speedup, summary["keras_seconds"] / reached)
    else:
        assert reached is None and speedup is None
    text = out.read_text()
    assert "| Keras | 1 |" in text and "| ours | 1 |" in text and "Git commit:" in text
    assert "intra-op threads" in text and "torch threads" in text
    assert out.with_suffix(".png").stat().st_size > 0
