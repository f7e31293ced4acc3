"""Neighbouring slices as input channels (data.neighbour_slices): which rows are neighbours, and what the data
module then feeds the network."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lightning_bts.data import BrainTumorDataModule
from lightning_bts.data.neighbours import neighbour_rows, stack_neighbours
from lightning_bts.data.records import load_records
from lightning_bts.data.scans import read_scan
from lightning_bts.evaluation.predict_files import predict_files
from lightning_bts.evaluation.predict_volumes import scan_probabilities
from lightning_bts.evaluation.predictor import Predictor, prepare_image, prepare_scan
from lightning_bts.training.checkpoints import Preprocessing


def test_neighbours_stay_inside_their_scan():
    # scans a a a | b | c c: the first and last slice of a scan, and a scan of one slice, have themselves as neighbour
    rows = neighbour_rows(pd.Series(["a", "a", "a", "b", "c", "c"]))
    assert rows.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 3], [4, 4, 5], [4, 5, 5]]


def test_a_scan_seen_again_later_is_not_joined_to_its_first_part():
    # a patient's slices under two runs of numbers (another plane): the runs are not neighbours of each other
    rows = neighbour_rows(pd.Series(["a", "b", "a"]))
    assert rows.tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]


def test_stacked_channels_are_previous_this_next():
    gray = np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1) * np.ones((3, 2, 2, 1), np.uint8)  # slice i is all i
    images = stack_neighbours(gray, pd.Series(["a", "a", "a"]))
    assert images.shape == (3, 2, 2, 3)
    assert images[:, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2]]


def test_scans_come_from_patient_id_else_patient_group(tiny_dataset: Path):
    records = load_records(tiny_dataset)
    assert records["scan"].tolist() == [f"p{group}" for group in range(6) for _ in range(3)]
    table = pd.read_csv(tiny_dataset / "metadata.csv").drop(columns="patient_id")
    table.to_csv(tiny_dataset / "metadata.csv", index=False)
    assert load_records(tiny_dataset)["scan"].tolist() == load_records(tiny_dataset)["patient_group"].tolist()


def test_data_module_feeds_the_neighbours_around_the_slice_itself(tiny_dataset: Path):
    single = BrainTumorDataModule(root=str(tiny_dataset), image_size=32, num_folds=2, num_workers=0)
    stacked = BrainTumorDataModule(root=str(tiny_dataset), image_size=32, num_folds=2, num_workers=0,
                                   neighbour_slices=True)
    single.load()
    stacked.load()
    gray = single.data.images[..., 0]
    assert np.array_equal(stacked.data.images[..., 1], gray)  # the slice itself, as without the option
    assert np.array_equal(stacked.data.images[1, ..., 0], gray[0])  # 0001's previous slice is 0000
    assert np.array_equal(stacked.data.images[1, ..., 2], gray[2])  # and its next 0002
    assert np.array_equal(stacked.data.images[2, ..., 2], gray[2])  # 0002 ends its scan: itself
    assert np.array_equal(stacked.data.masks, single.data.masks)
    batch = next(iter(stacked.val_dataloader()))
    assert batch["image"].shape[1] == 3


def test_neighbour_slices_needs_three_channels():
    with pytest.raises(ValueError, match="neighbour_slices needs in_channels 3"):
        BrainTumorDataModule(in_channels=1, neighbour_slices=True)


NEIGHBOURS = Preprocessing(32, 3, "none", neighbour_slices=True)


def test_a_scan_is_prepared_with_each_slice_between_its_neighbours():
    slices = [np.full((64, 64), value, np.uint8) for value in (10, 20, 30)]
    inputs = prepare_scan(slices, NEIGHBOURS)
    assert inputs.shape == (3, 3, 32, 32)
    assert inputs[:, :, 0, 0].tolist() == [[10, 10, 20], [10, 20, 30], [20, 30, 30]]
    # a single image is a scan of one slice: the slice in every channel, as the data module has such slices
    assert prepare_image(slices[1], NEIGHBOURS)[:, 0, 0].tolist() == [20, 20, 20]
    single = Preprocessing(32, 3, "none")
    assert np.array_equal(prepare_scan(slices, single), np.stack([prepare_image(s, single) for s in slices]))


class Recorder(nn.Module):
    """Logits of zero; keeps every batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(images.clone())
        return torch.zeros(images.shape[0], 1, *images.shape[2:])


def test_a_volume_gives_a_neighbour_model_the_slices_beside_each_slice(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    data = np.zeros((32, 32, 4), np.int16)
    for k in range(4):  # a bright square that moves from slice to slice
        data[6 * k:6 * k + 6, 4:10, k] = 1000
    image = nibabel.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0]))
    image.header.set_dim_info(slice=2)
    nibabel.save(image, tmp_path / "scan.nii.gz")
    volume = read_scan(tmp_path / "scan.nii.gz")
    recorder = Recorder()
    predictor = Predictor([recorder], NEIGHBOURS)
    scan_probabilities(predictor, volume, volume.load(), batch_size=3)  # two batches: neighbours cross them
    seen = torch.cat(recorder.batches).numpy()
    assert seen.shape == (4, 3, 32, 32)
    assert np.array_equal(seen[1:, 0], seen[:-1, 1]) and np.array_equal(seen[:-1, 2], seen[1:, 1])
    assert np.array_equal(seen[0, 0], seen[0, 1]) and np.array_equal(seen[-1, 2], seen[-1, 1])
    assert not np.array_equal(seen[0, 1], seen[1, 1])


def test_image_files_warn_that_a_neighbour_model_sees_them_alone(tmp_path):
    cv2.imwrite(str(tmp_path / "slice.png"), np.full((32, 32), 50, np.uint8))
    predictor = Predictor([Recorder()], NEIGHBOURS)
    with pytest.warns(UserWarning, match="trained on neighbouring slices"):
        predict_files(predictor, [tmp_path / "slice.png"], tmp_path / "out", progress=False)
