"""Where a loaded network runs for inference: PyTorch as trained (``torch``), or ONNX Runtime (``onnxruntime``).

The ONNX Runtime backend converts each loaded network to ONNX in memory (the graph ``scripts/export.py``
writes: float32 images in 0..255 in, logits out, a dynamic batch axis) and runs it with ONNX Runtime's CPU
execution provider, whose graph optimiser fuses convolutions with their bias and ReLU, as Keras' Grappler pass
does. The converted network is wrapped as an ``nn.Module``, so the :class:`~lightning_bts.evaluation.Predictor`
treats it like any other model: flip TTA, ensembling and post-processing keep their one definition. Whether
it is faster here, and by how much, is measured by ``benchmarks/inference_backends.py``
(``reports/benchmark_inference.md``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings

import numpy as np
import torch
from torch import nn

from lightning_bts.errors import ConfigError, UserError

BACKENDS = ("torch", "onnxruntime")
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class BackendError(UserError):
    """A backend that cannot run as asked here (a missing package, a device or precision it does not support)."""


def check_backend(backend: str, device: torch.device, precision: str, option: str = "--backend") -> str:
    """``backend`` if it can run on ``device`` at ``precision``; ``option`` names the setting in errors."""
    if backend not in BACKENDS:
        raise ConfigError(f"{option} {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise BackendError(f"{option} onnxruntime runs on the CPU here (its CPU execution provider); got device "
                               f"{device}: use {option} torch on a GPU")
        if precision not in ("32-true", "32"):
            raise BackendError(f"{option} onnxruntime runs the float32 graph; --precision {precision} applies to "
                               f"{option} torch only")
    return backend


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend``, the same for predict.py and evaluate.py."""
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="what runs the network: torch (default; any device and precision) or onnxruntime (the "
                        "exported float32 graph on the CPU; the same masks, see benchmarks/inference_backends.py "
                        "for its speed here)")


def plain_network(model: nn.Module) -> nn.Module:
    """The network inside ``model`` (a SegmentationModule's ``net``, else ``model``), copied to the CPU in float32,
    contiguous memory format, eval mode: the form that is traced for ONNX and TorchScript."""
    net = copy.deepcopy(getattr(model, "net", model))
    return net.to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format).eval()


def onnx_program(net: nn.Module, example: torch.Tensor):
    """The ONNX program of ``net`` (opset 18, dynamo exporter) traced on ``example`` with a dynamic batch axis.

    Raises:
        BackendError: onnx/onnxscript are not installed.
    """
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as error:
        raise BackendError("ONNX export needs onnx and onnxscript: pip install 'lightning_bts[export]'") from error
    batch = torch.export.Dim("batch", min=1)
    exporter_log = logging.getLogger("torch.onnx")  # its notes on torchvision ops the U-Net does not use
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(net, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                     dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET, dynamo=True,
                                     verbose=False)
    finally:
        exporter_log.setLevel(level)


def onnxruntime_session(model: bytes | str, threads: int | None = None):
    """An ONNX Runtime CPU session of a serialised model (bytes) or a file, with ``threads`` intra-op threads
    (default: as many as torch uses, so both backends get the same share of the CPU)."""
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendError("running an ONNX graph (--backend onnxruntime, or checking an export) needs onnxruntime: "
                           "pip install 'lightning_bts[export]'") from error
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its graph-optimiser notices are not the user's concern
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeNetwork(nn.Module):
    """A network run by ONNX Runtime, called like the PyTorch model it came from: uint8 or float images
    ``(N, C, S, S)`` in 0..255 in, float32 logits ``(N, 1, S, S)`` out (on the CPU)."""

    def __init__(self, model: nn.Module, image_size: int, in_channels: int) -> None:
        super().__init__()
        example = torch.zeros(2, in_channels, image_size, image_size)
        self.session = onnxruntime_session(onnx_program(plain_network(model), example).model_proto
                                           .SerializeToString())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])


def on_backend(models: list[nn.Module], backend: str, image_size: int, in_channels: int) -> list[nn.Module]:
    """``models`` as ``backend`` runs them (``torch``: unchanged)."""
    if backend == "torch":
        return models
    return [OnnxRuntimeNetwork(model, image_size, in_channels) for model in models]
