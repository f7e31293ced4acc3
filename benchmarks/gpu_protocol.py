"""The paper's full protocol on one GPU, timed: 5 folds x {focal, bce} x 10 epochs at 512x512.

    python benchmarks/gpu_protocol.py --out /tmp/gpu_protocol          # sized for one 15-minute GPU session

It is ``scripts/cv.py`` with the paper config and GPU settings (bf16 autocast, channels_last, the preprocessed
dataset cached once and loaded from that cache by every run, augmentation in loader workers, Hausdorff left to
each fold's final evaluation instead of every validation epoch), plus measurements: training images/s (train
batches only), wall time of the whole protocol, and GPU utilisation and memory sampled with ``nvidia-smi``
every half second, so a starved GPU shows as low utilisation. Writes ``OUT/gpu_protocol.md`` and the usual
cross-validation report (``OUT/report.md``); resumable like cv.py. Any further argument goes to training
(``--trainer.max_epochs 2``, ``--data.image_size 256``, ``--accelerator cpu`` for a dry run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_bts.experiments.cv import run_cv  # noqa: E402
from lightning_bts.experiments.report import build_report  # noqa: E402


class TrainThroughput(Callback):
    """Images and seconds spent in training epochs, summed over every run it is attached to."""

    def __init__(self) -> None:
        self.images, self.seconds, self._start = 0, 0.0, 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.images += len(batch["image"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._start


class GpuSampler:
    """``nvidia-smi`` in loop mode on a thread: utilisation (%) and memory (MiB) of GPU 0 every ``interval_ms``."""

    def __init__(self, interval_ms: int = 500) -> None:
        self.utilisation: list[float] = []
        self.memory_mib: list[float] = []
        self.name = "no GPU seen by nvidia-smi"
        self._process = None
        if shutil.which("nvidia-smi") is None:
            return
        self._process = subprocess.Popen(
            ["nvidia-smi", "--id=0", "--query-gpu=name,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             f"-lms={interval_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._process.stdout:
            parts = [part.strip() for part in line.split(",")]
            if len(parts) == 3 and parts[1].replace(".", "").isdigit():
                self.name = parts[0]
                self.utilisation.append(float(parts[1]))
                self.memory_mib.append(float(parts[2]))

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def summary(self) -> str:
        if not self.utilisation:
            return "not measured (nvidia-smi absent or silent)"
        busy = [u for u in self.utilisation if u > 0]
        return (f"mean {statistics.mean(self.utilisation):.0f}% over {len(self.utilisation)} samples "
                f"(median {statistics.median(self.utilisation):.0f}%, mean while busy "
                f"{statistics.mean(busy) if busy else 0:.0f}%), peak memory {max(self.memory_mib):.0f} MiB")


def protocol_args(data_root: str, workers: int, cache_dir: Path) -> list[str]:
    """The paper's run on a GPU: the args every fold's training gets before the user's own."""
    return ["--config", str(REPO / "configs" / "paper_focal.yaml"), "--data.root", data_root,
            "--accelerator", "gpu", "--devices", "1", "--precision", "bf16-mixed",
            "--data.num_workers", str(workers), "--data.cache_dir", str(cache_dir),
            "--model.hausdorff", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path, required=True, help="results folder (re-run to resume)")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "figshare_brain_tumor"))
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader workers per run")
    parser.add_argument("--num-folds", type=int, default=5)
    args, extra = parser.parse_known_args(argv)

    train_args = protocol_args(args.data_root, args.workers, args.out / "cache") + extra
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    throughput, sampler = TrainThroughput(), GpuSampler()
    started = time.perf_counter()
    try:
        records = run_cv(train_args, args.out, num_folds=args.num_folds, callbacks=[throughput],
                         command=" ".join(["python benchmarks/gpu_protocol.py", *(argv or sys.argv[1:])]))
    finally:
        sampler.stop()
    wall = time.perf_counter() - started
    report = build_report(args.out)

    ran = [r for r in records if not r["skipped"]]
    rate = throughput.images / throughput.seconds if throughput.seconds else float("nan")
    lines = ["# The paper protocol on one GPU", "",
             f"Command: `python benchmarks/gpu_protocol.py {' '.join(argv or sys.argv[1:])}`", "",
             f"Device: {device} (nvidia-smi: {sampler.name}); torch {torch.__version__}", "",
             f"- runs trained in this invocation: {len(ran)} of {len(records)} (the rest finished earlier)",
             f"- wall time of this invocation: {wall:.0f} s (training, per-fold evaluation and the report)",
             f"- training throughput: {rate:.0f} img/s ({throughput.images} images in {throughput.seconds:.0f} s "
             "of training epochs)",
             f"- GPU utilisation: {sampler.summary()}",
             f"- results: [{report.name}]({report.name})", ""]
    (args.out / "gpu_protocol.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
