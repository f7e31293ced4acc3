"""CPU throughput of our U-Net vs the Keras original, and of the data pipeline, measured in one run.

    python benchmarks/cpu_vs_keras.py --out reports/benchmark_cpu.md

Same architecture, batch and resolution in both frameworks. Training = forward + focal loss + backward + Adam
step on random images; inference = forward in eval mode. Torch runs channels_last throughout, as
``SegmentationModule`` does. "best" is each framework's fastest correct mixed precision: torch bf16 autocast
(plus torch.compile with --compile), Keras ``mixed_bfloat16``.
The data pipeline is measured twice: the one-off preprocessing (decode, validate, skull-strip, resize) and
what every epoch costs (augmentation + batching through a DataLoader with the default workers).
The last line printed is one JSON object of ratios (ours / Keras, and data over training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_bts.data import BrainTumorDataModule, load_records  # noqa: E402
from lightning_bts.data.preprocess import preprocess_slice  # noqa: E402
from lightning_bts.losses import build_loss  # noqa: E402
from lightning_bts.models import UNet  # noqa: E402
from lightning_bts.training.optim import KerasAdam  # noqa: E402


def timed(step, batch: int, warmup: int, steps: int, repeats: int = 3) -> float:
    """Median images/s over ``repeats`` blocks of ``steps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(batch * steps / (time.perf_counter() - start))
    return statistics.median(rates)


def torch_steps(size: int, batch: int, best: bool, compile_model: bool = False):
    """(model, train step, inference step) of our U-Net on random images, channels_last as
    ``SegmentationModule`` trains it (faster in fp32 too); ``best`` adds bf16 autocast."""
    torch.manual_seed(0)
    model = UNet().to(memory_format=torch.channels_last)
    images = (torch.rand(batch, 3, size, size) * 255).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(batch, 1, size, size) > 0.98).float()
    net = torch.compile(model) if compile_model else model
    loss_fn = build_loss("focal")
    optimizer = KerasAdam(model.parameters(), lr=1e-3, eps=1e-7)

    def train_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=best):
            loss = loss_fn(net(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=best):
            net(images)

    return model, train_step, infer_step


def torch_rates(size: int, batch: int, best: bool, compile_model: bool, warmup: int, steps: int) -> tuple[float, float]:
    model, train_step, infer_step = torch_steps(size, batch, best, compile_model)
    model.train()
    train = timed(train_step, batch, warmup, steps)
    model.eval()
    infer = timed(infer_step, batch, warmup, steps)
    return train, infer


def torch_profile(size: int, batch: int, best: bool, top: int = 8) -> list[tuple[str, float]]:
    """Where one training step's time goes: the ``top`` operators by self CPU time, as % of the step."""
    from torch.profiler import ProfilerActivity, profile

    model, train_step, _ = torch_steps(size, batch, best)
    model.train()
    train_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            train_step()
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:top]
    return [(event.key, 100 * event.self_cpu_time_total / total) for event in ranked]


def keras_rates(size: int, batch: int, best: bool, warmup: int, steps: int) -> tuple[float, float]:
    from lightning_bts.keras.reference import build_keras_unet, import_keras, keras_loss

    keras = import_keras()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if best else "float32")
    try:
        model = build_keras_unet(height=size, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras_loss("focal"))
        rng = np.random.default_rng(0)
        images = (rng.random((batch, size, size, 3)) * 255).astype("float32")
        masks = (rng.random((batch, size, size, 1)) > 0.98).astype("float32")
        train = timed(lambda: model.train_on_batch(images, masks), batch, warmup, steps)
        infer = timed(lambda: model.predict_on_batch(images), batch, warmup, steps)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return train, infer


