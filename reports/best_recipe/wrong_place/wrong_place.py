"""Where the shipped model goes wrong: every validation slice it scores under 0.1 Dice (``NOT_FOUND_DICE``), drawn.

Validation patients only. Usage: python wrong_place.py CHECKPOINT PER_IMAGE_CSV OUT_IMAGE (.png or .jpg)
PER_IMAGE_CSV is the model's validation scores after its stored post-processing (``scripts/evaluate.py --part val``).
Each tile: the slice as stored (512x512) with the true mask's outline in green and the predicted mask's in red; the
key, tumour type and Dice above.
"""
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lightning_bts.evaluation.breakdown import NOT_FOUND_DICE
from lightning_bts.evaluation.data import read_original_mask
from lightning_bts.evaluation.predictor import Predictor

TILE, COLUMNS = 224, 6
checkpoint, scores_csv, out_image = sys.argv[1:4]
predictor = Predictor.from_checkpoints([checkpoint], "cpu", "32-true")
root = Path(predictor.sources[0].data["root"])
scores = pd.read_csv(scores_csv, dtype={"key": str})
wrong = scores[scores["dice"] < NOT_FOUND_DICE].sort_values(["tumor_type", "key"])
tiles = []
for row in wrong.itertuples():
    image = cv2.imread(str(root / "images" / f"{row.key}.png"), cv2.IMREAD_GRAYSCALE)
    truth = read_original_mask(root / "masks" / f"{row.key}.png")
    predicted = predictor.segment([image])[0]
    tile = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for mask, colour in ((truth, (0, 255, 0)), (predicted, (0, 0, 255))):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, colour, 3)
    tile = cv2.resize(tile, (TILE, TILE), interpolation=cv2.INTER_AREA)
    cv2.putText(tile, f"{row.key} {row.tumor_type} {row.dice:.2f}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 0), 1)
    tiles.append(tile)
tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % COLUMNS)
rows = [np.concatenate(tiles[i:i + COLUMNS], axis=1) for i in range(0, len(tiles), COLUMNS)]
cv2.imwrite(out_image, np.concatenate(rows, axis=0))
print(f"{len(wrong)} of {len(scores)} validation slices under {NOT_FOUND_DICE:g} Dice: {out_image}")
