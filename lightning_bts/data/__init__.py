"""Data: reading and validation, skull stripping, preprocessing cache, splits, augmentation, DataModule."""

from lightning_bts.data.datamodule import BrainTumorDataModule
from lightning_bts.data.records import DatasetError, load_records
from lightning_bts.data.splits import FoldSplit, make_split

__all__ = ["BrainTumorDataModule", "DatasetError", "FoldSplit", "load_records", "make_split"]
