"""lightning_bts: brain-tumour segmentation in MRI with PyTorch Lightning."""

__version__ = "0.1.0"
