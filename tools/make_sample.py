"""Rebuild ``data/sample`` from the shared figshare copy (how the shipped sample was made).

Fifteen patient groups, five per tumour type, every slice of each, downsized to 256x256 (image INTER_AREA,
mask nearest) so the sample stays a few MB. Usage: ``python tools/make_sample.py SHARED_ROOT OUT``.
"""

import shutil
import sys
from pathlib import Path

import cv2
import pandas as pd

GROUPS = {
    "meningioma": ["100572", "102929", "105937", "106442", "97875"],
    "glioma": ["95142", "MR047953", "MR049142", "93825", "98889"],
    "pituitary": ["105538", "113741", "114040", "114361", "103046"],
}
SIZE = 256


def main(source: Path, out: Path) -> None:
    table = pd.read_csv(source / "metadata.csv", dtype=str)
    wanted = {g for groups in GROUPS.values() for g in groups}
    table = table[table.patient_group.isin(wanted)].copy()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    pixels = []
    for row in table.itertuples():
        image = cv2.imread(str(source / row.image), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(source / row.mask), cv2.IMREAD_GRAYSCALE)
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(out / row.image), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        cv2.imwrite(str(out / row.mask), mask, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        pixels.append(int((mask > 0).sum()))
    table["height"] = SIZE
    table["width"] = SIZE
    table["tumor_pixels"] = pixels
    table["tumor_fraction"] = [round(p / SIZE**2, 6) for p in pixels]
    table.to_csv(out / "metadata.csv", index=False)
    shutil.copy(Path(__file__).with_name("sample_README.md"), out / "README.md")
    print(f"{len(table)} slices, {table.patient_group.nunique()} patient groups -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
