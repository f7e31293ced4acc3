"""The XLA path (``--accelerator xla``) on torch_xla's CPU backend: training, graph hygiene, checkpoints.

Every XLA run happens in a subprocess with ``PJRT_DEVICE=CPU`` set before torch_xla is imported: the XLA runtime
is per process, cannot be restarted, and a multi-device run needs a process whose runtime has not started. The
two training runs start together (module fixture) so that the file takes about as long as the slower of them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import SAMPLE_ROOT

pytestmark = [
    pytest.mark.xla,
    pytest.mark.skipif(importlib.util.find_spec("torch_xla") is None, reason="torch_xla is not installed"),
]

TIMEOUT_S = 600
# A small U-Net at 32x32: XLA compile time, not the steps, is most of a run on CPU.
SMALL = ["--model.base_filters", "4", "--model.depth", "2", "--data.root", str(SAMPLE_ROOT)]

# Trains on XLA, writes the CompileMonitor report, the run's result, the trained model's logits (computed on XLA)
# for the first validation batch, and a checkpoint of that model (final.ckpt), to reload on CPU. Not last.ckpt:
# Lightning 2.6's ModelCheckpoint rewrites it only in epochs that also save a top-k checkpoint.
FIT = r"""
import json, sys
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

from lightning_bts.training.train import train
from lightning_bts.training.xla_check import CompileMonitor, xla_check_config

out, devices, epochs, extra = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]


class SavePredictions(Callback):
    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            batch = next(iter(trainer.datamodule.val_dataloader()))
            module.eval()
            with torch.no_grad():
                logits = module(batch["image"].to(module.device)).cpu()
            torch.save({"image": batch["image"], "logits": logits}, out / "xla_predictions.pt")
        trainer.save_checkpoint(out / "final.ckpt")  # through XLA's checkpoint I/O, all ranks take part


config = xla_check_config(epochs, 32, devices, str(out), batch_size=8, extra=extra)
result = train(config, callbacks=[CompileMonitor(out / "report.json"), SavePredictions()])
(out / "result.json").write_text(json.dumps({"last": str(result.last_checkpoint), "metrics": result.metrics}))
"""

PROBE = r"""
import json
from torch_xla import runtime as xr
from pytorch_lightning.accelerators import AcceleratorRegistry
from lightning_bts.xla.accelerator import PJRTAccelerator, pjrt_device_count, register_xla_accelerator

register_xla_accelerator()
counted = pjrt_device_count()  # before the runtime starts, as the accelerator connector calls it
print(json.dumps({"counted": counted, "available": PJRTAccelerator.is_available(),
                  "registered": type(AcceleratorRegistry.get("xla")).__name__,
                  "parsed": [PJRTAccelerator.parse_devices(d) for d in ("auto", 1, "0,")],
                  "runtime": xr.global_runtime_device_count()}))
"""


def _env(num_devices: int) -> dict[str, str]:
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(num_devices)}
    env.pop("XLA_USE_BF16", None)
    return env


def _start(out: Path, devices: str, num_devices: int, epochs: int, extra: list[str]) -> subprocess.Popen:
    out.mkdir(parents=True)
    with open(out / "log.txt", "w") as log:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen([sys.executable, "-c", FIT, str(out), devices, str(epochs), *SMALL, *extra],
                                cwd=out, env=_env(num_devices), stdout=log, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, out: Path) -> dict:
    try:
        process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = (out / "log.txt").read_text()
    assert process.returncode == 0, f"XLA fit failed (exit {process.returncode}):\n{log[-4000:]}"
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def xla_runs(tmp_path_factory: pytest.TempPathFactory):
    """A 2-epoch fit on one XLA device and a 1-epoch fit on two (XLAStrategy), started together."""
    root = tmp_path_factory.mktemp("xla")
    # hausdorff on: the module must drop it by itself on XLA
    single = _start(root / "single", "1", 1, 2, ["--model.hausdorff", "true"])
    multi = _start(root / "multi", "auto", 2, 1, [])
    runs = {"single": (single, root / "single"), "multi": (multi, root / "multi")}
    yield runs
    for process, _ in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow  # a subprocess that imports torch_xla
def test_device_count_matches_the_runtime_without_starting_it(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=_env(2), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe == {"counted": 2, "available": True, "registered": "PJRTAccelerator", "parsed": [2, 1, [0]],
                     "runtime": 2}


@pytest.mark.slow
def test_fit_compiles_nothing_new_after_the_first_epoch(xla_runs) -> None:
    process, out = xla_runs["single"]
    result = _finish(process, out)
    report = json.loads((out / "report.json").read_text())
    epochs = report["epochs"]
    assert [e["steps"] for e in epochs] == [12, 12]  # 103 training slices // batch 8: last partial batch dropped
    assert epochs[0]["compiles"] > 0
    assert epochs[1]["compiles"] == 0, f"epoch 2 compiled new graphs: {report}"
    assert 0.0 <= result["metrics"]["val/dice"] <= 1.0
    assert "val/hd" not in result["metrics"]  # Hausdorff (SciPy, host sync) is skipped on XLA


@pytest.mark.slow
def test_checkpoint_saved_on_xla_reloads_on_cpu_to_the_same_predictions(xla_runs) -> None:
    from lightning_bts.training.module import SegmentationModule

    process, out = xla_runs["single"]
    _finish(process, out)
    model = SegmentationModule.load_from_checkpoint(out / "final.ckpt", map_location="cpu").eval()
    saved = torch.load(out / "xla_predictions.pt")
    with torch.no_grad():
        logits = model(saved["image"])
    assert all(p.device.type == "cpu" for p in model.parameters())
    # measured: max |difference| 1.3e-7 on logits up to 0.39 (XLA's CPU backend vs eager CPU, float32)
    torch.testing.assert_close(logits, saved["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="torch_xla 2.9 CPU backend, 2 devices as 2 threads: the threads' first "
                   "all-reduces get different op ids and XLA aborts after 10 s (rendezvous.cc), seen on a 2-core VM")
def test_fit_on_two_xla_devices(xla_runs) -> None:
    process, out = xla_runs["multi"]
    result = _finish(process, out)
    report = json.loads((out / "report.json").read_text())
    # 103 slices split over 2 devices (DistributedSampler): 52 each, 6 full batches of 8
    assert [e["steps"] for e in report["epochs"]] == [6]
    assert Path(result["last"]).is_file()
    assert 0.0 <= result["metrics"]["val/dice"] <= 1.0
