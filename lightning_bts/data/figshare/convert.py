"""Build the dataset folder from the official figshare release of Cheng et al.'s brain tumour dataset.

The shared copy in ``../shared/data/figshare_brain_tumor`` is a patient-level subset assembled from
redistributions. This module rebuilds the same layout (``images/NNNN.png``, ``masks/NNNN.png``,
``metadata.csv``, ``README.md``) for all 3064 slices straight from the original files, so anyone can get the
whole dataset:

* the four zip parts ``brainTumorDataPublic_*.zip`` of MATLAB v7.3 files ``N.mat`` (slice number ``N``),
  each with a group ``cjdata`` holding ``image`` (int16), ``tumorMask``, ``label`` (1 meningioma, 2 glioma,
  3 pituitary), ``PID`` (patient ID as uint16 character codes) and ``tumorBorder``;
* ``cvind.mat``: the release's own 5-fold patient-level cross-validation index, one entry per slice.

MATLAB v7.3 files are HDF5 files written column-major, so h5py sees every 2-D array transposed: images and
masks are transposed back here. The conversion writes into a temporary folder beside the output and renames
it at the end, so a failure never leaves a half-written dataset that would later look complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pandas as pd

from lightning_bts.data.figshare.release import (
    COLUMNS,
    CVIND_FILE,
    DOI,
    PNG_OPTIONS,
    SLICE_NAME,
    TUMOR_TYPES,
    ZIP_PARTS,
    FigshareError,
    Log,
    Slice,
    patient_group,
    read_cvind,
    read_slice,
)
from lightning_bts.data.intensity import DEFAULT_INTENSITY, to_uint8


def convert(
    sources: Sequence[str | Path], out: str | Path, overwrite: bool = False, log: Log | None = None
) -> pd.DataFrame:
    """Convert the release into the dataset folder ``out`` and return its metadata table.

    Args:
        sources: folders (searched recursively for ``*.mat`` and ``*.zip``), zip parts (also figshare's
            "download all" zip that holds the parts) and ``.mat`` files; ``cvind.mat`` must be among them.
        out: the dataset folder to create.
        overwrite: replace ``out`` if it already holds a converted dataset.
        log: called with progress lines.

    Raises:
        FigshareError: bad or missing input, or ``out`` not empty (and ``overwrite`` not given).
    """
    out = Path(out).absolute()
    sources = [Path(source) for source in sources]
    if not sources:
        raise FigshareError("no sources given; expected the figshare zip parts, a folder of N.mat files and cvind.mat")
    _check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        table = _convert_into(sources, staging, log or (lambda line: None))
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return table


def summarize(table: pd.DataFrame) -> str:
    """Counts of slices, patient IDs and groups, overall and per tumour type."""
    lines = [
        f"{len(table)} slices, {table.patient_id.nunique()} patient IDs, "
        f"{table.patient_group.nunique()} patient groups"
    ]
    for tumor_type in TUMOR_TYPES.values():
        part = table[table.tumor_type == tumor_type]
        lines.append(f"  {tumor_type:<11} {len(part):5d} slices, {part.patient_id.nunique():4d} patient IDs")
    return "\n".join(lines)


def _convert_into(sources: list[Path], staging: Path, log: Log) -> pd.DataFrame:
    """Write every slice's PNGs into ``staging``, then metadata.csv and README.md; return the table."""
    (staging / "images").mkdir()
    (staging / "masks").mkdir()
    rows: list[dict] = []
    seen: dict[int, str] = {}
    folds, folds_origin = None, ""
    for name, origin, data in _release_files(sources, staging / ".nested"):
        if name.lower() == CVIND_FILE:
            folds, folds_origin = read_cvind(data, origin), origin
            continue
        number = SLICE_NAME.fullmatch(name)
        if number is None or int(number.group(1)) < 1:
            raise FigshareError(f"{origin}: unexpected file name; expected N.mat (slice number N >= 1) or cvind.mat")
        slice_id = int(number.group(1))
        if slice_id in seen:
            raise FigshareError(f"slice {slice_id} given twice: {seen[slice_id]} and {origin}; pass each part once")
        seen[slice_id] = origin
        rows.append(_write_slice(slice_id, read_slice(data, origin), staging))
        if len(rows) % 250 == 0:
            log(f"{len(rows)} slices converted")
    shutil.rmtree(staging / ".nested", ignore_errors=True)
    if not rows:
        raise FigshareError(f"no N.mat slice files in {[str(s) for s in sources]}; expected the figshare zip parts "
                            f"{list(ZIP_PARTS)} or a folder of their N.mat files")
    if folds is None:
        raise FigshareError(f"no {CVIND_FILE} among {[str(s) for s in sources]}; it is a separate file of the "
                            f"figshare record (doi:{DOI}): pass it with the zip parts")
    if max(seen) > len(folds):
        raise FigshareError(f"{folds_origin} holds {len(folds)} folds but slice {max(seen)} was given; "
                            f"expected one fold per slice")
    table = pd.DataFrame(rows).sort_values("slice_id").reset_index(drop=True)
    table["orig_cv_fold"] = folds[table.slice_id.to_numpy() - 1]
    table = table[list(COLUMNS)]
    table.to_csv(staging / "metadata.csv", index=False, float_format="%.6f")
    (staging / "README.md").write_text(_readme(table, sources), encoding="utf-8")
    return table


