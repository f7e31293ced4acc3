"""Device side: a 512x512 copy of ROOT (128x128 PNGs upsampled) to time configs/best_gpu.yaml at its own size.

Only the timings of a run on it mean anything: its images are blurred upsamplings, so its Dice is not reported.
"""
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2

source, target = Path(sys.argv[1]), Path(sys.argv[2])
(target / "images").mkdir(parents=True, exist_ok=True)
(target / "masks").mkdir(parents=True, exist_ok=True)
shutil.copy(source / "metadata.csv", target / "metadata.csv")


def upsample(name: str) -> None:
    image = cv2.imread(str(source / "images" / name), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(source / "masks" / name), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(target / "images" / name), cv2.resize(image, (512, 512), interpolation=cv2.INTER_LINEAR),
                [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(str(target / "masks" / name), cv2.resize(mask, (512, 512), interpolation=cv2.INTER_NEAREST),
                [cv2.IMWRITE_PNG_COMPRESSION, 1])


names = sorted(p.name for p in (source / "images").glob("*.png"))
with ThreadPoolExecutor(16) as pool:
    list(pool.map(upsample, names))
print("wrote", len(names), "slices at 512x512 to", target)