def data_rates(root: Path, size: int, batch: int) -> tuple[float, float]:
    """(one-off preprocessing slices/s in one thread, per-epoch loader samples/s with default workers)."""
    records = load_records(root)
    start = time.perf_counter()
    for image_path, mask_path in zip(records.image_path, records.mask_path):
        preprocess_slice(image_path, mask_path, size, "safe", rgb=False)
    preprocess = len(records) / (time.perf_counter() - start)
    dm = BrainTumorDataModule(str(root), image_size=size, batch_size=batch, fold=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    next(iter(loader))  # start the workers
    count, start = 0, time.perf_counter()
    for _ in range(3):
        for item in loader:
            count += len(item["image"])
    return preprocess, count / (time.perf_counter() - start)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to warm up)")
    parser.add_argument("--data-root", type=Path, default=REPO / "data" / "sample")
    parser.add_argument("--out", type=Path, help="write the table as Markdown here")
    args = parser.parse_args()

    rows: dict[str, float] = {}
    for size in args.sizes:
        for best in (False, True):
            mode = "best" if best else "fp32"
            ours = torch_rates(size, args.batch, best, False, args.warmup, args.steps)
            if best and args.compile:
                compiled = torch_rates(size, args.batch, True, True, args.warmup + 2, args.steps)
                rows[f"compiled_train_{size}"], rows[f"compiled_infer_{size}"] = compiled
                print(f"{size}px best + torch.compile: train {compiled[0]:.1f} infer {compiled[1]:.1f} img/s "
                      f"(eager: {ours[0]:.1f}, {ours[1]:.1f}); the faster one counts", flush=True)
                ours = max(ours[0], compiled[0]), max(ours[1], compiled[1])
            theirs = keras_rates(size, args.batch, best, args.warmup, args.steps)
            rows[f"torch_train_{mode}_{size}"], rows[f"torch_infer_{mode}_{size}"] = ours
            rows[f"keras_train_{mode}_{size}"], rows[f"keras_infer_{mode}_{size}"] = theirs
            print(f"{size}px {mode}: torch train {ours[0]:.1f} infer {ours[1]:.1f} img/s | "
                  f"keras train {theirs[0]:.1f} infer {theirs[1]:.1f} img/s", flush=True)
    small = min(args.sizes)
    profiles = {mode: torch_profile(small, args.batch, mode == "best") for mode in ("fp32", "best")}
    default_size = 256 if 256 in args.sizes else args.sizes[-1]
    preprocess, loader = data_rates(args.data_root, default_size, args.batch)
    print(f"data: preprocessing {preprocess:.1f} slices/s (once), loader {loader:.1f} samples/s (every epoch)")

    ratios = {}
    for size in args.sizes:
        for mode in ("fp32", "best"):
            ratios[f"train_{mode}_{size}"] = rows[f"torch_train_{mode}_{size}"] / rows[f"keras_train_{mode}_{size}"]
    for mode in ("fp32", "best"):
        ratios[f"infer_{mode}_{small}"] = rows[f"torch_infer_{mode}_{small}"] / rows[f"keras_infer_{mode}_{small}"]
    ratios["data_over_train"] = loader / rows[f"torch_train_best_{default_size}"]
    ratios = {name: round(value, 3) for name, value in ratios.items()}

    lines = ["# CPU benchmark: lightning_bts U-Net vs the Keras original", "",
             f"Command: `python benchmarks/cpu_vs_keras.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine()}", "",
             f"Batch {args.batch}; median of 3 blocks of {args.steps} steps after {args.warmup} warm-up steps.", "",
             "| size | precision | torch train | Keras train | ratio | torch infer | Keras infer | ratio |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size in args.sizes:
        for mode in ("fp32", "best"):
            tt, kt = rows[f"torch_train_{mode}_{size}"], rows[f"keras_train_{mode}_{size}"]
            ti, ki = rows[f"torch_infer_{mode}_{size}"], rows[f"keras_infer_{mode}_{size}"]
            lines.append(f"| {size} | {mode} | {tt:.1f} | {kt:.1f} | {tt / kt:.2f}x "
                         f"| {ti:.1f} | {ki:.1f} | {ti / ki:.2f}x |")
    if args.compile:
        lines += ["", "torch.compile (best precision; the table keeps the faster of eager and compiled): " + "; ".join(
            f"{size}px train {rows[f'compiled_train_{size}']:.1f}, infer {rows[f'compiled_infer_{size}']:.1f} img/s"
            for size in args.sizes)]
    lines += ["", f"Data pipeline at {default_size}px: preprocessing {preprocess:.1f} slices/s (once per dataset, "
              f"cached), loader {loader:.1f} samples/s per epoch (augmentation, default workers) = "
              f"{ratios['data_over_train']:.2f}x what training consumes.", ""]
    lines += [f"Where a torch training step's time goes at {small}px (torch.profiler, self CPU time of the top "
              "operators, % of the step):", "", "| fp32 | % | best (bf16 + channels_last) | % |", "|---|---:|---|---:|"]
    for (op32, pct32), (opbest, pctbest) in zip(profiles["fp32"], profiles["best"]):
        lines.append(f"| `{op32}` | {pct32:.1f} | `{opbest}` | {pctbest:.1f} |")
    lines += ["", "```json", json.dumps(ratios), "```"]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
