"""Inference speed of the predictor's backends (``--backend`` of predict.py and evaluate.py), on the same slices.

    python benchmarks/inference_backends.py --out reports/benchmark_inference.md

Times :meth:`Predictor.probabilities` (what predict.py and evaluate.py call for every batch) on preprocessed
slices of the shipped sample, for the shipped model (``lightning_bts/pretrained``, 128x128) and for the paper's
U-Net at 256x256 (randomly initialised: speed does not depend on the weights), once with PyTorch (fp32, and bf16
autocast) and once with ONNX Runtime (fp32), and checks that both backends give the same masks. Run it on a quiet
machine: nothing else may use the CPU while it times. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cpu_vs_keras import machine  # noqa: E402
from lightning_bts.data.records import read_image  # noqa: E402
from lightning_bts.evaluation import Predictor  # noqa: E402
from lightning_bts.evaluation.backends import on_backend  # noqa: E402
from lightning_bts.evaluation.predictor import prepare_image  # noqa: E402
from lightning_bts.pretrained import default_checkpoint  # noqa: E402
from lightning_bts.training.checkpoints import Preprocessing  # noqa: E402
from lightning_bts.training.module import SegmentationModule  # noqa: E402

MODES = (("torch", "32-true"), ("torch", "bf16-mixed"), ("onnxruntime", "32-true"))


def predictor_for(size: int, backend: str, precision: str) -> Predictor:
    """The shipped model at its own 128x128; at other sizes the paper's U-Net, randomly initialised."""
    if size == 128:
        return Predictor.from_checkpoints([default_checkpoint()], device="cpu", precision=precision, backend=backend)
    torch.manual_seed(0)
    preprocessing = Preprocessing(image_size=size, in_channels=3, skull_strip="safe")
    models = on_backend([SegmentationModule().eval()], backend, size, 3)
    return Predictor(models, preprocessing, "cpu", precision=precision, backend=backend)


def images_for(predictor: Predictor, count: int) -> np.ndarray:
    """``count`` preprocessed uint8 slices of the shipped sample (repeated if it has fewer)."""
    files = sorted((REPO / "data" / "sample" / "images").iterdir())
    return np.stack([prepare_image(read_image(files[i % len(files)]), predictor.preprocessing)
                     for i in range(count)])


def images_per_second(predictor: Predictor, batch: np.ndarray, warmup: int, repeats: int) -> float:
    """Median images/s of ``repeats`` calls on ``batch``, after ``warmup`` calls."""
    for _ in range(warmup):
        predictor.probabilities(batch)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.probabilities(batch)
        rates.append(len(batch) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the table as Markdown here")
    args = parser.parse_args()

    rows, summary = [], {}
    for size in args.sizes:
        reference = None
        for backend, precision in MODES:
            predictor = predictor_for(size, backend, precision)
            batch = images_for(predictor, args.batch)
            rate = images_per_second(predictor, batch, args.warmup, args.repeats)
            masks = np.stack(predictor.masks(list(predictor.probabilities(batch))))
            reference = masks if reference is None else reference
            differing = float((masks != reference).mean())
            rows.append((size, backend, precision, rate, differing))
            summary[f"{backend}_{precision}_{size}"] = round(rate, 2)
            print(f"{size}px {backend} {precision}: {rate:.1f} img/s; mask pixels differing from torch fp32: "
                  f"{100 * differing:.4f}%", flush=True)
        summary[f"onnxruntime_over_torch_fp32_{size}"] = round(
            summary[f"onnxruntime_32-true_{size}"] / summary[f"torch_32-true_{size}"], 3)

    lines = ["# Inference backends: PyTorch vs ONNX Runtime through the predictor", "",
             f"Command: `python benchmarks/inference_backends.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine()}; torch threads {torch.get_num_threads()} (ONNX Runtime gets the same).", "",
             f"Batch {args.batch} preprocessed sample slices; median of {args.repeats} calls after {args.warmup} "
             "warm-up calls of `Predictor.probabilities`. 128px: the shipped model; other sizes: the paper's "
             "U-Net, randomly initialised.", "",
             "| size | backend | precision | images/s | mask pixels differing from torch fp32 |",
             "|---:|---|---|---:|---:|"]
    lines += [f"| {size} | {backend} | {precision} | {rate:.1f} | {100 * differing:.4f} % |"
              for size, backend, precision, rate, differing in rows]
    lines += ["", "```json", json.dumps(summary), "```"]
    table = "\n".join(lines)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    print(table)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
