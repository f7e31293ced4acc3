"""Evaluate trained checkpoints on a dataset folder, without training.

One checkpoint, or several (e.g. the five fold models) as an ensemble that averages probabilities. The
slices are preprocessed exactly as the checkpoint's training data was (image size, channels, skull
stripping come from the checkpoint), and the metrics are :mod:`lightning_bts.metrics`' — the same code that
logs ``val/*`` during training, so a checkpoint evaluated on its own validation fold reproduces the logged
numbers (at the same precision).

    python scripts/evaluate.py --ckpt runs/focal_fold0/v/checkpoints/last.ckpt --out eval/fold0
    python scripts/evaluate.py --ckpt cv/runs/focal_fold*/cv/checkpoints/last.ckpt \\
        --data-root ../shared/data/figshare_brain_tumor --out eval/ensemble

Outputs (written to a temporary name, then renamed: an error leaves nothing half-written):
``metrics.json`` (pooled ``dice``, ``iou``, ``precision``, ``recall``, ``accuracy``, ``specificity``; ``hd``,
``hd95`` means; per-image means under ``per_image``) and ``per_image.csv`` (one row per slice).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from lightning_bts.checkpoints import CheckpointError, data_settings, load_ensemble, read_checkpoint
from lightning_bts.data import BrainTumorDataModule, DatasetError
from lightning_bts.data.dataset import SliceDataset
from lightning_bts.metrics import RATIO_NAMES, HausdorffMetrics, OverlapMetrics, logit_threshold
from lightning_bts.module import SegmentationModule

PRECISIONS = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
PER_IMAGE_COLUMNS = ("key", "patient_group", "tumor_type", *RATIO_NAMES, "hd", "hd95",
                     "tumor_pixels", "predicted_pixels")


@dataclass
class Evaluation:
    """Metrics of one evaluation: ``metrics`` as written to metrics.json, ``per_image`` one row per slice.

    ``predictions`` (bool ``(N, S, S)``, rows as ``per_image``) is kept only when asked for.
    """

    metrics: dict[str, Any]
    per_image: pd.DataFrame
    predictions: np.ndarray | None = field(default=None, repr=False)


# --- checkpoints -------------------------------------------------------------------------------------------

def load_checkpoints(
    paths: Sequence[str | Path], map_location: str | torch.device = "cpu"
) -> tuple[list[SegmentationModule], dict[str, Any], list[int | None]]:
    """Models, the data settings of the first (its ``BrainTumorDataModule`` arguments) and each member's fold.

    Every file is read and checked (:mod:`lightning_bts.checkpoints`) before any is used.

    Raises:
        CheckpointError: a path is missing or not a SegmentationModule checkpoint, or members were trained on
            differently preprocessed slices.
    """
    models, preprocessing = load_ensemble(paths, map_location)
    settings = [data_settings(read_checkpoint(path)) for path in paths]
    data = {**settings[0], **preprocessing.as_dict()}
    return models, data, [member.get("fold") for member in settings]


# --- evaluation --------------------------------------------------------------------------------------------

def _autocast(precision: str, device: torch.device):
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def evaluate(
    models: SegmentationModule | torch.nn.Module | Sequence[torch.nn.Module],
    datamodule: BrainTumorDataModule,
    part: str = "val",
    threshold: float = 0.5,
    precision: str = "32-true",
    device: str | torch.device | None = "cpu",
    keep_predictions: bool = False,
    spacing: Sequence[float] | None = None,
) -> Evaluation:
    """Metrics of ``models`` (one, or an ensemble averaging probabilities) on ``datamodule``'s ``part``.

    ``part`` is ``"val"``, ``"train"``, ``"test"`` or ``"all"`` (see :meth:`BrainTumorDataModule.indices`).
    Hausdorff distances are in pixels of the evaluated grid, or in the units of ``spacing`` (default: the
    first model's ``pixel_spacing_mm``).
    """
    members = [models] if isinstance(models, torch.nn.Module) else list(models)
    if not members:
        raise ValueError("no model to evaluate")
    device = resolve_device(device)
    _autocast(precision, device)  # an unknown precision fails before any work
    if spacing is None:
        spacing = members[0].hparams.get("pixel_spacing_mm") if hasattr(members[0], "hparams") else None
    datamodule.load()
    hp = datamodule.hparams
    indices = datamodule.indices(part)
    if len(indices) == 0:
        raise DatasetError(f"{hp.root}: the {part!r} part holds no slices")
    loader = DataLoader(SliceDataset(datamodule.data, indices), batch_size=hp.batch_size)
    overlap, hausdorff = OverlapMetrics(threshold), HausdorffMetrics(threshold, spacing)
    cut = logit_threshold(threshold)
    training = [member.training for member in members]
    for member in members:
        member.to(device).eval()
    rows, predictions = [], []
    try:
        for batch in loader:
            images, masks = batch["image"].to(device), batch["mask"]
            with _autocast(precision, device):
                outputs = [member(images).float() for member in members]
            if len(outputs) == 1:
                logits = outputs[0].cpu()
            else:  # mean probability, back to a logit so the metrics threshold it exactly as a single model
                probability = torch.stack([torch.sigmoid(out) for out in outputs]).mean(0)
                logits = torch.logit(probability.double(), eps=1e-12).float().cpu()
            overlap.update(logits, masks)
            hausdorff.update(logits, masks)
            predicted = logits > cut
            rows.append(pd.DataFrame({
                "index": batch["index"].numpy(),
                "tumor_pixels": masks.flatten(1).sum(1).numpy(),
                "predicted_pixels": predicted.flatten(1).sum(1).numpy(),
            }))
            if keep_predictions:
                predictions.append(predicted[:, 0].numpy())
    finally:
        for member, was_training in zip(members, training):
            member.train(was_training)

    pooled = {name: float(value) for name, value in overlap.compute().items()}
    distances = {name: float(value) for name, value in hausdorff.compute().items()}
    per_image_scores = {**overlap.per_image_scores(), **hausdorff.per_image_scores()}
    table = pd.concat(rows, ignore_index=True)
    records = datamodule.records.iloc[table["index"].to_numpy()]
    per_image = pd.DataFrame({
        "key": records["key"].to_numpy(),
        "patient_group": records["patient_group"].to_numpy(),
        "tumor_type": records["tumor_type"].to_numpy(),
        **{name: values.double().numpy() for name, values in per_image_scores.items()},
        "tumor_pixels": table["tumor_pixels"].to_numpy(),
        "predicted_pixels": table["predicted_pixels"].to_numpy(),
    })[list(PER_IMAGE_COLUMNS)]
    metrics: dict[str, Any] = {name: pooled[name] for name in RATIO_NAMES}
    metrics.update(hd=distances["hd"], hd95=distances["hd95"], hd_empty=int(distances["hd_empty"]))
    metrics["per_image"] = {name: pooled[f"{name}_per_image"] for name in RATIO_NAMES}
    metrics.update(
        n_images=len(per_image), part=part, data_root=str(hp.root), image_size=int(hp.image_size),
        threshold=threshold, inference_precision=precision, ensemble_size=len(members),
        hd_units="mm" if spacing is not None else "pixels of the evaluated grid",
    )
    stacked = np.concatenate(predictions) if keep_predictions else None
    return Evaluation(metrics, per_image, stacked)


def evaluate_checkpoints(
    paths: Sequence[str | Path],
    data_root: str | Path | None = None,
    part: str | None = None,
    threshold: float = 0.5,
    precision: str = "32-true",
    device: str | torch.device | None = "auto",
    batch_size: int | None = None,
    cache_dir: str | Path | None = None,
    keep_predictions: bool = False,
) -> Evaluation:
    """Evaluate checkpoint(s) on their own validation fold, or on every slice of another dataset folder.

    Without ``data_root``: the data the (first) checkpoint was trained on, ``part`` ``"val"`` by default;
    an ensemble of different folds has no common validation part. With ``data_root``: that folder, all
    slices (``part="all"``). Preprocessing always follows the checkpoint. Everything is read and checked
    before anything is computed.

    Raises:
        CheckpointError: see :func:`load_checkpoints`; members of different folds asked for ``"val"``.
        DatasetError: the dataset folder is missing, lacks masks, or has bad files.
    """
    device = resolve_device(device)
    models, data_hparams, folds = load_checkpoints(paths, map_location=device)
    data_hparams = {**data_hparams, "num_workers": 0}
    if batch_size is not None:
        data_hparams["batch_size"] = batch_size
    if cache_dir is not None:
        data_hparams["cache_dir"] = str(cache_dir)
    if data_root is None and "root" not in data_hparams:
        raise CheckpointError(f"checkpoint {paths[0]} does not record its training data: pass a dataset folder")
    if data_root is not None:
        data_hparams.update(root=str(data_root), fold=None)
        part = part or "all"
    else:
        part = part or "val"
        if part != "all" and len(set(folds)) > 1:
            raise CheckpointError(
                f"the checkpoints come from folds {folds}: they share no {part!r} part; "
                "evaluate them on a dataset folder (--data-root) or with part 'all'"
            )
    datamodule = BrainTumorDataModule(**data_hparams)
    datamodule.load()
    evaluation = evaluate(models, datamodule, part, threshold, precision, device, keep_predictions)
    evaluation.metrics["checkpoints"] = [str(path) for path in paths]
    return evaluation


# --- writing -----------------------------------------------------------------------------------------------

def write_files_atomically(out_dir: str | Path, files: Mapping[str, str | bytes]) -> Path:
    """Write ``{relative name: content}`` under ``out_dir`` so that no reader ever sees a partial file.

    A new ``out_dir`` is built under a temporary name and renamed as a whole; in an existing one each file
    is written to a temporary name and renamed over the old one.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    fresh = not out_dir.exists()
    if fresh:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    else:
        target = out_dir
    try:
        for name, content in files.items():
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(handle, "wb") as stream:
                stream.write(content.encode() if isinstance(content, str) else content)
            os.replace(temporary, path)
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
    """``metrics.json`` and ``per_image.csv`` (and ``predictions.npz`` when kept) in ``out_dir``."""
    files: dict[str, str | bytes] = {
        "metrics.json": to_json(evaluation.metrics),
        "per_image.csv": evaluation.per_image.to_csv(index=False),
    }
    if evaluation.predictions is not None:
        files["predictions.npz"] = predictions_npz(evaluation.per_image["key"], evaluation.predictions)
    return write_files_atomically(out_dir, files)


def predictions_npz(keys: Sequence[str], masks: np.ndarray) -> bytes:
    """Predicted masks, bit-packed and compressed (a few kB per fold), with their slice keys."""
    import io

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
    """The headline table: pooled and per-image ratios in percent, Hausdorff means."""
    lines = [f"{'metric':<12}{'pooled':>10}{'per image':>12}"]
    for name in RATIO_NAMES:
        lines.append(f"{name:<12}{100 * metrics[name]:>9.2f}%{100 * metrics['per_image'][name]:>11.2f}%")
    units = "mm" if metrics.get("hd_units") == "mm" else "px"
    for name in ("hd", "hd95"):
        lines.append(f"{name:<12}{'':>10}{metrics[name]:>9.2f} {units}")
    lines.append(f"{metrics.get('n_images', '?')} slices ({metrics.get('part')}), threshold "
                 f"{metrics.get('threshold')}, {metrics.get('hd_empty', 0)} with an empty prediction or mask")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate one checkpoint, or several as an ensemble (mean probability), without training.",
        epilog="Example: python scripts/evaluate.py --ckpt runs/focal_fold0/v/checkpoints/last.ckpt "
        "--data-root ../shared/data/figshare_brain_tumor --out eval/focal_fold0",
        allow_abbrev=False,
    )
    parser.add_argument("--ckpt", nargs="+", required=True, metavar="PATH",
                        help="checkpoint(s); several are averaged in probability")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="dataset folder (images/, masks/, metadata.csv); default: the checkpoint's own data, "
                        "validation fold. An ensemble of cross-validation folds has trained on every slice of its "
                        "own dataset: evaluate it on held-out data only")
    parser.add_argument("--part", default=None, choices=("val", "train", "test", "all"),
                        help="which slices; default: 'all' with --data-root, else 'val'")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes DIR/metrics.json and DIR/per_image.csv")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    parser.add_argument("--precision", default="32-true", choices=tuple(PRECISIONS),
                        help="inference precision (default 32-true)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--cache-dir", default=None, help="preprocessing cache (see data.cache_dir)")
    parser.add_argument("--save-predictions", action="store_true", help="also write predictions.npz")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    evaluation = evaluate_checkpoints(
        args.ckpt, args.data_root, args.part, args.threshold, args.precision, args.device, args.batch_size,
        args.cache_dir, keep_predictions=args.save_predictions,
    )
    out = write_evaluation(evaluation, args.out)
    written = json.loads((out / "metrics.json").read_text())  # print what was written, not a second copy
    print(format_table(written))
    print(f"wrote {out / 'metrics.json'} and {out / 'per_image.csv'}")
    return out
