"""Here, from the repository root: the shared set as the toolkit preprocesses it at 128x128, as PNGs for the device.

The 512x512 PNGs (198 MB) are too large for a call of the device tool (64 MiB), so the slices travel already
skull-stripped (``safe``) and resized, one gray channel (the model's three are copies). Reading them back with
``skull_strip=none`` must give the very arrays a training here starts from: checked at the end.
"""
import shutil
from pathlib import Path

import cv2
import numpy as np

from lightning_bts.data.preprocess import preprocess_dataset
from lightning_bts.data.records import load_records

source = Path("../shared/data/figshare_brain_tumor")
target = Path(".devdata/figshare128")
(target / "images").mkdir(parents=True, exist_ok=True)
(target / "masks").mkdir(parents=True, exist_ok=True)
records = load_records(source)
data = preprocess_dataset(records, 128, "safe", rgb=True)
assert (data.images == data.images[..., :1]).all(), "expected three equal channels"
shutil.copy(source / "metadata.csv", target / "metadata.csv")
for i, (image, mask) in enumerate(zip(records.image_path, records.mask_path)):
    png = [cv2.IMWRITE_PNG_COMPRESSION, 9]
    cv2.imwrite(str(target / Path(image).relative_to(source)), data.images[i, ..., 0], png)
    cv2.imwrite(str(target / Path(mask).relative_to(source)), (data.masks[i] * 255).astype(np.uint8), png)

copy = preprocess_dataset(load_records(target), 128, "none", rgb=True)
assert np.array_equal(data.images, copy.images) and np.array_equal(data.masks, copy.masks), "the copy differs"
print(f"{len(records)} slices in {target}; read back with skull_strip=none they equal safe@128 bit for bit")
