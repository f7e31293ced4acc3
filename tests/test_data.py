"""The DataModule on real sample slices and on bad input."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_bts.data import BrainTumorDataModule, DatasetError
from lightning_bts.data.dataset import SliceDataset
from lightning_bts.data.transforms import seed_augmentation_worker, train_augmentation
from lightning_bts.train import train
from tests.conftest import SAMPLE_ROOT, write_dataset


def test_batches_have_the_contract_shapes_and_types():
    dm = BrainTumorDataModule(SAMPLE_ROOT, image_size=64, num_workers=0, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.uint8
    assert batch["mask"].shape == (4, 1, 64, 64) and set(batch["mask"].unique().tolist()) <= {0, 1}
    assert len(dm.indices("train")) + len(dm.indices("val")) == len(dm.records)


def test_grayscale_input_gives_one_channel():
    dm = BrainTumorDataModule(SAMPLE_ROOT, image_size=32, in_channels=1, num_workers=0)
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))["image"].shape[1] == 1


def test_rgb_sources_keep_their_colours(tmp_path):
    root = write_dataset(tmp_path / "rgb", groups=5, slices_per_group=1, size=32)
    image_path = root / "images" / "0000.png"
    gray = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(image_path), np.stack([gray, gray // 2, np.zeros_like(gray)], axis=-1))  # BGR on disk
    dm = BrainTumorDataModule(str(root), image_size=32, skull_strip="none", num_workers=0, fold=None)
    dm.load()
    row = int(np.flatnonzero(dm.records.key == "0000")[0])
    image = dm.data.images[row]
    assert image.shape == (32, 32, 3) and image[..., 0].max() == 0 and image[..., 2].max() == gray.max()


def test_masks_are_only_resized_never_stripped():
    dm = BrainTumorDataModule(SAMPLE_ROOT, image_size=256, skull_strip="paper", num_workers=0, fold=None)
    dm.load()
    for row in range(0, len(dm.records), 17):
        original = cv2.imread(dm.records.mask_path[row], cv2.IMREAD_GRAYSCALE) > 0
        np.testing.assert_array_equal(dm.data.masks[row].astype(bool), original)


def test_augmentation_moves_mask_with_image():
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 1
    image = (mask * 200 + 20)[..., None].astype(np.uint8)
    augment = train_augmentation(2.0)
    for _ in range(20):
        out = augment(image=image, mask=mask)
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1}
        bright = out["image"].reshape(64, 64) > 110
        agreement = (bright == out["mask"].astype(bool)).mean()
        assert agreement > 0.97, f"mask and image disagree on {1 - agreement:.1%} of pixels"


def test_augmentation_repeats_with_the_seed_and_differs_between_loader_workers():
    def first_batches(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)  # what seed_everything does for the augmentation's seed
        dm = BrainTumorDataModule(SAMPLE_ROOT, image_size=32, num_workers=2, batch_size=4, augment=2.0)
        dm.setup("fit")
        batches = iter(dm.train_dataloader())
        return [next(batches)["image"] for _ in range(4)]

    first, again, other = first_batches(1), first_batches(1), first_batches(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))

    # one slice repeated: batch 0 comes from worker 0, batch 1 from worker 1; the same draws would give equal batches
    dm = BrainTumorDataModule(SAMPLE_ROOT, image_size=32, num_workers=0, fold=None)
    dm.load()
    dataset = SliceDataset(dm.data, [0] * 8, train_augmentation(2.0, seed=0))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, worker_init_fn=seed_augmentation_worker)
    from_worker0, from_worker1 = (batch["image"] for batch in loader)
    assert not torch.equal(from_worker0, from_worker1)


def test_no_augmentation_at_strength_zero_and_negative_rejected():
    assert train_augmentation(0.0) is None
    with pytest.raises(ValueError):
        train_augmentation(-1.0)


def test_preprocessing_is_cached_on_disk_and_reused(tmp_path):
    kwargs = dict(image_size=32, num_workers=0, cache_dir=str(tmp_path / "cache"))
    first = BrainTumorDataModule(SAMPLE_ROOT, **kwargs)
    first.load()
    (cached,) = (tmp_path / "cache").iterdir()
    second = BrainTumorDataModule(SAMPLE_ROOT, **kwargs)
    second.load()
    np.testing.assert_array_equal(first.data.images, second.data.images)
    assert list((tmp_path / "cache").iterdir()) == [cached]


def test_several_loader_workers_give_the_same_validation_data():
    batches = []
    for workers in (0, 2):
        dm = BrainTumorDataModule(SAMPLE_ROOT, image_size=32, num_workers=workers, batch_size=8)
        dm.setup("validate")
        batches.append(torch.cat([b["image"] for b in dm.val_dataloader()]))
    torch.testing.assert_close(batches[0], batches[1])


def test_plain_paired_folders_work_with_a_leakage_warning(tmp_path):
    root = write_dataset(tmp_path / "plain", groups=5, slices_per_group=2, size=32)
    (root / "metadata.csv").unlink()
    dm = BrainTumorDataModule(str(root), image_size=32, num_workers=0)
    with pytest.warns(UserWarning, match="own patient group"):
        dm.setup("fit")
    assert dm.records.patient_group.nunique() == 10


# ---- bad input: an error naming the file or value, and nothing written ----


def corrupt(root: Path, case: str) -> str:
    """Break ``root`` in one way; return a fragment the error message must contain."""
    if case == "unreadable image":
        (root / "images" / "0001.png").write_bytes(b"not a png")
        return "0001.png"
    if case == "missing mask":
        (root / "masks" / "0002.png").unlink()
        return "0002.png"
    if case == "size mismatch":
        cv2.imwrite(str(root / "masks" / "0100.png"), np.zeros((32, 48), np.uint8))
        return "0100.png"
    if case == "non-binary mask":
        cv2.imwrite(str(root / "masks" / "0200.png"), np.full((64, 64), 128, np.uint8))
        return "not binary"
    if case == "empty dataset":
        table = pd.read_csv(root / "metadata.csv")
        table.iloc[:0].to_csv(root / "metadata.csv", index=False)
        return "holds no slices"
    if case == "no metadata columns":
        pd.read_csv(root / "metadata.csv").drop(columns="patient_group").to_csv(root / "metadata.csv", index=False)
        return "patient_group"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["unreadable image", "missing mask", "size mismatch", "non-binary mask", "empty dataset", "no metadata columns"],
)
def test_bad_dataset_fails_clearly_and_writes_nothing(tmp_path, case):
    root = write_dataset(tmp_path / "data")
    expected = corrupt(root, case)
    out = tmp_path / "runs"
    with pytest.raises(DatasetError, match=expected.replace(".", r"\.")):
        train(["--data.root", str(root), "--data.image_size", "64", "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data.fold", "7"], "fold 7 is out of range"),
        (["--data.num_folds", "8", "--data.fold", "0"], "needs at least 8 patient groups"),
        (["--data.root", "/nonexistent/data"], "does not exist"),
    ],
)
def test_bad_fold_or_root_fails_clearly_and_writes_nothing(tiny_dataset, tmp_path, args, message):
    out = tmp_path / "runs"
    base = ["--data.root", str(tiny_dataset), "--data.image_size", "64", "--output_dir", str(out)]
    with pytest.raises(DatasetError, match=message):
        train(base + args)
    assert not out.exists()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"image_size": 100}, "multiple of 16"),
        ({"in_channels": 2}, "in_channels"),
        ({"skull_strip": "magic"}, "skull_strip"),
    ],
)
def test_bad_settings_are_rejected_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BrainTumorDataModule(SAMPLE_ROOT, **kwargs)
