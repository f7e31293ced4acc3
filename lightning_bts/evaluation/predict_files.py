"""Prediction on image files: find the inputs, predict them in batches, write masks, maps, overlays and a table.

Each file is read (``records.read_image``), prepared and predicted by a
:class:`~lightning_bts.evaluation.predictor.Predictor` (the checkpoint's preprocessing, ensemble, TTA), its
probability map resized back to the file's own size and post-processed there, by the rule the checkpoint
stores (or an override). Written under the output folder: ``masks/`` (PNG, 0/255), optionally
``probabilities/`` (8-bit PNG = round(255 p), or float32 ``.npy``; before post-processing) and ``overlays/``
(the input with the tumour tinted red and outlined in yellow), plus ``predictions.csv`` (tumour area per
slice) and ``skipped.txt`` (files that could not be read, and why). Inputs are never written: an output
folder holding any input is refused, and every file goes through a temporary name and a rename.
"""

from __future__ import annotations

import glob
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lightning_bts import files
from lightning_bts.data.records import IMAGE_SUFFIXES, DatasetError, read_image
from lightning_bts.evaluation.postprocess import PostProcessing
from lightning_bts.evaluation.predictor import InferenceError, Predictor, prepare_image, to_original_size
from lightning_bts.training.checkpoints import Preprocessing

PROBABILITY_FORMATS = ("png", "npy")
OVERLAY_ALPHA = 0.35
"""Opacity of the red tint over predicted tumour pixels; the anatomy stays visible underneath."""


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
    return unique_output_names(files, lambda source, relative: relative.with_suffix(".png"), "inputs")


def unique_output_names(sources: Sequence[Path], name_of: Callable[[Path, Path], Path],
                        noun: str = "inputs") -> list[Path]:
    """``name_of(resolved source, its path below the sources' common folder)`` for each source, all different.

    Raises:
        InferenceError: two sources would get the same name (the message calls them ``noun``).
    """
    resolved = [source.resolve() for source in sources]
    common = Path(os.path.commonpath([str(source.parent) for source in resolved]))
    names = [name_of(source, source.relative_to(common)) for source in resolved]
    seen: dict[Path, Path] = {}
    for source, name in zip(sources, names):
        if name in seen:
            raise InferenceError(f"{noun} {seen[name]} and {source} would both be written as {name}; "
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
    batch_size: int = 8,
    save_probs: str | None = None,
    overlays: bool = False,
    pixel_spacing: Sequence[float] | None = None,
    strict: bool = False,
    progress: bool = True,
) -> PredictionSummary:
    """Predicts ``files`` in batches and writes masks (and optional outputs) under ``output_dir``.

    Args:
        save_probs: ``"png"`` or ``"npy"`` to also write probability maps.
        overlays: also write overlay PNGs.
        pixel_spacing: mm per pixel of the *original* images, one value (square) or (row, column); adds
            ``tumour_area_mm2`` to the table.
        strict: stop at the first unreadable file instead of skipping it.

    Raises:
        InferenceError: bad arguments, an output folder holding inputs, two inputs with the same output name,
            an unreadable file with ``strict``.
    """
    files = [Path(f) for f in files]
    output_dir = Path(output_dir)
    if predictor.preprocessing.neighbour_slices:
        warnings.warn("this model was trained on neighbouring slices (data.neighbour_slices); image files are "
                      "predicted each alone, the slice in all three channels: give a NIfTI volume or a DICOM series "
                      "for it to see each slice's neighbours", stacklevel=2)
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
                    raise InferenceError(f"{error} (stopped: --strict)")
                else:
                    skipped.append((source, error))
                    tqdm.write(f"skipped {source}: {error}", file=sys.stderr)
            if good:
                probabilities = predictor.probabilities(np.stack([item[3] for item in good]))
                for (source, name, image, _), probability in zip(good, probabilities):
                    probability = to_original_size(probability, image.shape[:2])
                    rows.append(_write_outputs(source, name, image, probability, output_dir, inputs,
                                               predictor.postprocessing, save_probs, overlays, spacing))
            bar.update(len(chunk))
    bar.close()

    table = pd.DataFrame(rows, columns=_columns(spacing is not None))
    csv_path = output_dir / "predictions.csv"
    write_atomically(csv_path, table.to_csv(index=False).encode(), inputs)
    listing = "".join(f"{source}\t{reason}\n" for source, reason in skipped)
    write_atomically(output_dir / "skipped.txt", listing.encode(), inputs)
    return PredictionSummary(table, skipped, csv_path)


def _load(path: Path, preprocessing: Preprocessing) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(image, model input, None), or (None, None, why) for a file that cannot be used."""
    try:
        image = read_image(path)
        return image, prepare_image(image, preprocessing), None
    except (DatasetError, cv2.error, OSError) as error:
        return None, None, str(error)


def _write_outputs(source: Path, name: Path, image: np.ndarray, probability: np.ndarray, output_dir: Path,
                   inputs: set[Path], postprocessing: PostProcessing, save_probs: str | None, overlays: bool,
                   spacing: tuple[float, float] | None) -> dict[str, object]:
    mask = postprocessing.apply(probability)
    mask_path = output_dir / "masks" / name
    _write_png(mask_path, mask.astype(np.uint8) * 255, inputs)
    if save_probs == "png":
        _write_png(output_dir / "probabilities" / name, np.round(probability * 255).astype(np.uint8), inputs)
    elif save_probs == "npy":
        buffer = _npy_bytes(probability.astype(np.float32))
        write_atomically(output_dir / "probabilities" / name.with_suffix(".npy"), buffer, inputs)
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
    write_atomically(path, encoded.tobytes(), inputs)


def write_atomically(path: Path, data: bytes, inputs: set[Path]) -> None:
    """:func:`lightning_bts.files.write_atomically`, refusing to write onto one of the prediction's inputs."""
    if path.resolve() in inputs:
        raise InferenceError(f"refusing to write {path}: it is one of the inputs")
    files.write_atomically(path, data)
