"""model.input_norm: the paper's x / 255 by default, or each slice's foreground z-score."""

import pytest
import torch

from lightning_bts.errors import ConfigError
from lightning_bts.models import InputScaled, UNet
from lightning_bts.models.input_norm import normalise_input
from lightning_bts.training.module import SegmentationModule
from tests.test_recipe import train_one_step


def brain_like_slice(seed: int = 0) -> torch.Tensor:
    """``(1, 3, 32, 32)`` in 0..255: a zero background around a textured disc of tissue."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = ((rows - 16) ** 2 + (cols - 16) ** 2 < 12**2).float()
    tissue = 60 + 40 * torch.rand(32, 32, generator=generator)
    return (disc * tissue).expand(1, 3, 32, 32).clone()


def test_zscore_gives_the_foreground_mean_zero_and_deviation_one_and_the_background_one_value():
    image = brain_like_slice()
    normalised = normalise_input(image, "zscore", 1 / 255)
    foreground = image > 0
    assert normalised[foreground].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normalised[foreground].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    background = normalised[~foreground]
    assert background.max().item() == pytest.approx(background.min().item()) and background.max() < -2


def test_zscore_ignores_brightness_and_contrast_changes_of_the_whole_slice():
    """What the training augmentation's brightness/contrast does to a slice does not change the input."""
    image = brain_like_slice()
    torch.testing.assert_close(normalise_input(1.7 * image + 12, "zscore", 1 / 255),
                               normalise_input(image, "zscore", 1 / 255), rtol=1e-4, atol=1e-4)


def test_zscore_of_a_flat_slice_is_zero_not_a_division_by_zero():
    for value in (0.0, 80.0):
        assert torch.equal(normalise_input(torch.full((2, 3, 8, 8), value), "zscore", 1 / 255),
                           torch.zeros(2, 3, 8, 8))


def test_scale_is_the_keras_lambda_and_the_default():
    image = brain_like_slice()
    torch.testing.assert_close(normalise_input(image, "scale", 1 / 255), image / 255)
    assert UNet().input_norm == "scale" and SegmentationModule().net.input_norm == "scale"


@pytest.mark.parametrize("arch", ["paper_unet", "Unet"])
def test_both_network_kinds_take_zscore_input_and_train_a_step(arch):
    torch.manual_seed(0)
    extra = {"encoder": "resnet18"} if arch == "Unet" else {"norm": "batch"}
    module = SegmentationModule(arch=arch, input_norm="zscore", loss="dice_bce_image", hausdorff=False, **extra)
    assert isinstance(module.net, InputScaled if arch == "Unet" else UNet) and module.net.input_norm == "zscore"
    image = brain_like_slice().repeat(2, 1, 1, 1)
    masks = (image[:, :1] > 90).float()
    train_one_step(module, image, masks)
    # the network sees the same input for a brighter, higher-contrast copy of the slices
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(1.5 * image + 20), module(image), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("network", [{}, {"arch": "Unet", "encoder": "resnet18"}])
def test_an_unknown_input_norm_is_refused_by_name(network):
    with pytest.raises(ConfigError, match=r"model.input_norm: unknown input normalisation 'minmax'.*scale, zscore"):
        SegmentationModule(input_norm="minmax", **network)


def test_a_zscore_network_exports_to_onnx_and_predicts_as_in_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from lightning_bts.evaluation.export import export_onnx, run_exported

    torch.manual_seed(0)
    net = UNet(base_filters=4, depth=2, norm="batch", input_norm="zscore").eval()
    images = torch.cat([brain_like_slice(seed) for seed in range(3)])
    path = tmp_path / "zscore.onnx"
    export_onnx(net, images[:1], path, {})
    with torch.no_grad():
        expected = net(images).numpy()
    assert abs(run_exported(path, "onnx", images) - expected).max() <= 1e-4