def _write_slice(slice_id: int, item: Slice, staging: Path) -> dict:
    """Write one slice's image and mask PNGs; return its metadata row (without the fold)."""
    image_name, mask_name = f"images/{slice_id:04d}.png", f"masks/{slice_id:04d}.png"
    image = to_uint8(item.image, DEFAULT_INTENSITY)  # the mapping prediction repeats on NIfTI/DICOM slices
    for name, pixels in ((image_name, image), (mask_name, item.mask.astype(np.uint8) * 255)):
        if not cv2.imwrite(str(staging / name), pixels, PNG_OPTIONS):
            raise FigshareError(f"cannot write {staging / name}")
    height, width = item.image.shape
    tumor_pixels = int(item.mask.sum())
    return {
        "slice_id": slice_id,
        "image": image_name,
        "mask": mask_name,
        "patient_id": item.patient_id,
        "patient_group": patient_group(item.patient_id),
        "label": item.label,
        "tumor_type": TUMOR_TYPES[item.label],
        "height": height,
        "width": width,
        "tumor_pixels": tumor_pixels,
        "tumor_fraction": round(tumor_pixels / (height * width), 6),
    }


def _release_files(sources: Sequence[Path], scratch: Path) -> Iterator[tuple[str, str, bytes]]:
    """``(name, origin, bytes)`` of every ``.mat`` in the sources (zip members read in memory); origin is for errors."""
    for source in sources:
        if source.is_dir():
            found = sorted(
                path for path in source.rglob("*")
                if path.suffix.lower() in (".mat", ".zip") and path.is_file() and not path.name.startswith("._")
            )  # fmt: skip
            yield from _release_files(found, scratch)
        elif source.is_file() and source.suffix.lower() == ".zip":
            yield from _zip_members(source, str(source), scratch)
        elif source.is_file() and source.suffix.lower() == ".mat":
            yield source.name, str(source), source.read_bytes()
        elif not source.exists():
            raise FigshareError(f"source {source} does not exist")
        else:
            raise FigshareError(f"source {source}: expected a folder, a .zip part or a .mat file")


