"""CPU throughput of our U-Net vs the Keras original, where our step's time goes, and the data pipeline.

    python benchmarks/cpu_vs_keras.py --out reports/benchmark_cpu.md

Same architecture, batch and resolution in both frameworks. Training = forward + focal loss + backward + Adam
step on random images; inference = forward in eval mode. Torch runs channels_last throughout, as
``SegmentationModule`` does. Each measurement runs in a fresh process (``benchmarks/cpu_workers.py``), so
frameworks never share one and the peak resident memory is that measurement's own.

- **Keras' anchor** is the faster of Keras as it runs by default (on a CPU-only machine Keras 3 turns XLA off and
  runs a TensorFlow graph) and with ``jit_compile=True`` (XLA), per measure.
- **"best"** is each framework's fastest precision for that measure: fp32, or bf16 (torch autocast, Keras
  ``mixed_bfloat16``), which is fast only on CPUs with native bf16 (AVX512-BF16/AMX); ``--compile`` adds
  torch.compile as a torch candidate.
- **Where the time goes** (``benchmarks/step_anatomy.py``): per-level convolution times, operator classes, FLOP/s
  and bandwidth against this machine's measured ceilings, oneDNN's kernels (``ONEDNN_VERBOSE``) in both
  frameworks.
- The data pipeline is measured twice: the one-off preprocessing (decode, validate, skull-strip, resize) and
  what every epoch costs (augmentation + batching through a DataLoader with the default workers).

The last line printed is one JSON object of ratios (ours / Keras' anchor, peak memory ours / Keras, data over
training).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.step_anatomy import onednn_summary  # noqa: E402
from benchmarks.time_to_dice import cpu_description  # noqa: E402
from lightning_bts.data import BrainTumorDataModule, load_records  # noqa: E402
from lightning_bts.data.preprocess import preprocess_slice  # noqa: E402

WORKER = REPO / "benchmarks" / "cpu_workers.py"
ONEDNN_STEPS = 2


def run_worker(spec: dict[str, Any], env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """(the worker's JSON result, its stdout); a failed worker stops the benchmark with its stderr."""
    completed = subprocess.run([sys.executable, str(WORKER), json.dumps(spec)], capture_output=True, text=True,
                               cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    if completed.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stdout


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
    return f"{cpu_description()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def measure(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every worker's result, keyed ``<framework>_<variant>_<precision>_<size>``."""
    results = {}
    common = {"batch": args.batch, "warmup": args.warmup, "steps": args.steps}
    for size in args.sizes:
        for precision in args.precisions:
            best = precision == "bf16"
            variants = [("torch", "eager", {"anatomy": not best}), ("keras", "graph", {}),
                        ("keras", "jit", {"jit": True})]
            if args.compile:
                variants.append(("torch", "compiled", {"compile": True}))
            for framework, variant, extra in variants:
                spec = {"framework": framework, "size": size, "best": best, **common, **extra}
                results[f"{framework}_{variant}_{precision}_{size}"] = result = run_worker(spec)[0]
                print(f"{size}px {precision} {framework} {variant}: train {result['train']:.1f} infer "
                      f"{result['infer']:.1f} img/s, peak {result['rss_peak_mb']:.0f} MiB", flush=True)
    return results


def best_of(results: dict[str, dict[str, Any]], framework: str, measure_name: str, size: int,
            precisions: tuple[str, ...]) -> tuple[float, str]:
    """The highest rate of ``framework`` for ``measure_name`` at ``size`` over its variants and ``precisions``,
    and which variant/precision gave it."""
    candidates = [(result[measure_name], f"{key.split('_')[1]} {key.split('_')[2]}")
                  for key, result in results.items()
                  if key.startswith(f"{framework}_") and key.endswith(f"_{size}") and key.split("_")[2] in precisions]
    return max(candidates)


def onednn_kernels(size: int, batch: int) -> dict[str, list[dict[str, object]]]:
    """oneDNN's kernels in a training step of each framework (fp32), from ``ONEDNN_VERBOSE=1``."""
    kernels = {}
    for framework in ("torch", "keras"):
        spec = {"framework": framework, "size": size, "batch": batch, "best": False, "train_steps": ONEDNN_STEPS}
        _, stdout = run_worker(spec, env={"ONEDNN_VERBOSE": "1", "TF_ENABLE_ONEDNN_OPTS": "1"})
        kernels[framework] = onednn_summary(stdout.splitlines(), ONEDNN_STEPS)
    return kernels


def anatomy_lines(size: int, anatomy: dict[str, Any]) -> list[str]:
    """The "where the time goes" section for one size (fp32 torch step)."""
    step = anatomy["step_seconds"]
    lines = [f"### {size}x{size}, fp32: {1e3 * step:.0f} ms per training step of {anatomy['threads']} threads", "",
             "Each convolution timed alone on its input shape in the step (forward; backward = gradients of input "
             "and weight), summed per level:", "",
             "| level | forward ms | backward ms | % of step |", "|---|---:|---:|---:|"]
    layers = anatomy["layers"]
    for level, times in layers.items():
        share = 100 * (times["forward"] + times["backward"]) / step
        lines.append(f"| {level} | {1e3 * times['forward']:.1f} | {1e3 * times['backward']:.1f} | {share:.1f} |")
    conv_total = sum(times["forward"] + times["backward"] for times in layers.values())
    lines += [f"| **all convolutions** | | | **{100 * conv_total / step:.1f}** |",
              f"| the rest (ReLU, dropout, pooling, concatenation, loss, optimiser, framework) | | | "
              f"{100 * (step - conv_total) / step:.1f} |", "",
              "torch.profiler's self CPU time per step by operator class:", "",
              "| class | ms per step | % |", "|---|---:|---:|"]
    operators = anatomy["operators"]
    total = sum(operators.values())
    for name, seconds in operators.items():
        lines.append(f"| {name} | {1e3 * seconds:.1f} | {100 * seconds / total:.1f} |")
    lines += ["", "| top operators (self CPU) | % |", "|---|---:|"]
    lines += [f"| `{name}` | {share:.1f} |" for name, share in anatomy["top_operators"]]
    peaks, flops = anatomy["peaks"], anatomy["flops"]
    achieved = flops / step / 1e9
    conv_rate = flops / conv_total / 1e9
    saved_mb = anatomy["saved_bytes"] / 2**20
    one_pass_ms = 2 * anatomy["saved_bytes"] / (peaks["copy_gbs"] * 1e9) * 1e3  # read + write each byte once
    other_ms = 1e3 * operators["other operators"]
    lines += ["", f"- FLOPs per step {flops / 1e9:.1f} G: the whole step runs at {achieved:.1f} GFLOP/s, "
              f"{100 * achieved / peaks['matmul_gflops']:.0f} % of this machine's measured fp32 matmul rate "
              f"({peaks['matmul_gflops']:.0f} GFLOP/s, 2048^2); the convolutions alone at {conv_rate:.1f} GFLOP/s "
              f"({100 * conv_rate / peaks['matmul_gflops']:.0f} %).",
              f"- Autograd keeps {saved_mb:.0f} MiB of activations for backward; one read-and-write pass over them at "
              f"the measured copy bandwidth ({peaks['copy_gbs']:.1f} GB/s) takes {one_pass_ms:.0f} ms. The "
              f"non-convolution operators take {other_ms:.0f} ms, the time of about {other_ms / one_pass_ms:.1f} "
              "such passes: memory-bound work.", ""]
    return lines


def kernel_lines(size: int, kernels: dict[str, list[dict[str, object]]], top: int = 10) -> list[str]:
    lines = [f"### oneDNN kernels in one fp32 training step at {size}x{size} (`ONEDNN_VERBOSE=1`)", "",
             "Implementation names: `brg*`/`brgemm` are the blocked-GEMM kernels, `jit:avx2`/`jit:avx512*` "
             "JIT kernels for the ISA named, `ref`/`gemm:*` fallbacks, `reorder` copies between memory layouts.", ""]
    for framework, rows in kernels.items():
        name = "ours (torch)" if framework == "torch" else "Keras (TensorFlow graph)"
        if not rows:
            lines += [f"{name}: no oneDNN primitive ran (the framework used its own kernels).", ""]
            continue
        total_ms = sum(row["ms"] for row in rows)
        lines += [f"{name}: {sum(row['calls'] for row in rows):.0f} oneDNN calls, {total_ms:.0f} ms per step", "",
                  "| primitive | implementation | calls per step | ms per step |", "|---|---|---:|---:|"]
        lines += [f"| {row['primitive']} | `{row['implementation']}` | {row['calls']:.0f} | {row['ms']:.1f} |"
                  for row in rows[:top]]
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                        help="fp32 only: a shorter run (best = fp32)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to warm up)")
    parser.add_argument("--data-root", type=Path, default=REPO / "data" / "sample")
    parser.add_argument("--out", type=Path, help="write the report as Markdown here")
    args = parser.parse_args(argv)
    if "fp32" not in args.precisions:
        parser.error("--precisions must include fp32: the memory table and where the time goes are fp32 measurements")

    results = measure(args)
    largest = max(args.sizes)
    kernels = onednn_kernels(largest, args.batch)
    preprocess, loader = data_rates(args.data_root, largest, args.batch)
    print(f"data: preprocessing {preprocess:.1f} slices/s (once), loader {loader:.1f} samples/s (every epoch)")

    ratios: dict[str, float] = {}
    lines = ["# CPU benchmark: lightning_bts U-Net vs the Keras original", "",
             f"Command: `python benchmarks/cpu_vs_keras.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             f"Machine: {machine()}", "",
             f"Batch {args.batch}; images/s, median of 3 blocks of {args.steps} steps after {args.warmup} warm-up "
             "steps, each measurement in a fresh process. Keras: graph = as it runs by default, jit = "
             "`jit_compile=True`. Ratio = ours / Keras' faster variant; best = each framework's fastest precision.",
             "", "| size | measure | ours fp32 | ours bf16 | Keras graph fp32 | Keras jit fp32 | Keras graph bf16 "
             "| Keras jit bf16 | ratio fp32 | ratio best (ours; Keras) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for size in args.sizes:
        for measure_name in ("train", "infer"):
            cells = [results.get(f"{key}_{size}", {}).get(measure_name) for key in
                     ("torch_eager_fp32", "torch_eager_bf16", "keras_graph_fp32", "keras_jit_fp32",
                      "keras_graph_bf16", "keras_jit_bf16")]
            ours32, _ = best_of(results, "torch", measure_name, size, ("fp32",))
            theirs32, _ = best_of(results, "keras", measure_name, size, ("fp32",))
            ours, ours_how = best_of(results, "torch", measure_name, size, ("fp32", "bf16"))
            theirs, theirs_how = best_of(results, "keras", measure_name, size, ("fp32", "bf16"))
            ratios[f"{measure_name}_fp32_{size}"] = ours32 / theirs32
            ratios[f"{measure_name}_best_{size}"] = ours / theirs
            lines.append(f"| {size} | {measure_name} | " + " | ".join("-" if cell is None else f"{cell:.1f}"
                                                                       for cell in cells)
                         + f" | {ours32 / theirs32:.2f}x | {ours / theirs:.2f}x ({ours_how}; {theirs_how}) |")
    if args.compile:
        lines += ["", "torch.compile (a torch candidate in the best column): " + "; ".join(
            f"{size}px {precision} train {results[f'torch_compiled_{precision}_{size}']['train']:.1f}, infer "
            f"{results[f'torch_compiled_{precision}_{size}']['infer']:.1f} img/s"
            for size in args.sizes for precision in args.precisions)]
    lines += ["", "Peak resident memory of the process that timed training (imports, model, warm-up and the timed "
              "steps; fp32), MiB:", "", "| size | ours | Keras graph | Keras jit | ours / Keras graph |",
              "|---:|---:|---:|---:|---:|"]
    for size in args.sizes:
        ours, graph, jit = (results[f"{key}_fp32_{size}"]["rss_peak_mb"]
                            for key in ("torch_eager", "keras_graph", "keras_jit"))
        ratios[f"train_rss_ratio_{size}"] = ours / graph
        lines.append(f"| {size} | {ours:.0f} | {graph:.0f} | {jit:.0f} | {ours / graph:.2f} |")
    ratios["data_over_train"] = loader / best_of(results, "torch", "train", largest, ("fp32", "bf16"))[0]
    lines += ["", f"Data pipeline at {largest}px: preprocessing {preprocess:.1f} slices/s (once per dataset, cached), "
              f"loader {loader:.1f} samples/s per epoch (augmentation, default workers) = "
              f"{ratios['data_over_train']:.2f}x what training consumes.", "", "## Where the time goes", ""]
    for size in args.sizes:
        lines += anatomy_lines(size, results[f"torch_eager_fp32_{size}"]["anatomy"])
    lines += kernel_lines(largest, kernels)
    ratios = {name: round(value, 3) for name, value in ratios.items()}
    lines += ["```json", json.dumps(ratios), "```"]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
