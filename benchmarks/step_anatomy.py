"""Where the time of one training step of our U-Net goes, and how close it runs to what this CPU can do.

Used by ``benchmarks/cpu_vs_keras.py`` (its "Where the time goes" section). Four views of the same step:

- **layers**: every convolution of the network timed alone, forward and backward (gradients of input and
  weight), on the input shape it gets in the real step, grouped by U-Net level. The step minus their sum is
  what lies between them: ReLU, dropout, pooling, concatenation, the loss, the optimiser, the framework.
- **operators**: torch.profiler's self CPU time per operator class (convolution forward/backward, element-wise,
  optimiser), the view that names the element-wise passes.
- **roofline**: FLOPs of the step (``torch.utils.flop_counter``) over its time, against this machine's
  measured fp32 matrix-multiply rate; the bytes of activations autograd saves for backward, against the
  measured copy bandwidth (how many passes over them the element-wise time is worth).
- **oneDNN**: which oneDNN implementations run (``ONEDNN_VERBOSE=1``: AVX2/AVX-512/AMX brgemm kernels, reference
  fallbacks, reorders between layouts), counted per step, parsed from a worker's output by
  :func:`onednn_summary`.

Everything is measured, nothing is taken from a datasheet: peak figures are what this machine reaches on a
large matmul and a large copy with the same threads, a practical ceiling rather than a theoretical one.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn


def median_seconds(call: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``call`` in seconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def level_of(name: str) -> str:
    """The U-Net level a convolution belongs to, from its module name (``encoder.2.3`` -> ``encoder 2``)."""
    parts = name.split(".")
    if parts[0] == "encoder":
        return f"encoder {parts[1]}"
    if parts[0] == "decoder":
        return f"decoder {parts[1]} transposed" if parts[2] == "up" else f"decoder {parts[1]}"
    return parts[0]  # bottleneck, head


def conv_inputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Size]:
    """The input shape of every Conv2d/ConvTranspose2d of ``model`` in one forward pass on ``images``."""
    shapes: dict[str, torch.Size] = {}

    def record(name: str) -> Callable[[nn.Module, tuple], None]:
        # A pre-hook that returns a value replaces the module's input: this one must return None.
        def hook(module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, args[0].shape)
        return hook

    hooks = [module.register_forward_pre_hook(record(name))
             for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def layer_times(model: nn.Module, images: torch.Tensor, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Seconds of forward and of backward per U-Net level, each convolution timed alone on its real input shape
    (channels_last, as the module trains)."""
    modules = dict(model.named_modules())
    levels: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    for name, shape in conv_inputs(model, images).items():
        conv = modules[name]
        x = torch.rand(shape).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        forward = median_seconds(lambda conv=conv, x=x: conv(x), repeats)
        out = conv(x)
        grad = torch.rand_like(out)

        def backward(out=out, grad=grad, x=x, conv=conv) -> None:
            torch.autograd.grad(out, [x, conv.weight, conv.bias], grad, retain_graph=True)

        levels[level_of(name)]["forward"] += forward
        levels[level_of(name)]["backward"] += median_seconds(backward, repeats)
    return dict(levels)


CONV_FORWARD = ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d",
                "aten::conv_transpose2d", "aten::_nnpack_spatial_convolution", "aten::slow_conv2d_forward")
CONV_BACKWARD = ("aten::convolution_backward", "aten::mkldnn_convolution_backward",
                 "aten::slow_conv2d_backward", "aten::convolution_backward_overrideable")


def profile_step(train_step: Callable[[], None], steps: int = 2):
    """torch.profiler's record of ``steps`` training steps after one unprofiled warm-up step; both operator views
    (:func:`operator_classes`, :func:`top_operators`) read the same record."""
    from torch.profiler import ProfilerActivity, profile

    train_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step()
    return prof


def operator_classes(prof, steps: int) -> dict[str, float]:
    """Seconds per step of convolution forward, convolution backward, the optimiser step and everything else
    (element-wise work, pooling, concatenation, the loss), from the self CPU times of :func:`profile_step`'s
    record of ``steps`` steps."""
    optimiser = sum(event.cpu_time_total for event in prof.events() if event.name.startswith("Optimizer.step#"))
    classes = {"convolution forward": 0.0, "convolution backward": 0.0, "other operators": 0.0}
    for event in prof.key_averages():
        if event.key.startswith(("Optimizer.", "ProfilerStep")):
            continue
        if event.key in CONV_FORWARD:
            classes["convolution forward"] += event.self_cpu_time_total
        elif event.key in CONV_BACKWARD:
            classes["convolution backward"] += event.self_cpu_time_total
        else:
            classes["other operators"] += event.self_cpu_time_total
    # the optimiser's own operators are inside "other operators": move them to their own line
    classes["other operators"] -= optimiser
    classes["optimiser step"] = optimiser
    return {name: microseconds / steps / 1e6 for name, microseconds in classes.items()}


def top_operators(prof, top: int = 8) -> list[tuple[str, float]]:
    """The ``top`` operators of :func:`profile_step`'s record by self CPU time, as % of a training step."""
    events = [event for event in prof.key_averages() if not event.key.startswith("Optimizer.")]
    total = sum(event.self_cpu_time_total for event in events)
    ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:top]
    return [(event.key, 100 * event.self_cpu_time_total / total) for event in ranked]


def step_flops(train_step: Callable[[], None]) -> int:
    """Floating-point operations of one training step (convolutions and matmuls, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step()
    return counter.get_total_flops()


def saved_activation_bytes(forward_loss: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass (each storage counted once)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward_loss()
    return sum(storages.values())


def machine_peaks(seconds: float = 1.0) -> dict[str, float]:
    """What this machine reaches with torch's threads: fp32 matmul GFLOP/s (2048^2) and copy GB/s (256 MiB,
    read + write counted), a practical ceiling for the step's FLOP/s and bandwidth."""
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    matmul = median_seconds(lambda: torch.mm(a, b), repeats=max(3, int(seconds / 0.05)))
    source, target = torch.rand(64 * 2**20), torch.empty(64 * 2**20)
    copy = median_seconds(lambda: target.copy_(source), repeats=5)
    return {"matmul_gflops": 2 * 2048**3 / matmul / 1e9, "copy_gbs": 2 * source.nbytes / copy / 1e9}


def onednn_summary(lines: Iterable[str], steps: int) -> list[dict[str, object]]:
    """oneDNN's ``exec`` lines (``ONEDNN_VERBOSE=1``) summed per (primitive, implementation): calls and
    milliseconds per step, the slowest first. Lines of other programs and oneDNN's ``create`` lines are skipped.

    A line looks like ``onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx2,forward_training,
    <memory descriptors>,<attributes>,<alg>,<shapes>,0.89`` (older versions omit ``v1,primitive``); the
    implementation is the field after the primitive kind and the time in ms the last field.
    """
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for line in lines:
        if not line.startswith("onednn_verbose") or ",exec," not in line:
            continue
        fields = line.strip().split(",")
        at = fields.index("exec")
        try:
            kind, implementation, milliseconds = fields[at + 2], fields[at + 3], float(fields[-1])
        except (IndexError, ValueError):
            continue
        total = totals[(kind, implementation)]
        total[0] += 1
        total[1] += milliseconds
    rows = [{"primitive": kind, "implementation": implementation, "calls": calls / steps, "ms": ms / steps}
            for (kind, implementation), (calls, ms) in totals.items()]
    return sorted(rows, key=lambda row: row["ms"], reverse=True)
