"""NIfTI volumes and DICOM series in, NIfTI masks out: geometry, the one intensity mapping, bad scans.

Scans are written here (nibabel, pydicom), 32x32 voxels in plane and a few slices, and predicted with the
small checkpoint of tests/data (32x32 model grid). The round trips check the mask's geometry against the scan
and its voxels against the same slices predicted as 2-D images, with the slicing done here by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_bts.data.intensity import to_uint8
from lightning_bts.evaluation import Predictor, evaluate_cli, predict_cli
from lightning_bts.training.checkpoints import CheckpointError, read_checkpoint
from tests.conftest import REPO

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

CHECKPOINT = REPO / "tests" / "data" / "pre_predictor.ckpt"
THRESHOLD = "0.03"  # this 1-epoch model is unsure everywhere: a low threshold gives masks worth comparing
# voxel axis i runs towards the patient's left, j anterior, k superior (LAS), 0.9 x 1.1 x 3 mm
AFFINE = np.array([[-0.9, 0, 0, 12.0], [0, 1.1, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])


def head(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """int16 raw values: a bright ellipse (the head) with a brighter blob, plus noise, slice by slice."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[:2]), indexing="ij"))
    data = np.zeros(shape, np.float64)
    for k in range(shape[2]):
        inside = (grid[0] / 0.8) ** 2 + (grid[1] / 0.7) ** 2 < 1
        blob = (grid[0] - 0.2 + 0.1 * k) ** 2 + (grid[1] + 0.1) ** 2 < 0.06
        data[..., k] = 400 * inside + 900 * blob + rng.normal(0, 20, shape[:2])
    return (data + 100 * np.arange(shape[2])).astype(np.int16)  # another range per slice: the min-max matters


def write_nifti(path, data: np.ndarray, affine: np.ndarray = AFFINE):
    image = nibabel.Nifti1Image(data, affine)
    image.header.set_dim_info(slice=2)
    nibabel.save(image, path)
    return path


def predict(inputs: list[str], out, *extra: str) -> int:
    return predict_cli.main(["--ckpt", str(CHECKPOINT), "--input", *inputs, "--output", str(out), "--threshold",
                             THRESHOLD, "--device", "cpu", "--quiet", *extra])


def expected_masks(slices: list[np.ndarray]) -> np.ndarray:
    """The masks of raw 2-D slices predicted as images, after the one intensity mapping."""
    predictor = Predictor.from_checkpoints([CHECKPOINT], threshold=float(THRESHOLD))
    return np.stack(predictor.segment([to_uint8(s) for s in slices]))


def test_a_nifti_mask_lies_on_the_scan_voxel_for_voxel(tmp_path):
    data = head((32, 32, 3))
    scan = write_nifti(tmp_path / "scan.nii.gz", data)
    assert predict([str(scan)], tmp_path / "out") == 0
    mask = nibabel.load(tmp_path / "out" / "masks" / "scan.nii.gz")
    assert mask.shape == data.shape and np.allclose(mask.affine, AFFINE)
    assert nibabel.aff2axcodes(mask.affine) == ("L", "A", "S") and mask.header.get_data_dtype() == np.uint8
    voxels = np.asarray(mask.dataobj)
    # axial slices in display orientation: rows run posterior (j reversed), columns to the left (i)
    expected = expected_masks([data[:, ::-1, k].T for k in range(3)])
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(voxels, np.stack([m.T[:, ::-1] for m in expected], axis=2).astype(np.uint8))
    slices = pd.read_csv(tmp_path / "out" / "predictions.csv")
    volumes = pd.read_csv(tmp_path / "out" / "volumes.csv")
    assert slices["tumour_area_mm2"].tolist() == pytest.approx((expected.sum((1, 2)) * 0.9 * 1.1).tolist())
    assert volumes.loc[0, "plane"] == "axial" and volumes.loc[0, "slices"] == 3
    assert volumes.loc[0, "tumour_volume_ml"] == pytest.approx(expected.sum() * 0.9 * 1.1 * 3.0 / 1000)


def test_another_plane_cuts_the_volume_the_other_way(tmp_path):
    data = head((32, 4, 32))  # acquired coronally: dim_info says slices along j
    image = nibabel.Nifti1Image(data, np.diag([1.0, 2.0, 1.0, 1.0]))  # RAS
    image.header.set_dim_info(slice=1)
    nibabel.save(image, tmp_path / "cor.nii")
    assert predict([str(tmp_path / "cor.nii")], tmp_path / "out") == 0
    volumes = pd.read_csv(tmp_path / "out" / "volumes.csv")
    assert volumes.loc[0, "plane"] == "coronal" and volumes.loc[0, "slices"] == 4
    voxels = np.asarray(nibabel.load(tmp_path / "out" / "masks" / "cor.nii.gz").dataobj)
    # coronal display: rows run inferior (k reversed), columns to the left (i reversed)
    expected = expected_masks([data[::-1, j, ::-1].T for j in range(4)])
    np.testing.assert_array_equal(voxels, np.stack([m.T[::-1, ::-1] for m in expected], axis=1).astype(np.uint8))


def write_dicom(path, pixels: np.ndarray, position, series: str = "1.2.3.4", orientation=(1, 0, 0, 0, 1, 0),
                spacing=(0.8, 0.7), **extra) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = extra.pop("SOPClassUID", MRImageStorage)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", series, "1.2.3"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = pixels.astype(np.int16).tobytes()
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        if spacing is not None:
            ds.PixelSpacing = [float(v) for v in spacing]
        ds.SliceThickness = 2.5
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def write_series(folder, data: np.ndarray, **extra) -> list[np.ndarray]:
    """Slices ``data[..., k]`` (rows, columns) at z = 2.5 k mm, file names in reverse order of position."""
    folder.mkdir(parents=True, exist_ok=True)
    count = data.shape[2]
    for k in range(count):
        write_dicom(folder / f"IM{count - k:04d}", data[..., k], (-10.0, -12.0, 2.5 * k), **extra)
    return [data[..., k] for k in range(count)]


