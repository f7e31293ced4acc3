"""Every script in scripts/ reports a user's mistake the same way: ``error: <message>`` and exit code 2, no traceback.

Each case is a real mistake a user makes (a missing file, a folder that is not a dataset, an option value that
cannot work), run as a subprocess exactly as a user runs the script.
"""

from __future__ import annotations

import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    missing = tmp / "missing"
    return {
        "fit": (["--data.root", str(missing), "--output_dir", str(tmp / "runs")], str(missing)),
        "fit_bad_fold": (["--data.fold", "9", "--output_dir", str(tmp / "runs")], "fold 9 is out of range"),
        "cv": (["--out", str(tmp / "cv"), "--data.root", str(missing), "--trainer.max_epochs", "1"], str(missing)),
        "evaluate": (["--ckpt", str(tmp / "missing.ckpt"), "--out", str(tmp / "eval")], "missing.ckpt"),
        "predict": (["--ckpt", str(tmp / "missing.ckpt"), "--input", str(REPO / "data/sample/images"),
                     "--output", str(tmp / "pred")], "missing.ckpt"),
        "export": (["--ckpt", str(tmp / "missing.ckpt"), "--output", str(tmp / "m.onnx")], "missing.ckpt"),
        "select_postprocessing": (["--ckpt", str(tmp / "missing.ckpt")], "missing.ckpt"),
        "compare": ([str(missing / "a.csv"), str(missing / "b.csv")], str(missing / "a.csv")),
        "report": ([str(missing)], "not a cross-validation results folder"),
        "tune": (["--config", str(REPO / "configs/quick_cpu.yaml"), "--space", str(tmp / "missing.yaml"),
                  "--output-dir", str(tmp / "tune")], "missing.yaml"),
        "prepare_figshare": (["--source", str(missing), "--out", str(tmp / "out")], str(missing)),
        "measure_skull_strip": (["--data-root", str(missing), "--out", str(tmp / "r.md")], str(missing)),
        "validate_keras": (["--data", str(missing), "--out", str(tmp / "k.md")], str(missing)),
        "xla_check": (["--devices", "7", "--epochs", "1", "--output_dir", str(tmp / "xla")], "devices=7 is not valid"),
    }


@pytest.mark.slow  # each case starts a Python process (about 14 s of imports here)
@pytest.mark.parametrize("case", sorted(_cases(Path("/x"))))
def test_user_error_prints_one_line_and_exits_2(case, tmp_path):
    args, expected = _cases(tmp_path)[case]
    script = case.removesuffix("_bad_fold")
    env_extra = {"PJRT_DEVICE": "CPU"} if script == "xla_check" else {}
    completed = subprocess.run([sys.executable, f"scripts/{script}.py", *args], cwd=REPO, capture_output=True,
                               text=True, timeout=300, env={**os.environ, **env_extra})
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, completed.stderr[-3000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))


def test_fit_script_reports_a_user_error_in_one_line(tmp_path, monkeypatch, capsys):
    """The fast tier's form of the cases above: scripts/fit.py run as ``__main__`` in this process (the imports
    are already paid), so the script's own wiring to ``run_main`` is what is checked."""
    args, expected = _cases(tmp_path)["fit"]
    monkeypatch.setattr(sys, "argv", ["scripts/fit.py", *args])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "scripts" / "fit.py"), run_name="__main__")
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error: ")
    assert expected in stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))


def test_an_internal_bug_keeps_its_traceback(tmp_path):
    code = ("from lightning_bts.errors import run_main\n"
            "def main():\n    raise KeyError('a bug')\n"
            "run_main(main)\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 1 and "Traceback" in completed.stderr and "KeyError" in completed.stderr


def test_a_reader_that_stops_early_ends_the_script_quietly():
    """``scripts/compare.py A B | head`` printed a BrokenPipeError traceback once ``head`` had its lines."""
    code = ("from lightning_bts.errors import run_main\n"
            "def main():\n    for i in range(100000):\n        print('line', i)\n"
            "run_main(main)\n")
    pipeline = f"{shlex.join([sys.executable, '-c', code])} | head -n 1"
    completed = subprocess.run(pipeline, shell=True, capture_output=True, text=True, timeout=60,
                               executable="/bin/bash")
    assert completed.stdout == "line 0\n"
    assert completed.stderr == "", completed.stderr