def _zip_members(path: Path, origin: str, scratch: Path) -> Iterator[tuple[str, str, bytes]]:
    """``.mat`` members of a zip; a nested zip (figshare's "download all" archive) is copied out and read."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise FigshareError(f"{origin}: not a readable zip file ({error})") from None
    with archive:
        for info in archive.infolist():
            member = PurePosixPath(info.filename)
            if info.is_dir() or "__MACOSX" in member.parts or member.name.startswith("._"):
                continue
            if member.suffix.lower() == ".mat":
                yield member.name, f"{origin}:{info.filename}", archive.read(info)
            elif member.suffix.lower() == ".zip":  # seeking inside a compressed member is slow: copy it out
                scratch.mkdir(parents=True, exist_ok=True)
                inner = scratch / member.name
                with archive.open(info) as packed, inner.open("wb") as unpacked:
                    shutil.copyfileobj(packed, unpacked, 1 << 20)
                yield from _zip_members(inner, f"{origin}:{info.filename}", scratch)
                inner.unlink()


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse to clobber: a file, a non-empty folder without ``overwrite``, or a folder that is not a dataset."""
    if out.exists() and not out.is_dir():
        raise FigshareError(f"output {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FigshareError(f"output folder {out} is not empty; pass --overwrite to replace it")
    if not (out / "metadata.csv").is_file():
        raise FigshareError(f"refusing to replace {out}: it does not look like a dataset folder (no metadata.csv)")


def _publish(staging: Path, out: Path) -> None:
    """Move the finished ``staging`` folder to ``out``; an old ``out`` is only deleted once the new one is in place."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _readme(table: pd.DataFrame, sources: Sequence[Path]) -> str:
    """README.md of the output: layout, columns, counts, provenance and the citation the license requires."""
    counts = {t: table[table.tumor_type == t] for t in TUMOR_TYPES.values()}
    slices = " | ".join(str(len(part)) for part in counts.values())
    patients = " | ".join(str(part.patient_id.nunique()) for part in counts.values())
    sizes = table.groupby(["height", "width"]).size().sort_values(ascending=False)
    size_text = ", ".join(f"{n} slices {h}x{w}" for (h, w), n in sizes.items())
    return f"""# figshare brain tumor dataset (Cheng et al.) — PNG slices + binary tumor masks

Single 2-D T1-weighted contrast-enhanced MRI slices (axial, coronal and sagittal planes mixed) with a
manually delineated binary tumor mask per slice; three tumor types: meningioma, glioma, pituitary tumor.
Converted from the original figshare release by `scripts/prepare_figshare.py` (lightning_bts), in the
same layout as the shared copy.

## Layout

```
images/NNNN.png   MRI slice, 8-bit grayscale (uint8), original resolution
masks/NNNN.png    tumor mask, 8-bit grayscale, values exactly {{0, 255}} (255 = tumor)
metadata.csv      one row per slice
```

`NNNN` is the slice number of the original release (`NNNN.mat`), zero-padded to 4 digits. Paths in the CSV
are relative to this folder. Read patient IDs as strings (`dtype={{"patient_id": str, "patient_group": str}}`).

## metadata.csv columns

| column | meaning |
|---|---|
| `slice_id` | figshare slice number |
| `image`, `mask` | relative file paths |
| `patient_id` | patient ID (`cjdata.PID`), as a string |
| `patient_group` | key for patient-level splits: `patient_id` less a trailing letter of `MR…` IDs (see below) |
| `label` | 1 = meningioma, 2 = glioma, 3 = pituitary tumor (`cjdata.label`) |
| `tumor_type` | label as text |
| `height`, `width` | image size in pixels |
| `tumor_pixels`, `tumor_fraction` | number / fraction of mask pixels that are tumor |
| `orig_cv_fold` | the release's own 5-fold cross-validation fold (`cvind.mat`) |

## Counts

| | meningioma | glioma | pituitary | total |
|---|---:|---:|---:|---:|
| slices | {slices} | {len(table)} |
| patient IDs | {patients} | {table.patient_id.nunique()} |

{table.patient_group.nunique()} patient groups; {size_text}.

Glioma IDs of the form `MR0xxxxx` plus a letter (`MR024780B`, `MR024780D`, ...) are separate patients in the
release and its CV folds, but slices of IDs sharing the numeric stem look like the same patient: split by
`patient_group`, not `patient_id`, to avoid leakage.

## Conversion

Sources: {", ".join(f"`{source.name}`" for source in sources)}. Each `cjdata.image` (int16) was min-max scaled
per slice to 0-255 (truncated to uint8, as in the shared copy; the data setting `intensity: {DEFAULT_INTENSITY}`);
`cjdata.tumorMask` was written as 0/255. Both were transposed back from the column-major MATLAB v7.3
storage. No resizing or cropping. PNGs use zlib level 9.

## Source and citation

Jun Cheng, "brain tumor dataset", figshare, doi:{DOI}. Nanfang Hospital (Guangzhou) and General
Hospital, Tianjin Medical University, 2005–2010. License: CC BY 4.0 — attribution to the authors is
required. Please cite:

- Cheng J, Huang W, Cao S, Yang R, Yang W, Yun Z, Wang Z, Feng Q. Enhanced Performance of Brain Tumor
  Classification via Tumor Region Augmentation and Partition. PLoS ONE 10(10): e0140381, 2015.
- Cheng J, Yang W, Huang M, Huang W, Jiang J, Zhou Y, Yang R, Zhao J, Feng Y, Feng Q, Chen W. Retrieval of
  Brain Tumors by Adaptive Spatial Pooling and Fisher Vector Representation. PLoS ONE 11(6): e0157112, 2016.
"""
