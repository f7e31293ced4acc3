"""The benchmark scripts run and report what they claim (their numbers are measured elsewhere, not asserted)."""

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("gpu_protocol", REPO / "benchmarks" / "gpu_protocol.py")
gpu_protocol = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_protocol)


def test_sampler_reads_nvidia_smi_loop_output(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100, 80, 1000'\necho 'NVIDIA H100, 100, 3000'\n"
                    "echo 'NVIDIA H100, [N/A], 10'\nsleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    sampler = gpu_protocol.GpuSampler()
    deadline = time.time() + 10
    while len(sampler.utilisation) < 2 and time.time() < deadline:
        time.sleep(0.05)
    sampler.stop()
    assert sampler.utilisation == [80.0, 100.0] and sampler.name == "NVIDIA H100"
    assert "mean 90%" in sampler.summary() and "3000 MiB" in sampler.summary()


@pytest.mark.slow
def test_dry_run_on_the_cpu_writes_the_protocol_and_the_report(tiny_dataset, tmp_path):
    out = tmp_path / "protocol"
    gpu_protocol.main(["--out", str(out), "--data-root", str(tiny_dataset), "--num-folds", "2", "--workers", "0",
                       "--accelerator", "cpu", "--precision", "32-true", "--data.image_size", "32",
                       "--trainer.max_epochs", "1"])
    summary = (out / "gpu_protocol.md").read_text()
    assert "runs trained in this invocation: 4 of 4" in summary and "training throughput" in summary
    assert (out / "report.md").is_file()


@pytest.mark.slow
@pytest.mark.keras
def test_cpu_benchmark_prints_the_ratio_json_last(tiny_dataset, tmp_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "bench.md"
    run = subprocess.run([sys.executable, "benchmarks/cpu_vs_keras.py", "--sizes", "32", "--precisions", "fp32",
                          "--batch", "2", "--warmup", "1", "--steps", "1", "--data-root", str(tiny_dataset),
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    ratios = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(ratios) == {"train_fp32_32", "train_best_32", "infer_fp32_32", "infer_best_32",
                           "train_rss_ratio_32", "data_over_train"}
    assert all(value > 0 for value in ratios.values())
    report = out.read_text()
    for section in ("Where the time goes", "| encoder 0 |", "| decoder 3 transposed |", "convolution backward",
                    "GFLOP/s", "oneDNN kernels", "Keras jit fp32", "Peak resident memory"):
        assert section in report, section


@pytest.mark.slow
def test_inference_backends_benchmark_reports_every_backend_and_equal_masks(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "inference.md"
    run = subprocess.run([sys.executable, "benchmarks/inference_backends.py", "--sizes", "128", "32", "--batch", "2",
                          "--warmup", "0", "--repeats", "1", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    for size in (128, 32):
        assert {f"torch_32-true_{size}", f"torch_bf16-mixed_{size}", f"onnxruntime_32-true_{size}",
                f"onnxruntime_over_torch_fp32_{size}"} <= set(summary)
    table = out.read_text()
    # the shipped model gives the same masks with ONNX Runtime as with PyTorch
    onnx_row = next(line for line in table.splitlines() if line.startswith("| 128 | onnxruntime | 32-true |"))
    assert onnx_row.endswith("| 0.0000 % |"), onnx_row


def test_onednn_verbose_lines_are_summed_per_kernel_and_per_step():
    from benchmarks.step_anatomy import onednn_summary

    lines = [
        "onednn_verbose,v1,info,oneDNN v3.7.1",
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,brg_conv_fwd:avx2,forward_training,x,y,z,0.5",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx2,forward_training,src,wei,dst,mb2,1.5",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx2,forward_training,src,wei,dst,mb2,2.5",
        "onednn_verbose,exec,cpu,reorder,jit:uni,undef,src,dst,,,2x3,0.25",  # the older format
        "Epoch 1/10 - not oneDNN",
    ]
    rows = onednn_summary(lines, steps=2)
    assert rows == [
        {"primitive": "convolution", "implementation": "brg_conv_fwd:avx2", "calls": 1.0, "ms": 2.0},
        {"primitive": "reorder", "implementation": "jit:uni", "calls": 0.5, "ms": 0.125},
    ]


def test_step_anatomy_times_every_convolution_level_and_counts_the_step():
    import torch

    from benchmarks.cpu_workers import torch_steps
    from benchmarks.step_anatomy import (
        layer_times,
        operator_classes,
        profile_step,
        saved_activation_bytes,
        step_flops,
        top_operators,
    )

    model, images, train_step, _, forward_loss = torch_steps(size=32, batch=1, best=False)
    levels = layer_times(model, images, repeats=1)
    assert set(levels) == {*(f"encoder {i}" for i in range(4)), "bottleneck", *(f"decoder {i}" for i in range(4)),
                           *(f"decoder {i} transposed" for i in range(4)), "head"}
    assert all(times["forward"] > 0 and times["backward"] > 0 for times in levels.values())
    prof = profile_step(train_step, steps=1)
    classes = operator_classes(prof, steps=1)
    assert set(classes) == {"convolution forward", "convolution backward", "other operators", "optimiser step"}
    assert classes["convolution backward"] > 0 and classes["optimiser step"] > 0
    assert "aten::convolution_backward" in dict(top_operators(prof))  # the same record, the other view
    with torch.no_grad():
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as forward_only:
            model(images)
    assert step_flops(train_step) > 2.5 * forward_only.get_total_flops()  # backward costs about twice forward
    assert saved_activation_bytes(forward_loss) > images.nbytes
