"""The LightningDataModule: one dataset folder, one fold of a patient-level split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_bts.data.dataset import SliceDataset
from lightning_bts.data.intensity import DEFAULT_INTENSITY, INTENSITY_MAPPINGS
from lightning_bts.data.neighbours import stack_neighbours
from lightning_bts.data.preprocess import PreprocessedSlices, preprocess_dataset
from lightning_bts.data.records import DatasetError, load_records
from lightning_bts.data.skull_strip import SKULL_STRIP_METHODS
from lightning_bts.data.splits import FoldSplit, make_split
from lightning_bts.data.transforms import check_probabilities, seed_augmentation_worker, train_augmentation
from lightning_bts.errors import ConfigError

DEFAULT_ROOT = "data/sample"


class BrainTumorDataModule(pl.LightningDataModule):
    """Brain-MRI slices and tumour masks, split by patient group.

    Args:
        root: dataset folder (``images/``, ``masks/``, ``metadata.csv``; see :mod:`lightning_bts.data.records`).
        image_size: square side every slice is resized to; a multiple of 16 for the 4-level U-Net.
        in_channels: 1 (grayscale) or 3 (grayscale repeated, or RGB sources; the paper used 3).
        skull_strip: ``"safe"`` (default: keeps tumours at the skull base), ``"paper"`` (as published; drops
            tumour pixels on some slices) or ``"none"``. Applied to images only; masks are never altered.
        num_folds, fold, seed: ``fold`` of a seeded ``num_folds``-fold split grouped by ``patient_group`` and
            stratified by tumour type. ``fold=None`` puts every slice in the evaluation set (no training).
        test_fraction: share of patient groups held out as a test set shared by all folds (0 = none).
        batch_size: the paper used 16.
        num_workers: loader processes; 0 loads in the main process.
        augment: augmentation strength for training (0 = off); see :mod:`lightning_bts.data.transforms`.
        cache_dir: where preprocessed arrays are cached across runs (``None``: memory only).
        augmentation: which training transforms run and their probabilities, e.g. ``{"flip": 0.5,
            "rotate": 0.3, "grid": 0.2, "gamma": 0.3}`` (names: :data:`~lightning_bts.data.transforms.AUGMENTATIONS`);
            ``None``: the default pipeline (flip, mild affine, brightness/contrast, each at 0.5).
        intensity: how the dataset's 8-bit slices were made from the scanner's values
            (:mod:`lightning_bts.data.intensity`; the figshare converter's ``slice_minmax``). The slices are
            read as they are; the setting is recorded in checkpoints so that prediction on NIfTI/DICOM volumes
            maps their slices the same way.
        neighbour_slices: the three input channels hold the slice before, the slice and the slice after it in
            its scan instead of the slice three times (:mod:`lightning_bts.data.neighbours`); needs
            ``in_channels`` 3 and grayscale slices.
    """

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        image_size: int = 256,
        in_channels: int = 3,
        skull_strip: str = "safe",
        num_folds: int = 5,
        fold: int | None = 0,
        seed: int = 42,
        test_fraction: float = 0.0,
        batch_size: int = 16,
        num_workers: int = 2,
        augment: float = 1.0,
        cache_dir: str | None = None,
        augmentation: dict[str, float] | None = None,
        intensity: str = DEFAULT_INTENSITY,
        neighbour_slices: bool = False,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if neighbour_slices and in_channels != 3:
            raise ValueError(f"neighbour_slices needs in_channels 3 (previous, this, next slice), got {in_channels}")
        if image_size < 16 or image_size % 16:
            raise ValueError(f"image_size must be a positive multiple of 16 (2**depth), got {image_size}")
        if skull_strip not in SKULL_STRIP_METHODS:
            raise ValueError(f"unknown skull_strip {skull_strip!r}; choose one of {', '.join(SKULL_STRIP_METHODS)}")
        if intensity not in INTENSITY_MAPPINGS:
            raise ValueError(f"unknown intensity {intensity!r}; choose one of {', '.join(INTENSITY_MAPPINGS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if augment < 0:
            raise ConfigError(f"data.augment: augmentation strength must be >= 0, got {augment}")
        if augmentation is not None:
            check_probabilities(augmentation)
        self.save_hyperparameters()
        self.records: pd.DataFrame | None = None
        self.data: PreprocessedSlices | None = None
        self.split: FoldSplit | None = None

    def load(self) -> None:
        """Read, validate, split and preprocess, once. Safe to call before the Trainer writes anything."""
        if self.data is not None:
            return
        hp = self.hparams
        records = load_records(hp.root)
        split = make_split(records, hp.num_folds, hp.fold, hp.seed, hp.test_fraction) if hp.fold is not None else None
        rgb = hp.in_channels == 3 and not hp.neighbour_slices
        data = preprocess_dataset(records, hp.image_size, hp.skull_strip, rgb, hp.cache_dir)
        if hp.neighbour_slices:
            data = PreprocessedSlices(stack_neighbours(data.images, records["scan"]), data.masks)
        self.records, self.split, self.data = records, split, data

    def setup(self, stage: str | None = None) -> None:
        self.load()
        if stage == "fit" and self.split is None:
            raise DatasetError("training needs a fold: set data.fold to 0..num_folds-1 (fold=None is evaluation only)")
        log_dir = getattr(self.trainer, "log_dir", None) if self.trainer is not None else None
        if self.split is not None and log_dir and stage == "fit" and self.trainer.is_global_zero:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.split.to_json(Path(log_dir) / "splits.json")

    def indices(self, part: str) -> np.ndarray:
        """Row indices (into :attr:`records`) of ``"train"``, ``"val"``, ``"test"`` or ``"all"``."""
        self.load()
        if part == "all":
            return np.arange(len(self.records))
        if self.split is None:
            raise DatasetError(f"no {part!r} split with fold=None; use part='all'")
        keys = set(getattr(self.split, part))
        return np.flatnonzero(self.records["key"].isin(keys).to_numpy())

    def _loader(self, part: str, train: bool = False) -> DataLoader:
        hp = self.hparams
        augmentation = None
        if train:  # seeded from torch's generator, which seed_everything set (see data/transforms.py)
            augmentation = train_augmentation(hp.augment, seed=int(torch.randint(2**31, ()).item()),
                                              probabilities=hp.get("augmentation"))
        dataset = SliceDataset(self.data, self.indices(part), augmentation)
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > hp.batch_size,  # fixed shapes (XLA) and no size-1 batches
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            worker_init_fn=seed_augmentation_worker if augmentation is not None else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val" if self.split is not None else "all")

    def test_dataloader(self) -> DataLoader:
        if self.split is None or not self.split.test:
            raise DatasetError("no test split: set data.test_fraction > 0 (or evaluate a dataset with fold=None)")
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("all")