def test_a_dicom_series_gets_a_mask_with_the_series_geometry(tmp_path):
    slices = write_series(tmp_path / "series", head((32, 32, 3), seed=1))
    assert predict([str(tmp_path / "series")], tmp_path / "out") == 0
    mask = nibabel.load(tmp_path / "out" / "masks" / "series.nii.gz")
    # columns (i) run along x (LPS, to the left) 0.7 mm apart, rows (j) along y (posterior) 0.8 mm, slices 2.5 mm up
    np.testing.assert_allclose(mask.affine, [[-0.7, 0, 0, 10], [0, -0.8, 0, 12], [0, 0, 2.5, 0], [0, 0, 0, 1]],
                               atol=1e-6)
    expected = expected_masks(slices)  # sorted by position, not by file name
    assert expected.any()
    np.testing.assert_array_equal(np.asarray(mask.dataobj), np.stack([m.T for m in expected], axis=2))
    volumes = pd.read_csv(tmp_path / "out" / "volumes.csv")
    assert volumes.loc[0, "tumour_volume_ml"] == pytest.approx(expected.sum() * 0.7 * 0.8 * 2.5 / 1000)


def bad_scans(tmp_path):
    """(input, text the error must hold) per bad scan."""
    cases = {}
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 8, 3, 2), np.int16), np.eye(4)), tmp_path / "4d.nii.gz")
    cases["4-D NIfTI"] = (tmp_path / "4d.nii.gz", "expected one 3-D volume")
    header = nibabel.Nifti1Header()  # an sform with a voxel size of 0 (nibabel resets a zero pixdim to 1 on reading)
    header.set_data_dtype(np.int16)
    header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 8, 3), np.int16), None, header), tmp_path / "flat.nii")
    cases["no spacing"] = (tmp_path / "flat.nii", "no usable voxel spacing")
    two = tmp_path / "two_series"
    write_series(two, np.zeros((8, 8, 2), np.int16))
    write_dicom(two / "other", np.zeros((8, 8)), (0, 0, 9), series="9.9")
    cases["two series"] = (two, "2 DICOM series")
    sizes = tmp_path / "sizes"
    write_series(sizes, np.zeros((8, 8, 2), np.int16))
    write_dicom(sizes / "big", np.zeros((8, 10)), (0, 0, 5.0))
    cases["mixed sizes"] = (sizes, "expected slices of one size")
    report = tmp_path / "report"
    write_series(report, np.zeros((8, 8, 2), np.int16))
    write_dicom(report / "sr", None, None, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11", Modality="SR")
    cases["structured report"] = (report, "without image pixels")
    write_series(tmp_path / "nospacing", np.zeros((8, 8, 2)), spacing=None)
    cases["no pixel spacing"] = (tmp_path / "nospacing", "PixelSpacing")
    return cases


def test_bad_scans_stop_with_the_file_and_what_was_expected(tmp_path):
    from lightning_bts.data.volume import VolumeError

    for name, (scan, expected) in bad_scans(tmp_path).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        with pytest.raises(VolumeError, match=expected) as caught:
            predict([str(scan)], out)
        assert str(scan) in str(caught.value), name
        assert not out.exists(), f"{name}: {sorted(out.rglob('*'))}"


def test_the_intensity_mapping_is_recorded_and_a_mismatch_is_an_error(tmp_path):
    assert Predictor.from_checkpoints([CHECKPOINT]).preprocessing.intensity == "slice_minmax"  # not recorded
    checkpoint = read_checkpoint(CHECKPOINT)
    checkpoint["datamodule_hyper_parameters"] = {**(checkpoint.get("datamodule_hyper_parameters") or {}),
                                                 "intensity": "zscore"}
    torch.save(checkpoint, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointError, match="unknown intensity 'zscore'.*slice_minmax"):
        Predictor.from_checkpoints([tmp_path / "future.ckpt"])


def test_evaluate_scores_nifti_pairs_per_slice_and_per_volume_in_mm(tmp_path):
    root = tmp_path / "volumes"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for case, seed in (("p1", 0), ("p2", 1)):
        data = head((32, 32, 3), seed)
        write_nifti(root / "images" / f"{case}.nii.gz", data)
        write_nifti(root / "masks" / f"{case}.nii.gz", (data > 1000).astype(np.uint8))
    out = evaluate_cli.main(["--ckpt", str(CHECKPOINT), "--data-root", str(root), "--out", str(tmp_path / "eval"),
                             "--threshold", THRESHOLD, "--device", "cpu", "--bootstrap", "20"])
    metrics = json.loads((out / "metrics.json").read_text())
    per_image = pd.read_csv(out / "per_image.csv")
    per_volume = pd.read_csv(out / "per_volume.csv")
    assert metrics["n_images"] == 6 and metrics["hd_units"] == "mm" and metrics["per_volume"]["n_volumes"] == 2
    assert sorted(set(per_image["patient_group"])) == ["p1", "p2"] and "2 patients" in metrics["ci_method"]
    assert per_volume["case"].tolist() == ["p1", "p2"] and 0 <= metrics["per_volume"]["dice"] <= 1
    assert per_volume["tp"].sum() == per_image["tp"].sum()  # the same voxels, counted per slice and per volume
