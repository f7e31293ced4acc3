"""A map-style dataset over preprocessed slices."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_bts.data.preprocess import PreprocessedSlices


class SliceDataset(Dataset):
    """Items ``{"image": uint8 (C, S, S), "mask": uint8 (1, S, S) in {0, 1}, "index": int}``.

    Images stay uint8 until they reach the model (which scales by 1/255 as the Keras original does), so
    batches are four times smaller to move to an accelerator. Channels were set in preprocessing.
    """

    def __init__(
        self,
        data: PreprocessedSlices,
        indices: Sequence[int],
        augmentation: A.Compose | None = None,
    ) -> None:
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | int]:
        index = int(self.indices[item])
        image, mask = self.data.images[index], self.data.masks[index]
        if self.augmentation is not None:
            out = self.augmentation(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
            image = image.reshape(*mask.shape, -1)  # albumentations may drop a singleton channel
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        mask = torch.from_numpy(np.ascontiguousarray(mask))[None]
        return {"image": image.contiguous(), "mask": mask, "index": index}
