"""A model trained on neighbouring slices, given each slice alone: what a user with single image files gets.

Usage: python alone.py CHECKPOINT PART OUT_DIR (from the repository root)
Scores CHECKPOINT (with the post-processing stored in it) on PART of its own data exactly as ``evaluate.py`` does,
except that every slice fills all three input channels, as ``predict.py`` feeds a single image file and as the
first and last slices of a scan were in training (``data.neighbour_slices`` off for the data, on for the model).
Writes OUT_DIR/metrics.json and OUT_DIR/per_image.csv and prints the table.
"""
import sys

from lightning_bts.data import BrainTumorDataModule
from lightning_bts.evaluation.data import evaluation_data
from lightning_bts.evaluation.outputs import format_table, write_evaluation
from lightning_bts.evaluation.predictor import Predictor
from lightning_bts.evaluation.scoring import evaluate

checkpoint, part, out = sys.argv[1:4]
predictor = Predictor.from_checkpoints([checkpoint])
assert predictor.preprocessing.neighbour_slices, f"{checkpoint} was not trained on neighbouring slices"
with_neighbours, part = evaluation_data(predictor.sources, part=part)  # the run's own split, checked
alone = BrainTumorDataModule(**{**dict(with_neighbours.hparams), "neighbour_slices": False})
evaluation = evaluate(predictor, alone, part)
print(format_table(evaluation.metrics))
print(f"wrote {write_evaluation(evaluation, out)}")
