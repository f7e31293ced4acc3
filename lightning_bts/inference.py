"""Tumour masks for new scans: one checkpoint or a fold ensemble, optional flip TTA, masks at the input's size.

Each image goes through the preprocessing its checkpoint was trained with (skull stripping, resize, channels;
read from the checkpoint, :mod:`lightning_bts.checkpoints`), every model of the ensemble predicts a tumour
probability per pixel, the probabilities are averaged (over models and, with TTA, over the image and its
horizontal mirror), resized back to the image's original size and thresholded. Averaging probabilities rather
than logits or votes keeps one over-confident member from deciding alone.

Written under the output folder: ``masks/`` (PNG, 0/255), optionally ``probabilities/`` (8-bit PNG = round(255
p), or float32 ``.npy``) and ``overlays/`` (the input with the tumour tinted red and outlined in yellow), plus
``predictions.csv`` (tumour area per slice) and ``skipped.txt`` (files that could not be read, and why).
Inputs are never written: an output folder holding any input is refused.

Command line: ``python scripts/predict.py --ckpt RUN/checkpoints/last.ckpt --input scans/ --output predictions/``
(``--help`` lists the options).
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lightning_bts.checkpoints import CheckpointError, Preprocessing, load_ensemble
from lightning_bts.data.preprocess import preprocess_image
from lightning_bts.data.records import IMAGE_SUFFIXES, DatasetError, read_image
from lightning_bts.module import SegmentationModule

PROBABILITY_FORMATS = ("png", "npy")
OVERLAY_ALPHA = 0.35
"""Opacity of the red tint over predicted tumour pixels; the anatomy stays visible underneath."""


class InferenceError(ValueError):
    """Inputs or outputs that cannot be used (no images, an output folder holding inputs, ...)."""


def find_images(specs: Sequence[str | Path]) -> list[Path]:
    """Image files named by ``specs``: files, folders (their images, not recursive) or glob patterns (``**`` ok).

    Folders and patterns keep files with an image suffix (:data:`IMAGE_SUFFIXES`); files named explicitly are
    kept whatever their suffix (an unreadable one is reported when read). Order: as given, folders and
    patterns sorted; duplicates dropped.

    Raises:
        InferenceError: a spec matches nothing.
    """
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(spec), recursive=True)
                             if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not matches:
            raise InferenceError(f"no images found for input {str(spec)!r} (an image file, a folder of "
                                 f"{'/'.join(IMAGE_SUFFIXES)} files, or a glob pattern)")
        found.extend(matches)
    return list(dict.fromkeys(found))


def prepare_image(image: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 ``(C, S, S)`` model input from a uint8 ``(H, W)`` or ``(H, W, 3)`` RGB image, as in training."""
    prepared = preprocess_image(image, preprocessing.image_size, preprocessing.skull_strip,
                                rgb=preprocessing.in_channels == 3)
    return np.ascontiguousarray(prepared.transpose(2, 0, 1))


