"""lightning_bts: brain-tumour segmentation in MRI with PyTorch Lightning."""

import os

# albumentations asks PyPI for its newest version whenever it is imported: without internet access (an offline
# cluster, a hospital network, the H200 this was seen on) every command printed a warning nobody could act on,
# and elsewhere each run sent a request nobody asked for. NO_ALBUMENTATIONS_UPDATE=0 brings the check back.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
