"""Data: reading and validation, skull stripping, preprocessing cache, splits, augmentation, DataModule; the
intensity mapping (``intensity``) and 3-D scans as slices (``volume``, ``nifti``, ``dicom``, ``scans``; nibabel and
pydicom are imported only when a scan is read)."""

from lightning_bts.data.datamodule import BrainTumorDataModule
from lightning_bts.data.records import DatasetError, load_records
from lightning_bts.data.splits import FoldSplit, make_split

__all__ = ["BrainTumorDataModule", "DatasetError", "FoldSplit", "load_records", "make_split"]
