"""Converting the figshare release: small MATLAB v7.3 look-alikes written with h5py, converted from a folder,
from zip parts and from the "download all" zip; bad input; atomic output; the CLI; a faked download."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest

from lightning_bts.data.figshare import FigshareError, convert, patient_group, to_uint8
from lightning_bts.data.figshare import fetch as figshare
from lightning_bts.data.figshare.release import CVIND_FILE

SHARED_COLUMNS = (
    "slice_id,image,mask,patient_id,patient_group,label,tumor_type,height,width,tumor_pixels,tumor_fraction,orig_cv_fold"
).split(",")

# slice number -> (patient ID, label, (height, width)); shapes are non-square so a missed transpose shows.
SLICES = {
    1: ("100360", 1, (6, 4)),
    2: ("100360", 1, (6, 4)),
    3: ("MR024780B", 2, (5, 7)),
    4: ("MR024780", 2, (5, 7)),
    5: ("108931", 3, (3, 3)),
}
FOLDS = [5, 5, 1, 2, 3]


def slice_image(slice_id: int, shape: tuple[int, int]) -> np.ndarray:
    """A ramp with negative values, different per slice: every pixel distinct, so orientation is checkable."""
    return (np.arange(shape[0] * shape[1]).reshape(shape) * 7 * slice_id - 30).astype(np.int16)


def slice_mask(shape: tuple[int, int]) -> np.ndarray:
    """An L shape in the top-left corner (asymmetric under transposition)."""
    mask = np.zeros(shape, bool)
    mask[0, :3] = True
    mask[1, 0] = True
    return mask


def write_mat(path: Path, image: np.ndarray, mask: np.ndarray, pid: str, label: int) -> None:
    """Like MATLAB's ``save -v7.3``: HDF5 after a 512-byte header, arrays stored transposed, char as uint16."""
    fields = {
        "image": (image.T, "int16"),
        "tumorMask": (mask.T.astype(np.uint8), "logical"),
        "label": (np.array([[float(label)]]), "double"),
        "PID": (np.array([[ord(c)] for c in pid], np.uint16), "char"),  # 1xN char -> (N, 1)
        "tumorBorder": (np.array([[1.0, 2.0, 2.0, 1.0]]), "double"),
    }
    with h5py.File(path, "w", userblock_size=512) as mat:
        group = mat.create_group("cjdata")
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        for name, (data, matlab_class) in fields.items():
            group.create_dataset(name, data=data).attrs["MATLAB_class"] = np.bytes_(matlab_class)
    with path.open("r+b") as file:
        file.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 1 00:00:00 2015 HDF5 schema 1.00 .")


def write_cvind(path: Path, folds: list[int]) -> None:
    with h5py.File(path, "w", userblock_size=512) as mat:
        mat.create_dataset("cvind", data=np.array([folds], float))  # Nx1 double -> (1, N)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A folder with 1.mat ... 5.mat and cvind.mat."""
    folder = tmp_path / "release"
    folder.mkdir()
    for slice_id, (pid, label, shape) in SLICES.items():
        write_mat(folder / f"{slice_id}.mat", slice_image(slice_id, shape), slice_mask(shape), pid, label)
    write_cvind(folder / "cvind.mat", FOLDS)
    return folder


def zip_files(path: Path, files: list[Path]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, file.name)
    return path


