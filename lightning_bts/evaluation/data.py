"""Which slices an evaluation scores, and each slice at both resolutions.

A checkpoint records the data it was trained on (``datamodule_hyper_parameters``: folder, fold, split seed,
test fraction), so its own ``val``, ``train`` or held-out ``test`` part is recomputed from those settings and
checked against the ``splits.json`` its run wrote (``<run>/splits.json`` beside ``<run>/checkpoints/``): a
dataset that changed since training stops here instead of mixing training slices into validation. Another
dataset folder is scored whole (part ``all``).

:func:`iterate_slices` yields every slice of a part with the model's probabilities at the model's grid, the
mask at that grid (as training saw it) and the original mask file at the scan's own size.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import DataLoader

from lightning_bts.data import BrainTumorDataModule, DatasetError
from lightning_bts.data.dataset import SliceDataset
from lightning_bts.errors import ConfigError
from lightning_bts.evaluation.predictor import Predictor
from lightning_bts.training.checkpoints import CheckpointError, CheckpointInfo

PARTS = ("val", "train", "test", "all")
SPLIT_KEYS = ("root", "num_folds", "seed", "test_fraction")  # what makes two checkpoints' test parts the same


@dataclass(frozen=True)
class ScoredSlice:
    """One slice: its row in the data module's records, the probability maps of each TTA mode asked for at the
    model's grid ``(S, S)``, the mask at that grid and the original mask ``(H, W)`` (bool)."""

    index: int
    probabilities: tuple[np.ndarray, ...]
    grid_mask: np.ndarray
    mask: np.ndarray


def evaluation_data(
    infos: Sequence[CheckpointInfo],
    data_root: str | Path | None = None,
    part: str | None = None,
    batch_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[BrainTumorDataModule, str]:
    """A loaded data module for the checkpoints ``infos`` and the part to score.

    Without ``data_root``: the data the (first) checkpoint was trained on, ``part`` ``"val"`` by default;
    members of different folds share only the held-out ``"test"`` part (and ``"all"``). With ``data_root``:
    that folder, every slice (``part`` must be ``"all"``). Preprocessing always follows the checkpoint.

    Raises:
        ConfigError: an unknown part, or a part other than ``"all"`` with ``data_root``.
        CheckpointError: no recorded data and no ``data_root``; members without a common ``part``; no test part;
            a split that differs from the run's ``splits.json``.
        DatasetError: the part is empty, the folder is missing or has bad files.
    """
    if part is not None and part not in PARTS:
        raise ConfigError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    settings = {**infos[0].data, **infos[0].preprocessing.as_dict(), "num_workers": 0}
    if batch_size is not None:
        settings["batch_size"] = batch_size
    if cache_dir is not None:
        settings["cache_dir"] = str(cache_dir)
    if data_root is not None:
        part = part or "all"
        if part != "all":
            raise ConfigError(f"--part {part} needs the checkpoint's own data and split; a folder given with "
                               "--data-root is scored whole (--part all)")
        settings.update(root=str(data_root), fold=None)
    else:
        part = part or "val"
        if "root" not in settings:
            raise CheckpointError(f"checkpoint {infos[0].path} does not record its training data: pass a dataset "
                                  "folder (--data-root)")
        _check_common_part(infos, part)
    datamodule = BrainTumorDataModule(**_known_settings(settings, infos[0].path))
    datamodule.load()
    if part == "test" and not (datamodule.split and datamodule.split.test):
        raise CheckpointError(f"checkpoint {infos[0].path} was trained without a held-out test part "
                           "(data.test_fraction 0): train with --data.test_fraction 0.2, or score another dataset "
                           "folder with --data-root")
    if len(datamodule.indices(part)) == 0:
        raise DatasetError(f"{datamodule.hparams.root}: the {part!r} part holds no slices")
    if part != "all":
        check_recorded_splits(infos, datamodule, part)
    return datamodule, part


def check_recorded_splits(infos: Sequence[CheckpointInfo], datamodule: BrainTumorDataModule, part: str) -> None:
    """The recomputed ``part`` equals the one each checkpoint's run wrote to ``splits.json`` (where present).

    Raises:
        CheckpointError: they differ (the dataset or the split code changed since training).
    """
    for info in infos:
        recorded_path = info.path.parent.parent / "splits.json"
        if not recorded_path.is_file() or (part != "test" and info.data.get("fold") != datamodule.split.fold):
            continue
        recorded = set(json.loads(recorded_path.read_text()).get(part, []))
        now = set(getattr(datamodule.split, part))
        if recorded != now:
            raise CheckpointError(
                f"the {part!r} part recomputed from checkpoint {info.path}'s data settings differs from its run's "
                f"{recorded_path} ({len(recorded ^ now)} slice(s) differ): the dataset changed since training, so "
                "training slices could be scored; score another folder with --data-root instead"
            )


def read_original_mask(path: str | Path) -> np.ndarray:
    """bool ``(H, W)``: a mask file at its own size (0 = background, anything else = tumour)."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"cannot read mask {path}: not an image file OpenCV can decode")
    return mask > 0


def iterate_slices(
    predictor: Predictor, datamodule: BrainTumorDataModule, part: str, modes: Sequence[str] | None = None
) -> Iterator[ScoredSlice]:
    """Every slice of ``part`` in batches: the predictor's probabilities under each TTA mode of ``modes`` (default:
    its own), the grid mask and the original mask."""
    indices = datamodule.indices(part)
    loader = DataLoader(SliceDataset(datamodule.data, indices), batch_size=datamodule.hparams.batch_size)
    mask_paths = datamodule.records["mask_path"].to_numpy()
    for batch in loader:
        maps = predictor.mode_probabilities(batch["image"], modes or (predictor.tta,))
        grid_masks = batch["mask"][:, 0].numpy() > 0
        for row, index in enumerate(batch["index"].tolist()):
            original = read_original_mask(mask_paths[index])
            yield ScoredSlice(index, tuple(m[row] for m in maps), grid_masks[row], original)


def _check_common_part(infos: Sequence[CheckpointInfo], part: str) -> None:
    folds = [info.data.get("fold") for info in infos]
    if part in ("val", "train"):
        if folds[0] is None:
            raise CheckpointError(f"checkpoint {infos[0].path} records no training fold: it has no {part!r} part; "
                                  "score a dataset folder with --data-root")
        if len(set(folds)) > 1:
            raise CheckpointError(f"the checkpoints come from folds {folds}: they share no {part!r} part; evaluate "
                                  "them on the held-out test part (--part test), on a dataset folder (--data-root) "
                                  "or with part 'all'")
    if part == "test":
        splits = {tuple(info.data.get(key) for key in SPLIT_KEYS) for info in infos}
        if len(splits) > 1:
            raise CheckpointError(f"the checkpoints were split differently ({', '.join(SPLIT_KEYS)}: "
                                  f"{sorted(map(str, splits))}): they share no held-out test part")


def _known_settings(settings: dict, path: Path) -> dict:
    """The settings this version's :class:`BrainTumorDataModule` accepts; others are dropped with a warning."""
    accepted = set(inspect.signature(BrainTumorDataModule.__init__).parameters) - {"self"}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        warnings.warn(f"checkpoint {path}: data settings {unknown} are unknown to this version and ignored",
                      stacklevel=3)
    return {key: value for key, value in settings.items() if key in accepted}
