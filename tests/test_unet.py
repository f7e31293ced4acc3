import math

import pytest
import torch

from lightning_bts.models import UNet
from lightning_bts.models.unet import KERAS_DROPOUT_DOWN, KERAS_DROPOUT_UP, paper_dropout_rates


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_matches_keras_original():
    assert count(UNet()) == 1_941_105


def test_parameter_count_scales_with_input_channels_only_in_first_conv():
    assert count(UNet(in_channels=1)) == 1_941_105 - 2 * 9 * 16


@pytest.mark.parametrize("size", [16, 48, 96])
def test_output_is_one_logit_map_of_input_size(size):
    model = UNet().eval()
    out = model(torch.rand(2, 3, size, size) * 255)
    assert out.shape == (2, 1, size, size)


def test_outputs_logits_not_probabilities():
    torch.manual_seed(0)
    model = UNet(input_scale=1.0).eval()
    out = model(torch.randn(1, 3, 32, 32) * 50)
    assert (out < 0).any() or (out > 1).any(), "a sigmoid inside forward would keep outputs in [0, 1]"


def test_size_not_divisible_by_16_is_rejected_with_advice():
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet()(torch.zeros(1, 3, 40, 40))


def test_dropout_rates_are_the_papers_and_sit_between_the_two_convs():
    model = UNet()
    down = [block[2].p for block in model.encoder] + [model.bottleneck[2].p]
    up = [upblock.block[2].p for upblock in model.decoder]
    assert tuple(down) == KERAS_DROPOUT_DOWN and tuple(up) == KERAS_DROPOUT_UP
    assert isinstance(model.encoder[0][0], torch.nn.Conv2d) and isinstance(model.encoder[0][3], torch.nn.Conv2d)


def test_other_depths_build_and_have_matching_rates():
    down, up = paper_dropout_rates(3)
    assert len(down) == 4 and len(up) == 3
    assert UNet(depth=3)(torch.zeros(1, 3, 16, 16)).shape == (1, 1, 16, 16)


def test_he_normal_is_truncated_with_keras_variance():
    torch.manual_seed(0)
    conv = UNet(base_filters=32).bottleneck[0]  # 256 in-channels x 9 taps: many weights
    fan_in = conv.in_channels * 9
    weights = conv.weight.detach().flatten()
    keras_std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    assert weights.abs().max() <= 2 * keras_std + 1e-7, "Keras truncates at two standard deviations"
    assert weights.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.03)
    assert weights.mean().item() == pytest.approx(0.0, abs=0.01 * keras_std)


def test_transposed_convs_and_head_are_glorot_uniform_and_biases_zero():
    model = UNet()
    up = model.decoder[0].up.weight
    limit = math.sqrt(6.0 / ((up.shape[0] + up.shape[1]) * 4))
    assert up.abs().max() <= limit and up.abs().max() > 0.9 * limit
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert all((m.bias == 0).all() for m in convs)


def test_batch_norm_is_optional_and_off_by_default():
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in UNet().modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in UNet(batch_norm=True).modules()) == 18


def test_input_scale_is_the_keras_lambda():
    torch.manual_seed(0)
    scaled = UNet().eval()
    plain = UNet(input_scale=1.0).eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.rand(1, 3, 16, 16) * 255
    torch.testing.assert_close(scaled(x), plain(x / 255))


def test_wrong_number_of_dropout_rates_is_rejected():
    with pytest.raises(ValueError, match="needs 5 dropout_down"):
        UNet(dropout_down=[0.1, 0.1])
