"""One measurement of ``benchmarks/cpu_vs_keras.py`` in a process of its own: one framework, size and precision.

    python benchmarks/cpu_workers.py '{"framework": "torch", "size": 256, "batch": 16, "best": false}'

A fresh process per measurement keeps the frameworks apart (TensorFlow never runs in a torch measurement's
process; a Keras worker imports torch only because the package does, and runs nothing with it) and makes the
peak resident memory (``ru_maxrss``) that of this measurement alone: imports, model, and the training steps.
The last line printed is one JSON object. With ``"train_steps": N`` the worker only runs N
training steps (for ``ONEDNN_VERBOSE=1``, whose lines the caller reads from stdout).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.step_anatomy import median_seconds  # noqa: E402

PROFILED_STEPS = 2


def timed(step, batch: int, warmup: int, steps: int, repeats: int = 3) -> float:
    """Images/s of the median of ``repeats`` blocks of ``steps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    block_seconds = median_seconds(lambda: [step() for _ in range(steps)], repeats=repeats, warmup=0)
    return batch * steps / block_seconds


def peak_resident_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def torch_steps(size: int, batch: int, best: bool, compile_model: bool = False):
    """(model, its input images, train step, inference step, forward-and-loss) of our U-Net on random images,
    channels_last and with freed memory kept (host_memory) as ``train()`` runs it; ``best`` adds bf16 autocast."""
    import torch

    from lightning_bts.host_memory import keep_freed_memory
    from lightning_bts.losses import build_loss
    from lightning_bts.models import UNet
    from lightning_bts.training.optim import KerasAdam

    keep_freed_memory()  # as train() and the Predictor do
    torch.manual_seed(0)
    model = UNet().to(memory_format=torch.channels_last)
    images = (torch.rand(batch, 3, size, size) * 255).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(batch, 1, size, size) > 0.98).float()
    net = torch.compile(model) if compile_model else model
    loss_fn = build_loss("focal")
    optimizer = KerasAdam(model.parameters(), lr=1e-3, eps=1e-7)

    def forward_loss() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=best):
            return loss_fn(net(images), masks)

    def train_step() -> None:
        loss = forward_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=best):
            net(images)

    return model, images, train_step, infer_step, forward_loss


def torch_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from benchmarks import step_anatomy

    model, images, train_step, infer_step, forward_loss = torch_steps(
        spec["size"], spec["batch"], spec["best"], spec.get("compile", False))
    model.train()
    if spec.get("train_steps"):
        for _ in range(spec["train_steps"]):
            train_step()
        return {}
    train = timed(train_step, spec["batch"], spec["warmup"], spec["steps"])
    result = {"train": train, "rss_peak_mb": peak_resident_mb()}
    model.eval()
    result["infer"] = timed(infer_step, spec["batch"], spec["warmup"], spec["steps"])
    if spec.get("anatomy"):
        model.train()
        step_seconds = spec["batch"] / train
        prof = step_anatomy.profile_step(train_step, PROFILED_STEPS)
        result["anatomy"] = {
            "step_seconds": step_seconds,
            "layers": step_anatomy.layer_times(model, images),
            "operators": step_anatomy.operator_classes(prof, PROFILED_STEPS),
            "top_operators": step_anatomy.top_operators(prof),
            "flops": step_anatomy.step_flops(train_step),
            "saved_bytes": step_anatomy.saved_activation_bytes(forward_loss),
            "peaks": step_anatomy.machine_peaks(),
            "threads": torch.get_num_threads(),
        }
    return result


def keras_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from lightning_bts.keras.reference import build_keras_unet, import_keras, keras_loss

    keras = import_keras()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if spec["best"] else "float32")
    size, batch = spec["size"], spec["batch"]
    model = build_keras_unet(height=size, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras_loss("focal"), jit_compile=spec.get("jit", False))
    rng = np.random.default_rng(0)
    images = (rng.random((batch, size, size, 3)) * 255).astype("float32")
    masks = (rng.random((batch, size, size, 1)) > 0.98).astype("float32")
    if spec.get("train_steps"):
        for _ in range(spec["train_steps"]):
            model.train_on_batch(images, masks)
        return {}
    train = timed(lambda: model.train_on_batch(images, masks), batch, spec["warmup"], spec["steps"])
    result = {"train": train, "rss_peak_mb": peak_resident_mb()}
    result["infer"] = timed(lambda: model.predict_on_batch(images), batch, spec["warmup"], spec["steps"])
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    worker = {"torch": torch_worker, "keras": keras_worker}[spec["framework"]]
    print(json.dumps(worker(spec)), flush=True)


if __name__ == "__main__":
    main()
