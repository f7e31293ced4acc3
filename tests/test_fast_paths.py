"""Every optimised path computes what the plain fp32 model computes (issue: CPU performance)."""

import pytest
import torch

from lightning_bts.losses import build_loss
from lightning_bts.models import UNet


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = UNet().eval()
    images = torch.rand(2, 3, 64, 64) * 255
    return model, images


def test_channels_last_gives_the_same_outputs(model_and_images):
    model, images = model_and_images
    with torch.no_grad():
        expected = model(images)
        fast = UNet().eval()
        fast.load_state_dict(model.state_dict())
        fast = fast.to(memory_format=torch.channels_last)
        actual = fast(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_predictions_agree_with_fp32(model_and_images):
    """bf16 keeps 8 mantissa bits: logits differ by a few percent, masks on a small fraction of pixels."""
    model, images = model_and_images
    with torch.no_grad():
        expected = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = model(images).float()
    scale = expected.abs().max()
    assert (actual - expected).abs().max() <= 0.05 * scale
    agreement = ((actual > 0) == (expected > 0)).float().mean()
    assert agreement >= 0.99, f"masks agree on only {agreement:.2%} of pixels"


def test_bf16_training_step_gradients_point_the_same_way():
    torch.manual_seed(1)
    model = UNet(dropout_down=[0.0] * 5, dropout_up=[0.0] * 4)
    images = torch.rand(2, 3, 32, 32) * 255
    masks = (torch.rand(2, 1, 32, 32) > 0.9).float()
    loss_fn = build_loss("focal")
    grads = []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(images), masks)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cosine > 0.98, f"bf16 gradient direction differs: cosine {cosine:.4f}"


@pytest.mark.slow
def test_compiled_model_gives_the_same_outputs(model_and_images):
    model, images = model_and_images
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images), atol=1e-4, rtol=1e-4)
