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
from lightning_bts.data.transforms import AUGMENTATIONS, seed_augmentation_worker, train_augmentation
from lightning_bts.errors import ConfigError
from lightning_bts.training.config import parse_config
from lightning_bts.training.train import train
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
    assert train_augmentation(1.0, probabilities={"rotate": 0.0}) is None
    with pytest.raises(ValueError):
        train_augmentation(-1.0)


def tumour_slice(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2 + 5, size // 2 - 3), size // 6, 1, -1)
    image = np.repeat((mask * 150 + 40 + np.arange(size, dtype=np.uint8)[None, :] // 4)[..., None], 3, axis=2)
    return image.astype(np.uint8), mask


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_changes_the_slice_keeps_the_mask_binary_and_aligned(name):
    image, mask = tumour_slice()
    augment = train_augmentation(2.0, seed=3, probabilities={name: 1.0})
    geometric = name in ("flip", "vertical_flip", "affine", "rotate", "scale", "grid")
    for _ in range(5):
        out = augment(image=image, mask=mask)
        assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1} and out["mask"].any()
        assert not np.array_equal(out["image"], image), f"{name} left the image unchanged"
        if not geometric:
            np.testing.assert_array_equal(out["mask"], mask)  # intensity transforms never touch the mask
        else:  # the mask still covers the bright tumour in the moved image
            bright = out["image"][..., 0] > 150
            assert (bright == out["mask"].astype(bool)).mean() > 0.95


def test_augmentation_probabilities_apply_and_repeat_with_the_seed():
    image, mask = tumour_slice()
    probabilities = {"rotate": 0.3, "scale": 0.3, "grid": 0.2, "gamma": 0.3, "noise": 0.2, "blur": 0.2,
                     "brightness_contrast": 0.3, "flip": 0.5}

    def outputs(seed: int) -> list[np.ndarray]:
        augment = train_augmentation(1.0, seed=seed, probabilities=probabilities)
        return [augment(image=image, mask=mask)["image"] for _ in range(30)]

    first, again, other = outputs(1), outputs(1), outputs(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    unchanged = sum(np.array_equal(out, image) for out in first)
    assert 0 < unchanged < 30  # p < 1 for each: some slices pass untouched (all skipped: ~0.05), most do not
    rare = train_augmentation(1.0, seed=1, probabilities={"rotate": 0.1})
    assert sum(np.array_equal(rare(image=image, mask=mask)["image"], image) for _ in range(100)) > 75


def test_default_pipeline_is_the_one_before_the_augmentation_option():
    """Same seed, same draws as the pipeline every earlier run trained with (flip, affine, brightness/contrast)."""
    import albumentations as A

    before = A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10), interpolation=cv2.INTER_LINEAR,
                 mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
    ], seed=7)
    now = train_augmentation(1.0, seed=7)
    image, mask = tumour_slice()
    for _ in range(10):
        a, b = before(image=image, mask=mask), now(image=image, mask=mask)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])


def test_datamodule_uses_the_configured_augmentation_and_refuses_unknown_names():
    torch.manual_seed(0)
    dm = BrainTumorDataModule(SAMPLE_ROOT, image_size=32, num_workers=0, batch_size=4,
                              augmentation={"grid": 1.0, "gamma": 0.5})
    dm.setup("fit")
    loader = dm.train_dataloader()
    names = [type(t).__name__ for t in loader.dataset.augmentation.transforms]
    assert names == ["GridDistortion", "RandomGamma"]
    assert set(next(iter(loader))["mask"].unique().tolist()) <= {0, 1}
    with pytest.raises(ConfigError, match="elastic.*choose from.*grid"):
        BrainTumorDataModule(SAMPLE_ROOT, augmentation={"elastic": 0.2})
    with pytest.raises(ConfigError, match="data.augmentation.rotate"):
        BrainTumorDataModule(SAMPLE_ROOT, augmentation={"rotate": 1.5})
    with pytest.raises(ConfigError, match="data.augment"):
        BrainTumorDataModule(SAMPLE_ROOT, augment=-1)


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
        train(parse_config(["--data.root", str(root), "--data.image_size", "64", "--output_dir", str(out)]))
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
        train(parse_config(base + args))
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