def read_png(path: Path) -> np.ndarray:
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert pixels is not None and pixels.dtype == np.uint8 and pixels.ndim == 2, path
    return pixels


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_converts_a_folder_of_mat_files(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "dataset"
    table = convert([release], out)

    assert leftovers(out) == ["README.md", "images", "masks", "metadata.csv"]
    assert leftovers(out.parent) == ["dataset"]  # no temporary folder left beside it
    assert (out / "metadata.csv").read_text().splitlines()[0].split(",") == SHARED_COLUMNS
    meta = pd.read_csv(out / "metadata.csv", dtype=str)
    pd.testing.assert_frame_equal(meta, table.astype(str))
    assert meta.slice_id.tolist() == ["1", "2", "3", "4", "5"]
    assert meta.image.tolist()[2] == "images/0003.png" and meta["mask"].tolist()[2] == "masks/0003.png"
    assert meta.patient_id.tolist() == ["100360", "100360", "MR024780B", "MR024780", "108931"]
    assert meta.patient_group.tolist() == ["100360", "100360", "MR024780", "MR024780", "108931"]
    assert meta.label.tolist() == ["1", "1", "2", "2", "3"]
    assert meta.tumor_type.tolist() == ["meningioma", "meningioma", "glioma", "glioma", "pituitary"]
    assert meta.orig_cv_fold.tolist() == [str(f) for f in FOLDS]
    assert meta.height.tolist()[0] == "6" and meta.width.tolist()[0] == "4"
    assert meta.tumor_pixels.tolist()[0] == "4" and meta.tumor_fraction.tolist()[0] == f"{4 / 24:.6f}"

    for slice_id, (_, _, shape) in SLICES.items():
        image = read_png(out / f"images/{slice_id:04d}.png")
        mask = read_png(out / f"masks/{slice_id:04d}.png")
        ramp = np.arange(shape[0] * shape[1]).reshape(shape)  # the stored image is this ramp, rescaled
        assert image.shape == shape and mask.shape == shape  # transposed back to MATLAB orientation
        np.testing.assert_array_equal(image, np.floor(ramp * 255 / ramp.max()).astype(np.uint8))
        assert image.min() == 0 and image.max() == 255
        np.testing.assert_array_equal(mask, slice_mask(shape) * 255)
        assert set(np.unique(mask).tolist()) == {0, 255}

    readme = (out / "README.md").read_text()
    assert "e0140381" in readme and "e0157112" in readme and "CC BY 4.0" in readme
    assert "| slices | 2 | 2 | 1 | 5 |" in readme


def test_zip_parts_and_the_download_all_zip_give_the_same_dataset(release: Path, tmp_path: Path) -> None:
    mats = sorted(release.glob("[0-9]*.mat"))
    part_a = zip_files(tmp_path / "brainTumorDataPublic_1-3.zip", mats[:3])
    part_b = zip_files(tmp_path / "brainTumorDataPublic_4-5.zip", mats[3:])
    cvind = release / "cvind.mat"
    everything = tmp_path / "all"
    everything.mkdir()
    zip_files(everything / "1512427.zip", [part_a, part_b, cvind])

    reference = convert([release], tmp_path / "from_folder")
    for name, sources in {"from_zips": [part_a, part_b, cvind], "from_all": [everything / "1512427.zip"]}.items():
        table = convert(sources, tmp_path / name)
        pd.testing.assert_frame_equal(table, reference)
        for relative in [*table.image, *table["mask"]]:
            assert (tmp_path / name / relative).read_bytes() == (tmp_path / "from_folder" / relative).read_bytes()
        assert leftovers(tmp_path / name) == ["README.md", "images", "masks", "metadata.csv"]  # no scratch zips


def test_cvind_saved_in_the_older_mat_format_is_read_too(release: Path, tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(release / "cvind.mat", {"cvind": np.array(FOLDS, float)[:, None]})
    table = convert([release], tmp_path / "out")
    assert table.orig_cv_fold.tolist() == FOLDS


def test_scaling_and_patient_group() -> None:
    assert to_uint8(np.array([[-5, 0], [5, 5]], np.int16)).tolist() == [[0, 127], [255, 255]]
    assert to_uint8(np.full((2, 3), 42, np.int16)).tolist() == [[0] * 3] * 2
    assert patient_group("MR024780G") == "MR024780"
    assert patient_group("MR048294") == "MR048294"
    assert patient_group("100360") == "100360"


def corrupt(kind: str, release: Path) -> tuple[list[Path], str]:
    """Damage the release in one way; return the sources to pass and the expected error text."""
    if kind == "no_image":
        with h5py.File(release / "3.mat", "r+") as mat:
            del mat["cjdata/image"]
        return [release], r"3\.mat: no cjdata/image"
    if kind == "no_cjdata":
        with h5py.File(release / "3.mat", "w") as mat:
            mat.create_dataset("something", data=[1])
        return [release], r"3\.mat: no cjdata/image"
    if kind == "not_hdf5":
        (release / "4.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
        return [release], r"4\.mat: cannot be read as HDF5"
    if kind == "empty_folder":
        empty = release.parent / "empty"
        empty.mkdir()
        return [empty], r"no N\.mat slice files in .*empty"
    if kind == "no_cvind":
        (release / "cvind.mat").unlink()
        return [release], r"no cvind\.mat"
    if kind == "short_cvind":
        write_cvind(release / "cvind.mat", FOLDS[:3])
        return [release], r"cvind\.mat holds 3 folds but slice 5"
    if kind == "duplicate":
        return [release, release / "2.mat"], r"slice 2 given twice"
    if kind == "odd_name":
        (release / "2.mat").rename(release / "slice2.mat")
        return [release], r"slice2\.mat: unexpected file name"
    if kind == "bad_label":
        with h5py.File(release / "5.mat", "r+") as mat:
            mat["cjdata/label"][...] = 7.0
        return [release], r"5\.mat: cjdata/label is \[7\.0\]"
    if kind == "missing_source":
        return [release / "nope.zip"], r"nope\.zip does not exist"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["no_image", "no_cjdata", "not_hdf5", "empty_folder", "no_cvind", "short_cvind", "duplicate", "odd_name",
     "bad_label", "missing_source"],
)  # fmt: skip
def test_bad_input_names_the_file_and_leaves_nothing(kind: str, release: Path, tmp_path: Path) -> None:
    sources, message = corrupt(kind, release)
    out = tmp_path / "out" / "dataset"
    with pytest.raises(FigshareError, match=message):
        convert(sources, out)
    assert leftovers(tmp_path / "out") == []


def test_output_folder_is_never_clobbered_by_accident(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    out.mkdir()
    convert([release], out)  # an empty folder is fine
    (out / "stale.txt").write_text("from an earlier run")
    with pytest.raises(FigshareError, match="not empty; pass --overwrite"):
        convert([release], out)
    assert (out / "stale.txt").exists()

    convert([release], out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "metadata.csv").is_file()
    assert leftovers(tmp_path) == ["dataset", "release"]

    not_a_dataset = tmp_path / "home"
    not_a_dataset.mkdir()
    (not_a_dataset / "notes.txt").write_text("precious")
    with pytest.raises(FigshareError, match="does not look like a dataset folder"):
        convert([release], not_a_dataset, overwrite=True)
    assert (not_a_dataset / "notes.txt").exists()

    (release / "3.mat").write_bytes(b"broken")
    with pytest.raises(FigshareError):
        convert([release], out, overwrite=True)
    assert len(pd.read_csv(out / "metadata.csv")) == 5  # the previous dataset survives a failed rerun


def load_script():
    path = Path(__file__).parents[1] / "scripts" / "prepare_figshare.py"
    spec = importlib.util.spec_from_file_location("prepare_figshare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_prints_a_summary(release: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = load_script()
    assert script.main(["--source", str(release), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "5 slices, 4 patient IDs, 3 patient groups" in printed
    assert "glioma          2 slices,    2 patient IDs" in printed

    with pytest.raises(FigshareError, match="--overwrite"):  # scripts print it as "error: ..." (run_main)
        script.main(["--source", str(release), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        script.main(["--download", "--out", str(tmp_path / "x")])  # --cache missing


def test_download_checks_md5_resumes_and_explains_network_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payloads = {name: f"content of {name}".encode() for name in figshare.RELEASE_FILES}
    listing = {"files": [
        {"name": name, "size": len(data), "download_url": f"https://example.invalid/{name}",
         "computed_md5": hashlib.md5(data).hexdigest()}
        for name, data in payloads.items()
    ]}  # fmt: skip
    requested: list[str] = []

    def fake_open(url: str) -> io.BytesIO:
        requested.append(url)
        if url == figshare.API_URL:
            return io.BytesIO(json.dumps(listing).encode())
        return io.BytesIO(payloads[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(figshare, "_open_url", fake_open)
    paths = figshare.download(tmp_path / "cache")
    assert [p.name for p in paths] == list(figshare.RELEASE_FILES)
    assert all(p.read_bytes() == payloads[p.name] for p in paths)
    assert len(requested) == 6

    figshare.download(tmp_path / "cache")  # complete files are not fetched again
    assert len(requested) == 7

    payloads[CVIND_FILE] = b"truncated"
    (tmp_path / "cache" / CVIND_FILE).unlink()
    with pytest.raises(FigshareError, match="cvind.mat .*MD5 does not match"):
        figshare.download(tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == sorted(set(figshare.RELEASE_FILES) - {CVIND_FILE})  # no partial file

    def offline(url: str) -> io.BytesIO:
        raise figshare.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(figshare, "_open_url", offline)
    with pytest.raises(FigshareError, match=r"cannot download https://api\.figshare\.com.*--source"):
        figshare.download(tmp_path / "cache")
