"""Export a checkpoint's U-Net to ONNX, TorchScript or a release checkpoint, checked before the file is kept.

The exported graph is the bare network: float32 ``(N, C, S, S)`` images in 0..255 in (the /255 scaling is
inside, as the Keras ``Lambda`` layer), logits ``(N, 1, S, S)`` out; the batch axis is dynamic. Skull
stripping and resizing to ``S`` are *not* in the graph: they are done beforehand exactly as
:func:`lightning_bts.evaluation.predictor.prepare_image` does (``docs/inference.md`` states the contract).
The checkpoint is loaded by the same :class:`~lightning_bts.evaluation.Predictor` as evaluation and prediction,
and its preprocessing, post-processing and TTA settings travel in the file (ONNX ``metadata_props``;
TorchScript extra file ``lightning_bts.json``) so a deployment can read them instead of guessing.

A release checkpoint (``.ckpt``) is the checkpoint without what only resuming a training needs (optimiser,
loops, callback states), its weights optionally stored in float16 or bfloat16: the file a model is shipped as,
loaded by every consumer like any checkpoint (:func:`lightning_bts.training.checkpoint_file.release_checkpoint`).

Every export is run on sample slices, with a batch size other than the one traced, and compared with the
PyTorch model (onnxruntime for ONNX); the file is only written when the maximum absolute difference of the
logits is within ``atol``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_bts.data.records import DatasetError, read_image
from lightning_bts.errors import UserError
from lightning_bts.evaluation.backends import (
    INPUT_NAME,
    OUTPUT_NAME,
    onnx_program,
    onnxruntime_session,
    plain_network,
)
from lightning_bts.evaluation.predict_files import find_images
from lightning_bts.evaluation.predictor import Predictor, prepare_image
from lightning_bts.evaluation.settings import InferenceSettings
from lightning_bts.evaluation.tta import TTA_CONTRACTS
from lightning_bts.files import atomic_path
from lightning_bts.training.checkpoint_file import WEIGHT_DTYPES, read_checkpoint, release_checkpoint
from lightning_bts.training.checkpoints import Preprocessing

FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript", ".ckpt": "checkpoint"}
DEFAULT_SAMPLES = "data/sample/images"


class ExportError(UserError):
    """An export that cannot be done as asked: unknown format, output onto the checkpoint, missing package."""


class ExportCheckError(RuntimeError):
    """An exported file that does not reproduce the PyTorch model (a bug or an exporter limit, not bad input)."""


@dataclass(frozen=True)
class ExportReport:
    """Where the model went and how closely the export reproduces PyTorch on ``num_samples`` slices."""

    path: Path
    format: str
    max_abs_diff: float
    max_abs_logit: float
    num_samples: int
    batch_sizes: tuple[int, ...]


def contract(settings: InferenceSettings, preprocessing: Preprocessing, checkpoint: str | Path) -> dict[str, str]:
    """The input/output contract stored in the exported file (all values strings, as ONNX metadata needs).

    The graph is one network without TTA or post-processing; the settings the checkpoint stores for them
    (:mod:`lightning_bts.evaluation.settings`) are recorded so a deployment can apply them.
    """
    size, channels = preprocessing.image_size, preprocessing.in_channels
    return {
        "input": f"{INPUT_NAME}: float32 (N, {channels}, {size}, {size}), pixel values 0..255 (not divided by 255)",
        "output": f"{OUTPUT_NAME}: float32 (N, 1, {size}, {size}); tumour where sigmoid(logits) > threshold",
        "image_size": str(size),
        "in_channels": str(channels),
        "skull_strip": preprocessing.skull_strip,
        "intensity": preprocessing.intensity,
        "threshold": str(settings.postprocessing.threshold),
        "postprocessing": json.dumps(settings.postprocessing.as_dict()),
        "tta": TTA_CONTRACTS[settings.tta],
        "preprocessing": "skull strip the grayscale slice (lightning_bts.data.skull_strip.brain_mask, method "
        "skull_strip), zero outside, resize to image_size (INTER_AREA when shrinking, else linear); "
        + ("in_channels 3 = the grayscale slice before, the slice, the slice after in its scan (the slice itself "
           "where it has no neighbour)" if preprocessing.neighbour_slices else "in_channels 3 = RGB or grayscale "
           "repeated"),
        "neighbour_slices": str(preprocessing.neighbour_slices).lower(),
        "source_checkpoint": Path(checkpoint).name,
    }


def sample_batch(preprocessing: Preprocessing, samples: Sequence[str | Path] | None, count: int = 4) -> torch.Tensor:
    """float32 ``(N, C, S, S)`` in 0..255: the first ``count`` readable images of ``samples``, preprocessed.

    ``samples=None`` uses the shipped sample when run from the repository, else seeded random images.
    """
    if samples is None and Path(DEFAULT_SAMPLES).is_dir():
        samples = [DEFAULT_SAMPLES]
    images = []
    for path in find_images(samples) if samples else []:
        try:
            images.append(prepare_image(read_image(path), preprocessing))
        except DatasetError:
            continue
        if len(images) == count:
            break
    if not images:
        shape = (count, preprocessing.in_channels, preprocessing.image_size, preprocessing.image_size)
        return torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)).float()
    return torch.from_numpy(np.stack(images)).float()


def export_onnx(net: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    """ONNX (opset 18, dynamo exporter) with a dynamic batch axis and ``metadata`` as metadata_props."""
    try:
        import onnx
    except ImportError as error:
        raise ExportError("ONNX export needs onnx and onnxscript: pip install 'lightning_bts[export]'") from error
    proto = onnx_program(net, example).model_proto
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_torchscript(net: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    """TorchScript by tracing (the U-Net has no data-dependent control flow); ``metadata`` as an extra file."""
    with warnings.catch_warnings():
        # The U-Net's check that H and W divide by 2**depth is evaluated once while tracing; sizes are fixed.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net, example)
    torch.jit.save(traced, str(path), _extra_files={"lightning_bts.json": json.dumps(metadata, indent=2)})


def run_exported(path: Path, kind: str, images: torch.Tensor) -> np.ndarray:
    """Logits of the exported file for ``images`` (onnxruntime on CPU for ONNX)."""
    if kind == "onnx":
        return onnxruntime_session(str(path)).run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    if kind == "checkpoint":
        module = plain_network(Predictor.from_checkpoints([path], device="cpu").models[0])
    else:
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(images).numpy()


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    samples: Sequence[str | Path] | None = None,
    num_samples: int = 4,
    atol: float = 1e-4,
    weights_dtype: str = "float32",
) -> ExportReport:
    """Exports ``checkpoint`` to ``output`` (``.onnx``; ``.pt``/``.pth``/``.ts`` = TorchScript; ``.ckpt`` = a
    release checkpoint with weights stored as ``weights_dtype``) and checks it.

    The file is traced with a batch of 2 and checked with all ``num_samples`` slices at once and with one
    slice alone (the batch axis is dynamic); it is written only if every logit is within ``atol`` of PyTorch.

    Raises:
        CheckpointError: unusable checkpoint. ExportError: unknown format, output = checkpoint, a missing
        package. ExportCheckError: the export does not reproduce PyTorch (no file is left behind).
    """
    output = Path(output)
    kind = FORMATS.get(output.suffix.lower())
    if kind is None:
        raise ExportError(f"cannot tell the format of {output}: use .onnx (ONNX), .pt (TorchScript) or .ckpt "
                          "(release checkpoint)")
    if weights_dtype != "float32" and kind != "checkpoint":
        raise ExportError(f"--weights-dtype {weights_dtype} applies to a .ckpt release only, not to {output.name}")
    if output.resolve() == Path(checkpoint).resolve():
        raise ExportError(f"refusing to overwrite the checkpoint {checkpoint} with its export")
    if num_samples < 2:
        raise ExportError(f"num_samples must be at least 2 (to check the dynamic batch axis), got {num_samples}")
    predictor = Predictor.from_checkpoints([checkpoint], device="cpu")
    preprocessing = predictor.preprocessing
    net = plain_network(predictor.models[0])
    images = sample_batch(preprocessing, samples, num_samples)
    if len(images) < 2:
        images = torch.cat([images, images.flip(-1)])
    with torch.inference_mode():
        expected = net(images).numpy()

    with atomic_path(output) as temporary:  # a failed export or check leaves no file
        if kind == "checkpoint":
            torch.save(release_checkpoint(read_checkpoint(checkpoint), weights_dtype), temporary)
        else:
            exporter = export_onnx if kind == "onnx" else export_torchscript
            exporter(net, images[:2].clone(), temporary, contract(predictor.settings, preprocessing, checkpoint))
        batches = (len(images), 1)
        diff = max(float(np.abs(run_exported(temporary, kind, images[:n]) - expected[:n]).max()) for n in batches)
        if not diff <= atol:
            raise ExportCheckError(f"{kind} export of {checkpoint} differs from PyTorch by up to {diff:.3g} "
                              f"(allowed {atol:g}); nothing written")
    return ExportReport(output, kind, diff, float(np.abs(expected).max()), len(images), batches)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export.py",
        description="Export a checkpoint's U-Net to ONNX (.onnx) or TorchScript (.pt), input float32 (N, C, S, S) "
        "in 0..255 after skull stripping and resizing, output logits; or write a release checkpoint (.ckpt): "
        "weights, settings and stored post-processing without optimiser state, for predict.py/evaluate.py. "
        "See docs/inference.md.",
    )
    parser.add_argument("--ckpt", required=True, metavar="PATH", help="a checkpoint written by scripts/fit.py")
    parser.add_argument("--output", required=True, metavar="FILE",
                        help="FILE.onnx, FILE.pt (TorchScript) or FILE.ckpt (release)")
    parser.add_argument("--samples", nargs="+", default=None, metavar="PATH_OR_GLOB",
                        help=f"slices to check the export on (default: {DEFAULT_SAMPLES} if present, else random)")
    parser.add_argument("--num-samples", type=int, default=4, help="how many slices to check on (default 4)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest allowed absolute logit difference to PyTorch (default 1e-4; float16 "
                        "weights need about 1e-2)")
    parser.add_argument("--weights-dtype", default="float32", choices=tuple(WEIGHT_DTYPES),
                        help="how a .ckpt release stores its weights (default float32; float16 halves the file)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/export.py``: exit status 0 on success.

    Raises:
        UserError: a bad checkpoint, output name or option (``run_main`` prints it and exits 2).
        ExportCheckError: the export does not reproduce PyTorch (a traceback: not the user's doing).
    """
    args = build_parser().parse_args(argv)
    report = export_checkpoint(args.ckpt, args.output, args.samples, args.num_samples, args.atol,
                               args.weights_dtype)
    print(f"wrote {report.format} model {report.path}; checked on {report.num_samples} slice(s) with batch sizes "
          f"{'/'.join(map(str, report.batch_sizes))}: max |logit difference| to PyTorch {report.max_abs_diff:.3g} "
          f"(logits up to {report.max_abs_logit:.3g})")
    return 0
