"""Everything after training: one predictor, post-processing chosen on validation, scores, prediction files.

Modules, each one job (imports go down this list, never up; none of them is imported by training code):

- ``postprocess``    :class:`PostProcessing`: probability map -> mask (threshold, components, empty fallback)
- ``tta``            the TTA modes: which mirrored views of a slice a prediction averages
- ``settings``       the TTA and post-processing a checkpoint stores, and the command-line overrides
- ``backends``       what runs a loaded network: PyTorch, or ONNX Runtime (converted in memory)
- ``predictor``      :class:`Predictor`: checkpoints -> probabilities (device, precision, backend, ensemble,
                     mirror TTA)
- ``data``           which slices are scored (the checkpoint's own split, checked), at both resolutions
- ``bootstrap``      95 % intervals by resampling patients (not slices: a patient's slices are correlated)
- ``scoring``        :func:`evaluate_checkpoints`: metrics at each slice's original size and at the model grid
- ``selection``      :func:`select_postprocessing`: choose TTA and post-processing on validation, store it
- ``outputs``        metrics.json, per_image.csv, predictions.npz, the printed table
- ``predict_files``  :func:`predict_files`: masks, maps, overlays and a table for image files
- ``predict_volumes``  :func:`predict_volumes`: NIfTI masks on the scan's grid and tumour volumes for NIfTI/DICOM
- ``volume_scoring``   :func:`evaluate_volumes`: per-slice and per-volume scores (mm) on NIfTI image/mask pairs
- ``export``         ONNX, TorchScript or a release checkpoint (no optimiser state, float16 weights if asked)
- ``evaluate_cli``, ``predict_cli``, ``select_cli``   the ``main`` of scripts/evaluate.py, predict.py and
  select_postprocessing.py
"""

from lightning_bts.evaluation.backends import BACKENDS
from lightning_bts.evaluation.outputs import (
    format_table,
    load_predictions,
    predictions_npz,
    to_json,
    write_evaluation,
    write_files_atomically,
)
from lightning_bts.evaluation.postprocess import PostProcessing
from lightning_bts.evaluation.predict_files import find_images, predict_files
from lightning_bts.evaluation.predict_volumes import find_inputs, predict_volumes
from lightning_bts.evaluation.predictor import PRECISIONS, InferenceError, Predictor, resolve_device
from lightning_bts.evaluation.scoring import Evaluation, evaluate, evaluate_checkpoints
from lightning_bts.evaluation.selection import select_postprocessing
from lightning_bts.evaluation.settings import InferenceSettings
from lightning_bts.evaluation.volume_scoring import evaluate_volumes

__all__ = [
    "BACKENDS", "PRECISIONS", "Evaluation", "InferenceError", "InferenceSettings", "PostProcessing", "Predictor",
    "evaluate", "evaluate_checkpoints", "evaluate_volumes", "find_images", "find_inputs", "format_table",
    "load_predictions", "predict_files", "predict_volumes", "predictions_npz", "resolve_device",
    "select_postprocessing", "to_json", "write_evaluation", "write_files_atomically",
]
