import pytest
import torch

from lightning_bts.models.dropout import FastDropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.3])
def test_keep_rate_is_one_minus_p_in_every_lane(p):
    # each 64-bit word feeds four consecutive elements: a biased lane (e.g. the word's top bit) shows up here
    torch.manual_seed(0)
    x = torch.ones(4_000_000)
    kept = (FastDropout(p).train()(x) != 0).float().view(-1, 4).mean(0)
    sd = (p * (1 - p) / 1_000_000) ** 0.5
    assert torch.all((kept - (1 - p)).abs() < 5 * sd + 2**-15), kept


def test_kept_values_are_scaled_so_the_mean_is_unchanged_and_gradients_follow_the_mask():
    torch.manual_seed(1)
    x = torch.rand(8, 4, 32, 32, requires_grad=True)
    y = FastDropout(0.3).train()(x)
    scale = y[y != 0] / x[y != 0]
    torch.testing.assert_close(scale, torch.full_like(scale, 1 / (1 - round(0.3 * 2**15) / 2**15)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * scale[0])


def test_channels_last_input_keeps_its_layout_and_eval_is_identity():
    x = torch.rand(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    assert FastDropout(0.2).train()(x).is_contiguous(memory_format=torch.channels_last)
    assert FastDropout(0.2).eval()(x) is x


def test_same_seed_same_mask():
    x = torch.ones(1000)
    torch.manual_seed(3)
    first = FastDropout(0.5).train()(x)
    torch.manual_seed(3)
    torch.testing.assert_close(FastDropout(0.5).train()(x), first)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_after_relu_is_relu_then_dropout_with_the_same_mask_values_and_gradients(layout, dtype):
    x = torch.randn(4, 8, 16, 16, dtype=dtype).contiguous(memory_format=layout)
    grad = torch.randn_like(x)
    dropout = FastDropout(0.3).train()
    results = []
    for fused in (False, True):
        leaf = x.clone().requires_grad_()
        torch.manual_seed(5)
        y = dropout.after_relu(leaf * 1) if fused else dropout(torch.relu(leaf))
        y.backward(grad)
        results.append((y, leaf.grad))
    (plain_y, plain_grad), (fused_y, fused_grad) = results
    assert fused_y.is_contiguous(memory_format=layout)
    assert torch.equal(fused_y, plain_y)
    assert torch.equal(fused_grad, plain_grad)
    assert 0 < (fused_grad == 0).float().mean() < 1  # both the ReLU and the mask zero some gradients


def test_after_relu_keeps_one_tensor_for_backward_where_two_layers_keep_two():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    dropout = FastDropout(0.2).train()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        dropout.after_relu(x * 1)
    fused = len(saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        dropout(torch.relu(x * 1))
    assert (fused, len(saved)) == (1, 2)


def test_after_relu_outside_training_is_relu():
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(FastDropout(0.2).eval().after_relu(x.clone()), torch.relu(x))
    torch.testing.assert_close(FastDropout(0.0).train().after_relu(x.clone()), torch.relu(x))
