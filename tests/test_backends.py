"""ONNX Runtime as an inference backend gives the masks and scores PyTorch gives, and refuses what it cannot run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_bts.data.records import read_image
from lightning_bts.errors import ConfigError
from lightning_bts.evaluation import Predictor, evaluate_checkpoints
from lightning_bts.evaluation.backends import BackendError, OnnxRuntimeNetwork, check_backend
from lightning_bts.evaluation.predict_cli import main as predict_main
from tests.test_inference import trained_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return trained_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def slices(trained) -> list[np.ndarray]:
    _, root = trained
    return [read_image(path) for path in sorted((root / "images").iterdir())[:6]]


# Each member is exported to ONNX when the Predictor loads (about 7 s here): the fast tier exports one.
@pytest.mark.parametrize("tta, members", [(False, 1), pytest.param(True, 2, marks=pytest.mark.slow)])
def test_onnxruntime_gives_the_probabilities_and_masks_of_torch(trained, slices, tta, members):
    checkpoint, _ = trained
    members = [checkpoint] * members  # two: an ensemble, whose averaging stays the Predictor's
    torch_predictor = Predictor.from_checkpoints(members, tta=tta)
    ort_predictor = Predictor.from_checkpoints(members, tta=tta, backend="onnxruntime")
    assert all(isinstance(model, OnnxRuntimeNetwork) for model in ort_predictor.models)
    assert ort_predictor.backend == "onnxruntime" and ort_predictor.with_tta(not tta).backend == "onnxruntime"
    expected, got = torch_predictor.predict(slices), ort_predictor.predict(slices)
    for want, have in zip(expected, got):
        assert have.shape == want.shape and np.abs(have - want).max() <= 1e-5
    assert sum(mask.sum() for mask in torch_predictor.masks(expected)) > 0  # the comparison is not vacuous
    for want, have in zip(torch_predictor.masks(expected), ort_predictor.masks(got)):
        np.testing.assert_array_equal(have, want)


@pytest.mark.slow  # one more ONNX export; the fast tier checks the probabilities above and predict.py below
def test_evaluate_scores_the_same_with_either_backend(trained, tmp_path):
    checkpoint, _ = trained
    plain = evaluate_checkpoints([checkpoint], device="cpu", bootstrap=0)
    onnx = evaluate_checkpoints([checkpoint], device="cpu", bootstrap=0, backend="onnxruntime")
    assert plain.metrics["backend"] == "torch" and onnx.metrics["backend"] == "onnxruntime"
    for name in ("dice", "precision", "recall", "hd95"):
        assert onnx.metrics[name] == pytest.approx(plain.metrics[name], abs=1e-6), name


def test_predict_runs_on_onnxruntime_quietly(trained, tmp_path, capfd):
    checkpoint, root = trained
    out = tmp_path / "out"
    assert predict_main(["--ckpt", str(checkpoint), "--input", str(root / "images"), "--output", str(out),
                         "--backend", "onnxruntime", "--device", "cpu", "--quiet"]) == 0
    assert (out / "predictions.csv").is_file() and any((out / "masks").iterdir())
    printed = capfd.readouterr()
    assert "predicted" in printed.out
    for noise in ("Missing annotation", "torch.onnx", "Treating as an Input"):  # the exporter's own notes
        assert noise not in printed.err, printed.err[-2000:]


def test_what_onnxruntime_cannot_run_is_refused_before_loading(trained):
    checkpoint, _ = trained
    with pytest.raises(BackendError, match="--precision bf16-mixed applies to --backend torch only"):
        Predictor.from_checkpoints([checkpoint], precision="bf16-mixed", backend="onnxruntime")
    with pytest.raises(ConfigError, match="--backend 'tensorrt' is unknown; choose one of torch, onnxruntime"):
        Predictor.from_checkpoints([checkpoint], backend="tensorrt")
    with pytest.raises(BackendError, match="runs on the CPU here"):
        check_backend("onnxruntime", torch.device("cuda"), "32-true")
