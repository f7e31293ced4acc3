import math

import pytest
import torch
from torch import nn

from lightning_bts.errors import ConfigError
from lightning_bts.models import UNet
from lightning_bts.models.unet import (
    KERAS_DROPOUT_DOWN,
    KERAS_DROPOUT_UP,
    NORMS,
    ConvBlock,
    group_count,
    paper_dropout_rates,
)


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


NORM_TYPES = {"batch": torch.nn.BatchNorm2d, "instance": torch.nn.InstanceNorm2d, "group": torch.nn.GroupNorm}


@pytest.mark.parametrize("norm", ["none", "batch", "instance", "group"])
def test_norm_variants_train_a_step_and_off_is_the_keras_network(norm):
    torch.manual_seed(0)
    model = UNet(base_filters=8, depth=2, norm=norm)
    norms = [m for m in model.modules() if isinstance(m, tuple(NORM_TYPES.values()))]
    if norm == "none":
        assert not norms and count(UNet(norm="none")) == 1_941_105
    else:
        # one after each 3x3 conv: 2 per block, depth encoder blocks + bottleneck + depth decoder blocks
        assert len(norms) == 2 * (2 * 2 + 1) and all(type(m) is NORM_TYPES[norm] for m in norms)
        assert isinstance(model.encoder[0][1], NORM_TYPES[norm])  # after the conv, before the ReLU
    out = model(torch.rand(2, 3, 32, 32) * 255)
    out.mean().backward()
    assert out.shape == (2, 1, 32, 32) and model.encoder[0][0].weight.grad.abs().sum() > 0
    model.eval()
    assert model(torch.rand(1, 3, 32, 32) * 255).shape == (1, 1, 32, 32)  # eval with batch 1 works too


def test_old_batch_norm_flag_means_norm_batch():
    torch.manual_seed(0)
    old = UNet(base_filters=4, depth=2, batch_norm=True)
    new = UNet(base_filters=4, depth=2, norm="batch")
    assert old.norm == new.norm == "batch" and old.state_dict().keys() == new.state_dict().keys()
    with pytest.raises(ConfigError, match="model.norm"):
        UNet(batch_norm=True, norm="group")
    with pytest.raises(ConfigError, match="instance"):
        UNet(norm="layer")
    assert set(NORMS) == {"none", "batch", "instance", "group"}


@pytest.mark.parametrize("channels,groups", [(16, 2), (32, 4), (256, 32), (512, 32), (24, 3), (12, 1), (4, 1)])
def test_group_norm_groups_of_eight_channels_at_most_thirty_two(channels, groups):
    assert group_count(channels) == groups and channels % groups == 0


def test_deep_supervision_returns_halving_side_outputs_in_training_only():
    torch.manual_seed(0)
    model = UNet(base_filters=4, depth=3, deep_supervision=True)
    outputs = model(torch.rand(2, 3, 32, 32) * 255)
    assert [tuple(o.shape) for o in outputs] == [(2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    sum(o.mean() for o in outputs).backward()
    assert all(head.weight.grad is not None for head in model.side_heads)
    model.eval()
    main = model(torch.rand(2, 3, 32, 32) * 255)
    assert isinstance(main, torch.Tensor) and main.shape == (2, 1, 32, 32)
    # the side heads add parameters only: without them the network is the same
    plain = UNet(base_filters=4, depth=3)
    assert count(model) - count(plain) == sum(4 * 2**level + 1 for level in (1, 2))
    with pytest.raises(ConfigError, match="depth"):
        UNet(depth=1, deep_supervision=True)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_conv_block_equals_its_layers_run_one_by_one(norm):
    # the block runs the ReLU before the dropout inside it (FastDropout.after_relu): nothing may change
    x = torch.randn(2, 3, 16, 16)
    results = []
    for run in (ConvBlock.forward, nn.Sequential.forward):
        torch.manual_seed(0)
        block = ConvBlock(3, 8, 0.3, norm).train()
        leaf = x.clone().requires_grad_()
        torch.manual_seed(1)
        out = run(block, leaf)
        out.square().sum().backward()
        results.append([out, leaf.grad] + [p.grad for p in block.parameters()])
    for fused, plain in zip(*results):
        torch.testing.assert_close(fused, plain, rtol=0, atol=0)
