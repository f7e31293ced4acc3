"""What an evaluation writes: ``metrics.json``, ``per_image.csv``, ``predictions.npz``, and the printed table.

Files are written through temporary names and renames: an error leaves nothing half-written.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_bts.errors import UserError
from lightning_bts.evaluation.scoring import Evaluation
from lightning_bts.evaluation.tta import describe_tta
from lightning_bts.files import write_atomically
from lightning_bts.metrics import RATIO_NAMES


def write_files_atomically(out_dir: str | Path, files: Mapping[str, str | bytes]) -> Path:
    """Write ``{relative name: content}`` under ``out_dir`` so that no reader ever sees a partial file.

    A new ``out_dir`` is built under a temporary name and renamed as a whole; in an existing one each file
    is written to a temporary name and renamed over the old one.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output folder {out_dir} exists and is not a folder")
    fresh = not out_dir.exists()
    if fresh:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    else:
        target = out_dir
    try:
        for name, content in files.items():
            write_atomically(target / name, content)
        if fresh:
            os.rename(target, out_dir)
    except BaseException:
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return out_dir


def to_json(data: Any) -> str:
    """JSON with NaN/inf written as null (valid JSON for any reader)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    return json.dumps(clean(data), indent=1) + "\n"


def write_evaluation(evaluation: Evaluation, out_dir: str | Path) -> Path:
    """``metrics.json``, ``per_image.csv`` (and ``per_volume.csv``, ``predictions.npz`` when there) in ``out_dir``."""
    files: dict[str, str | bytes] = {
        "metrics.json": to_json(evaluation.metrics),
        "per_image.csv": evaluation.per_image.to_csv(index=False),
    }
    if evaluation.per_volume is not None:
        files["per_volume.csv"] = evaluation.per_volume.to_csv(index=False)
    if evaluation.predictions is not None:
        files["predictions.npz"] = predictions_npz(evaluation.per_image["key"], evaluation.predictions)
    return write_files_atomically(out_dir, files)


def predictions_npz(keys: Sequence[str], masks: np.ndarray) -> bytes:
    """Predicted masks, bit-packed and compressed (a few kB per fold), with their slice keys."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, keys=np.asarray(list(keys), dtype=str), shape=np.asarray(masks.shape),
                        packed=np.packbits(masks.astype(bool), axis=None))
    return buffer.getvalue()


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """``{key: bool mask}`` from :func:`predictions_npz`'s file."""
    with np.load(path) as data:
        shape = tuple(int(s) for s in data["shape"])
        masks = np.unpackbits(data["packed"], count=int(np.prod(shape))).reshape(shape).astype(bool)
        return dict(zip(data["keys"].tolist(), masks))


def format_table(metrics: Mapping[str, Any]) -> str:
    """The headline table: native pooled and per-image ratios in percent and Hausdorff means, beside the
    model-grid pooled values (when ``metrics`` has them), the native 95 % intervals (when it has ``ci95``:
    pooled, and for Dice also per image), and the scores per patient and per tumour type (when it has them)."""
    grid = metrics.get("model_grid")
    ci = metrics.get("ci95") or {}
    native = "native" if grid else "pooled"
    header = f"{'metric':<12}{native:>10}{'per image':>12}" + (f"{'model grid':>13}" if grid else "")
    lines = [header + ("   95% CI (per image)" if ci else "")]
    for name in RATIO_NAMES:
        line = f"{name:<12}{100 * metrics[name]:>9.2f}%{100 * metrics['per_image'][name]:>11.2f}%"
        line += f"{100 * grid[name]:>12.2f}%" if grid else ""
        if name in ci:
            line += f"   {_interval(ci[name], 100, '%')}"
            line += f" ({_interval(ci[f'{name}_per_image'], 100, '%')})" if f"{name}_per_image" in ci else ""
        lines.append(line)
    for name in ("hd", "hd95"):
        line = f"{name:<12}{metrics[name]:>7.2f} {_units(metrics)}{'':>12}"
        line += f"{grid[name]:>10.2f} {_units(grid)}" if grid else ""
        lines.append(line + (f"   {_interval(ci[name], 1, ' ' + _units(metrics))}" if name in ci else ""))
    lines.append(f"{metrics.get('n_images', '?')} slices ({metrics.get('part')}), {metrics.get('hd_empty', 0)} with an "
                 "empty prediction or mask")
    if "ci_method" in metrics:
        lines.append(f"95% CI: {metrics['ci_method']}")
    lines.extend(_subgroup_lines(metrics))
    if grid:
        lines.append(f"native: each slice at its original size; model grid: {grid.get('resolution')}")
    if "postprocessing_rule" in metrics:
        lines.append(f"post-processing: {metrics['postprocessing_rule']}{describe_tta(metrics.get('tta'))} "
                     f"({metrics.get('settings_source')})")
    else:
        lines.append(f"threshold {metrics.get('threshold')}")
    if metrics.get("note"):
        lines.append(f"note: {metrics['note']}")
    return "\n".join(lines)


def _subgroup_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Per patient, slices where the tumour was not found, and per tumour type (when ``metrics`` has them): who
    the pooled Dice is made of."""
    lines = []
    patients = metrics.get("by_patient")
    if patients:
        largest = patients["largest"]
        lines.append(f"per patient: mean Dice {100 * patients['dice_mean']:.2f}%, median "
                     f"{100 * patients['dice_median']:.2f}% over {patients['patients']} patients; the largest, "
                     f"{largest['patient_group']} ({largest['slices']} slices), holds "
                     f"{100 * largest['tumor_pixel_share']:.0f}% of the tumour pixels, "
                     f"Dice {100 * largest['dice']:.2f}%")
        worst = patients["most_errors"]
        lines.append(f"most of the errors: {worst['patient_group']} ({worst['slices']} slices) holds "
                     f"{100 * worst['error_pixel_share']:.0f}% of the false and missed pixels (what pooled Dice "
                     f"loses) and {100 * worst['tumor_pixel_share']:.0f}% of the tumour pixels, "
                     f"Dice {100 * worst['dice']:.2f}%")
    missed = metrics.get("not_found")
    if missed and missed["slices"]:
        line = (f"tumour not found (Dice under {missed['dice_below']:g}) on {missed['slices']} of "
                f"{missed['slices_with_tumor']} slices with tumour ({100 * missed['tumor_pixel_share']:.0f}% of the "
                "tumour pixels)")
        if missed["others_dice"] is not None:
            line += (f"; the other slices: pooled Dice {100 * missed['others_dice']:.2f}%, per slice "
                     f"{100 * missed['others_dice_per_slice']:.2f}%")
        lines.append(line)
    for name, scores in (metrics.get("by_tumor_type") or {}).items():
        lines.append(f"{name + ':':<12}Dice {100 * scores['dice']:.2f}%, precision {100 * scores['precision']:.2f}%, "
                     f"recall {100 * scores['recall']:.2f}% ({scores['slices']} slices, "
                     f"{_count(scores['patients'], 'patient')}, {100 * scores['tumor_pixel_share']:.0f}% of the tumour "
                     "pixels)")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _interval(bounds: Sequence[float | None], scale: float, unit: str) -> str:
    if any(bound is None or not math.isfinite(bound) for bound in bounds):
        return "n/a"  # e.g. HD95 defined on no slice
    low, high = (scale * bound for bound in bounds)
    return f"{low:.1f}-{high:.1f}{unit}" if unit == "%" else f"{low:.2f}-{high:.2f}{unit}"


def _units(metrics: Mapping[str, Any]) -> str:
    return "mm" if metrics.get("hd_units") == "mm" else "px"
