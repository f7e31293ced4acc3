"""ONNX and TorchScript exports reproduce the PyTorch model, carry their contract, and fail cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_bts.evaluation import InferenceSettings, PostProcessing, export
from lightning_bts.evaluation.export import ExportCheckError, ExportError, export_checkpoint, main
from lightning_bts.evaluation.settings import store_settings
from lightning_bts.training.checkpoints import CheckpointError, load_model
from tests.test_inference import IMAGE_SIZE, trained_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return trained_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def pytorch_logits(trained):
    model = load_model(trained[0])

    def logits(images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return model(images).numpy()

    return logits


def random_slices(count: int) -> torch.Tensor:
    """float32 0..255, as the contract says (an independent check beside the export's own samples)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator).float()


def test_onnx_matches_pytorch_with_a_dynamic_batch(trained, pytorch_logits, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    checkpoint, root = trained
    output = tmp_path / "model.onnx"
    assert main(["--ckpt", str(checkpoint), "--output", str(output), "--samples", str(root / "images")]) == 0
    assert "max |logit difference| to PyTorch" in capsys.readouterr().out

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert given.name == "images" and given.type == "tensor(float)"
    assert isinstance(given.shape[0], str) and given.shape[1:] == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert returned.name == "logits" and returned.shape[1:] == [1, IMAGE_SIZE, IMAGE_SIZE]
    for count in (1, 3):
        images = random_slices(count)
        logits = session.run(["logits"], {"images": images.numpy()})[0]
        assert logits.shape == (count, 1, IMAGE_SIZE, IMAGE_SIZE)
        assert np.abs(logits - pytorch_logits(images)).max() <= 1e-4

    metadata = {prop.key: prop.value for prop in onnx.load(str(output)).metadata_props}
    assert metadata["image_size"] == str(IMAGE_SIZE) and metadata["skull_strip"] == "safe"
    assert "0..255" in metadata["input"] and "sigmoid" in metadata["output"]


def test_torchscript_matches_pytorch_and_carries_its_contract(trained, pytorch_logits, tmp_path):
    source, root = trained
    checkpoint = tmp_path / "selected.ckpt"  # with a stored post-processing choice, which the contract records
    shutil.copy(source, checkpoint)
    store_settings([checkpoint], InferenceSettings(PostProcessing(0.4, "largest"), tta="flip"), {"part": "val"})
    report = export_checkpoint(checkpoint, tmp_path / "model.pt", samples=[root / "images"], num_samples=3)
    assert report.format == "torchscript" and report.max_abs_diff <= 1e-4 and report.batch_sizes == (3, 1)
    files = {"lightning_bts.json": ""}
    module = torch.jit.load(str(report.path), map_location="cpu", _extra_files=files)
    contract = json.loads(files["lightning_bts.json"])
    assert contract["in_channels"] == "3" and contract["threshold"] == "0.4" and "flip" in contract["tta"]
    assert json.loads(contract["postprocessing"]) == PostProcessing(0.4, "largest").as_dict()
    images = random_slices(5)
    with torch.inference_mode():
        assert np.abs(module(images).numpy() - pytorch_logits(images)).max() <= 1e-4


def test_bad_exports_leave_nothing_behind(trained, tmp_path, monkeypatch):
    checkpoint, root = trained
    with pytest.raises(ExportError, match="format of .*model.h5"):
        export_checkpoint(checkpoint, tmp_path / "model.h5")
    named_pt = tmp_path / "keep" / "model.pt"  # a checkpoint that happens to end in .pt
    named_pt.parent.mkdir()
    named_pt.write_bytes(checkpoint.read_bytes())
    with pytest.raises(ExportError, match="overwrite the checkpoint"):
        export_checkpoint(named_pt, named_pt)
    out = tmp_path / "out"
    monkeypatch.setattr(export, "run_exported", lambda path, kind, images: np.zeros((len(images), 1, 1, 1)))
    with pytest.raises(ExportCheckError, match="differs from PyTorch"):
        export_checkpoint(checkpoint, out / "bad.pt", samples=[root / "images"], num_samples=2)
    assert list(out.iterdir()) == []
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.ckpt"):
        main(["--ckpt", str(not_a_checkpoint), "--output", str(out / "m.onnx")])
    assert not (out / "m.onnx").exists()


@pytest.mark.parametrize("weights_dtype", ["float32", "float16"])
def test_release_checkpoint_drops_training_state_and_predicts_as_the_original(trained, pytorch_logits, tmp_path,
                                                                              weights_dtype):
    source, root = trained
    checkpoint = tmp_path / "selected.ckpt"
    shutil.copy(source, checkpoint)
    store_settings([checkpoint], InferenceSettings(PostProcessing(0.4, "largest"), tta="flip"), {"part": "val"})
    release = tmp_path / "release" / "model.ckpt"
    atol = 1e-5 if weights_dtype == "float32" else 5e-2
    report = export_checkpoint(checkpoint, release, samples=[root / "images"], atol=atol,
                               weights_dtype=weights_dtype)
    assert report.format == "checkpoint" and report.max_abs_diff <= atol
    stored = torch.load(release, weights_only=True)
    original = torch.load(checkpoint, weights_only=True)
    assert "optimizer_states" in original
    if weights_dtype == "float32":  # the very same weights
        for name, tensor in original["state_dict"].items():
            torch.testing.assert_close(stored["state_dict"][name], tensor, rtol=0, atol=0)
    assert not {"optimizer_states", "lr_schedulers", "loops", "callbacks"} & set(stored)
    floats = [t for t in stored["state_dict"].values() if t.is_floating_point()]
    assert {t.dtype for t in floats} == {getattr(torch, weights_dtype)}
    assert stored["release"] == {"weights_dtype": weights_dtype}
    # what evaluation chose travels with the release; every consumer reads it back
    assert stored["postprocessing"]["postprocessing"]["threshold"] == 0.4
    model = load_model(release)
    assert next(model.parameters()).dtype == torch.float32
    images = random_slices(2)
    with torch.inference_mode():
        assert np.abs(model(images).numpy() - pytorch_logits(images)).max() <= atol


def test_weights_dtype_is_for_release_checkpoints_only(trained, tmp_path):
    with pytest.raises(ExportError, match="applies to a .ckpt release only"):
        export_checkpoint(trained[0], tmp_path / "model.onnx", weights_dtype="float16")
    with pytest.raises(CheckpointError, match="int8"):
        export_checkpoint(trained[0], tmp_path / "model.ckpt", weights_dtype="int8")
    assert not (tmp_path / "model.ckpt").exists()