def to_original_size(probability: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float32 ``(S, S)`` probability map resized to ``shape`` (H, W): linear when enlarging, area when shrinking."""
    height, width = shape
    if probability.shape == (height, width):
        return probability.astype(np.float32, copy=False)
    enlarging = height > probability.shape[0] or width > probability.shape[1]
    return cv2.resize(probability.astype(np.float32, copy=False), (width, height),
                      interpolation=cv2.INTER_LINEAR if enlarging else cv2.INTER_AREA)


class Predictor:
    """Mean tumour probability of one or more models, optionally with horizontal-flip TTA.

    Args:
        models: trained modules sharing ``preprocessing`` (see :func:`lightning_bts.checkpoints.load_ensemble`).
        preprocessing: what their input must look like.
        device: where the models run; they are moved there.
        tta: also predict the mirrored image and average (the mirror's prediction mirrored back).
    """

    def __init__(
        self,
        models: Sequence[SegmentationModule],
        preprocessing: Preprocessing,
        device: str | torch.device = "cpu",
        tta: bool = False,
    ) -> None:
        if not models:
            raise ValueError("a Predictor needs at least one model")
        self.device = torch.device(device)
        self.models = [model.eval().to(self.device) for model in models]
        self.preprocessing = preprocessing
        self.tta = tta

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], device: str | torch.device = "cpu",
                         tta: bool = False) -> Predictor:
        """Loads ``paths`` as an ensemble (all must share the preprocessing); see :func:`load_ensemble`."""
        models, preprocessing = load_ensemble(paths)
        return cls(models, preprocessing, device, tta)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """float32 ``(N, S, S)`` tumour probabilities of preprocessed uint8 ``(N, C, S, S)`` images."""
        batch = torch.as_tensor(images).to(self.device)
        total = torch.zeros((batch.shape[0], *batch.shape[2:]), dtype=torch.float32, device=self.device)
        views = 0
        for model in self.models:
            total += torch.sigmoid(model(batch).float())[:, 0]
            views += 1
            if self.tta:
                mirrored = torch.sigmoid(model(torch.flip(batch, dims=[-1])).float())[:, 0]
                total += torch.flip(mirrored, dims=[-1])
                views += 1
        return (total / views).cpu().numpy()

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """float32 probability maps at each image's own size, for uint8 ``(H, W)`` or ``(H, W, 3)`` images."""
        if not images:
            return []
        batch = np.stack([prepare_image(image, self.preprocessing) for image in images])
        return [to_original_size(p, image.shape[:2]) for p, image in zip(self.probabilities(batch), images)]


@dataclass
class PredictionSummary:
    """What :func:`predict_files` wrote: one table row per predicted slice, and the skipped files with reasons."""

    table: pd.DataFrame
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    csv_path: Path | None = None


def output_names(files: Sequence[Path]) -> list[Path]:
    """Relative ``.png`` output names: each file's path below the inputs' common folder, suffix replaced.

    Raises:
        InferenceError: two inputs would get the same name (``a.png`` and ``a.jpg`` in one folder).
    """
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([str(f.parent) for f in resolved]))
    names = [f.relative_to(common).with_suffix(".png") for f in resolved]
    seen: dict[Path, Path] = {}
    for source, name in zip(files, names):
        if name in seen:
            raise InferenceError(f"inputs {seen[name]} and {source} would both be written as {name}; "
                                 "rename one or predict them separately")
        seen[name] = source
    return names


def check_output_dir(files: Sequence[Path], output_dir: Path) -> None:
    """Refuses an output folder that is, or holds, any input: predictions must never replace a scan."""
    out = output_dir.resolve()
    for source in files:
        real = source.resolve()
        if real == out or out in real.parents:
            raise InferenceError(f"output folder {output_dir} contains the input {source}; choose an output "
                                 "folder outside the inputs (inputs are never overwritten)")


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8: ``image`` with the ``mask`` pixels tinted red and the mask outlined in yellow."""
    rgb = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    out = rgb.copy()
    tumour = mask.astype(bool)
    red = np.array([255, 0, 0], np.float32)
    out[tumour] = ((1 - OVERLAY_ALPHA) * rgb[tumour] + OVERLAY_ALPHA * red).round().astype(np.uint8)
    contours = cv2.findContours(tumour.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0]
    thickness = max(1, round(max(mask.shape) / 256))
    cv2.drawContours(out, contours, -1, (255, 255, 0), thickness)
    return out


def predict_files(
    predictor: Predictor,
    files: Sequence[Path],
    output_dir: str | Path,
    threshold: float = 0.5,
    batch_size: int = 8,
    save_probs: str | None = None,
    overlays: bool = False,
    pixel_spacing: Sequence[float] | None = None,
    strict: bool = False,
    progress: bool = True,
) -> PredictionSummary:
    """Predicts ``files`` in batches and writes masks (and optional outputs) under ``output_dir``.

    Args:
        threshold: probability above which a pixel is tumour.
        save_probs: ``"png"`` or ``"npy"`` to also write probability maps.
        overlays: also write overlay PNGs.
        pixel_spacing: mm per pixel of the *original* images, one value (square) or (row, column); adds
            ``tumour_area_mm2`` to the table.
        strict: stop at the first unreadable file instead of skipping it.

    Raises:
        InferenceError: bad arguments, an output folder holding inputs, two inputs with the same output name.
        DatasetError: an unreadable file with ``strict``.
    """
    files = [Path(f) for f in files]
    output_dir = Path(output_dir)
    if not 0.0 < threshold < 1.0:
        raise InferenceError(f"threshold must be between 0 and 1, got {threshold}")
    if batch_size < 1:
        raise InferenceError(f"batch_size must be at least 1, got {batch_size}")
    if save_probs not in (None, *PROBABILITY_FORMATS):
        raise InferenceError(f"save_probs must be one of {PROBABILITY_FORMATS}, got {save_probs!r}")
    spacing = _spacing(pixel_spacing)
    check_output_dir(files, output_dir)
    names = output_names(files)
    inputs = {f.resolve() for f in files}

    rows, skipped = [], []
    bar = tqdm(total=len(files), unit="slice", disable=not progress or len(files) < 2, file=sys.stderr)
    with ThreadPoolExecutor(max_workers=min(batch_size, os.cpu_count() or 1)) as pool:
        for chunk in _chunks(list(zip(files, names)), batch_size):
            loaded = list(pool.map(lambda item: _load(item[0], predictor.preprocessing), chunk))
            good = []
            for (source, name), (image, prepared, error) in zip(chunk, loaded):
                if error is None:
                    good.append((source, name, image, prepared))
                elif strict:
                    raise DatasetError(f"{error} (stopped: --strict)")
                else:
                    skipped.append((source, error))
                    tqdm.write(f"skipped {source}: {error}", file=sys.stderr)
            if good:
                probabilities = predictor.probabilities(np.stack([item[3] for item in good]))
                for (source, name, image, _), probability in zip(good, probabilities):
                    probability = to_original_size(probability, image.shape[:2])
                    rows.append(_write_outputs(source, name, image, probability, output_dir, inputs, threshold,
                                               save_probs, overlays, spacing))
            bar.update(len(chunk))
    bar.close()

    table = pd.DataFrame(rows, columns=_columns(spacing is not None))
    csv_path = output_dir / "predictions.csv"
    _write_atomically(csv_path, table.to_csv(index=False).encode(), inputs)
    listing = "".join(f"{source}\t{reason}\n" for source, reason in skipped)
    _write_atomically(output_dir / "skipped.txt", listing.encode(), inputs)
    return PredictionSummary(table, skipped, csv_path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Predict brain-tumour masks for new MRI slices with trained checkpoints (one, or a fold "
        "ensemble averaged by probability). Preprocessing (skull stripping, size, channels) is read from the "
        "checkpoint; masks are written at each input's original size.",
        epilog="Example: python scripts/predict.py --ckpt runs/focal_fold*/*/checkpoints/last.ckpt "
        "--input 'scans/*.png' --output predictions --tta --overlays --pixel-spacing 0.49",
    )
    parser.add_argument("--ckpt", nargs="+", required=True, metavar="PATH",
                        help="checkpoint(s); several = an ensemble (mean probability)")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH_OR_GLOB",
                        help="image files, folders of images, or quoted glob patterns (PNG/JPG/TIFF, 8-bit)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (must not hold any input)")
    parser.add_argument("--threshold", type=float, default=0.5, help="tumour if probability > this (default 0.5)")
    parser.add_argument("--tta", action="store_true", help="average with the horizontally mirrored prediction")
    parser.add_argument("--save-probs", nargs="?", const="png", choices=PROBABILITY_FORMATS, default=None,
                        help="also write probability maps: png (8-bit, 255 = 1.0; the default) or npy (float32)")
    parser.add_argument("--overlays", action="store_true", help="also write the inputs with the tumour drawn on")
    parser.add_argument("--pixel-spacing", nargs="+", type=float, metavar="MM", default=None,
                        help="mm per pixel of the input images: one value, or row and column spacing; "
                        "adds tumour_area_mm2 to predictions.csv")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, ... (default: cuda if present)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable input instead of "
                        "skipping it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/predict.py``. Exit status 0 when at least one slice was predicted, 1 if none, 2 on errors."""
    args = build_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        files = find_images(args.input)
        check_output_dir(files, Path(args.output))  # before loading models: fail fast
        predictor = Predictor.from_checkpoints(args.ckpt, device=device, tta=args.tta)
        summary = predict_files(predictor, files, args.output, threshold=args.threshold, batch_size=args.batch_size,
                                save_probs=args.save_probs, overlays=args.overlays, pixel_spacing=args.pixel_spacing,
                                strict=args.strict, progress=not args.quiet)
    except (CheckpointError, InferenceError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    members = f"{len(args.ckpt)} checkpoints" if len(args.ckpt) > 1 else "1 checkpoint"
    print(f"predicted {len(summary.table)} slice(s) with {members}{' + flip TTA' if args.tta else ''} on {device}; "
          f"{int((summary.table['tumour_pixels'] > 0).sum())} with tumour. Table: {summary.csv_path}")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} unreadable file(s) (listed in {Path(args.output) / 'skipped.txt'}):",
              file=sys.stderr)
        for source, reason in summary.skipped:
            print(f"  {source}: {reason}", file=sys.stderr)
    return 0 if len(summary.table) else 1


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the first CUDA device if present, else CPU. Unavailable devices are an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InferenceError(f"unknown device {name!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InferenceError(f"device {name!r} requested but MPS is not available here; use --device cpu")
    return device


def _load(path: Path, preprocessing: Preprocessing) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(image, model input, None), or (None, None, why) for a file that cannot be used."""
    try:
        image = read_image(path)
        return image, prepare_image(image, preprocessing), None
    except (DatasetError, cv2.error, OSError) as error:
        return None, None, str(error)


def _write_outputs(source: Path, name: Path, image: np.ndarray, probability: np.ndarray, output_dir: Path,
                   inputs: set[Path], threshold: float, save_probs: str | None, overlays: bool,
                   spacing: tuple[float, float] | None) -> dict[str, object]:
    mask = probability > threshold
    mask_path = output_dir / "masks" / name
    _write_png(mask_path, mask.astype(np.uint8) * 255, inputs)
    if save_probs == "png":
        _write_png(output_dir / "probabilities" / name, np.round(probability * 255).astype(np.uint8), inputs)
    elif save_probs == "npy":
        buffer = _npy_bytes(probability.astype(np.float32))
        _write_atomically(output_dir / "probabilities" / name.with_suffix(".npy"), buffer, inputs)
    if overlays:
        _write_png(output_dir / "overlays" / name, cv2.cvtColor(overlay(image, mask), cv2.COLOR_RGB2BGR), inputs)
    pixels = int(mask.sum())
    row: dict[str, object] = {
        "image": str(source),
        "mask": str(mask_path),
        "height": image.shape[0],
        "width": image.shape[1],
        "tumour_pixels": pixels,
        "tumour_fraction": pixels / mask.size,
        "max_probability": float(probability.max()),
    }
    if spacing is not None:
        row["tumour_area_mm2"] = pixels * spacing[0] * spacing[1]
    return row


def _columns(with_mm: bool) -> list[str]:
    columns = ["image", "mask", "height", "width", "tumour_pixels", "tumour_fraction", "max_probability"]
    return columns + ["tumour_area_mm2"] if with_mm else columns


def _spacing(pixel_spacing: Sequence[float] | None) -> tuple[float, float] | None:
    if pixel_spacing is None:
        return None
    values = [float(v) for v in pixel_spacing]
    if len(values) not in (1, 2) or any(not v > 0 for v in values):
        raise InferenceError(f"pixel spacing must be one or two positive values in mm, got {values}")
    return (values[0], values[-1])


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _write_png(path: Path, image: np.ndarray, inputs: set[Path]) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    _write_atomically(path, encoded.tobytes(), inputs)


def _write_atomically(path: Path, data: bytes, inputs: set[Path]) -> None:
    """Writes via a temporary file and a rename: no half-written file, and never onto an input."""
    if path.resolve() in inputs:
        raise InferenceError(f"refusing to write {path}: it is one of the inputs")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder: the rename is atomic
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
