import math

import pytest
import torch

from lightning_bts.losses import LOSS_NAMES, DeepSupervisionLoss, build_loss, deep_supervision_weights


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("logit,label", [(0.0, 1.0), (2.0, 1.0), (-1.5, 0.0), (3.0, 0.0)])
def test_bce_matches_closed_form(logit, label):
    p = sigmoid(logit)
    expected = -(label * math.log(p) + (1 - label) * math.log(1 - p))
    value = build_loss("bce")(torch.tensor([[[[logit]]]]), torch.tensor([[[[label]]]]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("logit,label", [(0.0, 1.0), (2.0, 1.0), (-1.5, 0.0), (3.0, 0.0)])
def test_focal_matches_closed_form(logit, label):
    p = sigmoid(logit)
    expected = -((1 - p) ** 2) * math.log(p) if label else -(p**2) * math.log(1 - p)
    value = build_loss("focal")(torch.tensor([[[[logit]]]]), torch.tensor([[[[label]]]]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_focal_with_gamma_zero_is_bce():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8) * 3, (torch.rand(2, 1, 8, 8) > 0.5).float()
    focal = build_loss("focal", gamma=0.0)(logits, target)
    torch.testing.assert_close(focal, build_loss("bce")(logits, target))


def test_alpha_balances_positive_and_negative_terms():
    logits = torch.tensor([[[[1.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    plain = build_loss("focal")(logits, target)
    balanced = build_loss("focal", alpha=0.25)(logits, target)
    p = sigmoid(1.0)
    positive, negative = -((1 - p) ** 2) * math.log(p), -((1 - p) ** 2) * math.log(p)  # symmetric logits
    assert plain.item() == pytest.approx((positive + negative) / 2, rel=1e-6)
    assert balanced.item() == pytest.approx((0.25 * positive + 0.75 * negative) / 2, rel=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_saturated_logits_give_finite_loss_and_gradients(name):
    logits = torch.tensor([[[[1e4, -1e4, 1e4, -1e4]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 1.0, 1.0, 0.0]]]])
    loss = build_loss(name)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_keras_clipping_bounds_the_loss_of_a_confident_mistake():
    # keras.losses.binary_crossentropy on probabilities clips p into [1e-7, 1 - 1e-7]: a wrong, saturated
    # pixel costs -log(1e-7), not infinity. In training Keras uses the sigmoid's logits, unclipped: our default.
    logits, target = torch.tensor([[[[-100.0]]]]), torch.tensor([[[[1.0]]]])
    assert build_loss("bce", eps=1e-7)(logits, target).item() == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert build_loss("bce")(logits, target).item() == pytest.approx(100.0, rel=1e-6)


def test_focal_clips_from_below_by_default_as_the_focal_loss_package():
    logits, target = torch.tensor([[[[-100.0]]]]), torch.tensor([[[[1.0]]]])
    assert build_loss("focal")(logits, target).item() == pytest.approx(-math.log(1e-7) * (1 - 1e-7) ** 2, rel=1e-5)


def test_dice_loss_is_zero_for_a_perfect_confident_prediction():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:5, 2:5] = 1
    logits = (target * 2 - 1) * 50
    assert build_loss("dice")(logits, target).item() == pytest.approx(0.0, abs=1e-4)


def test_compound_losses_are_sums():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    dice = build_loss("dice")(logits, target)
    torch.testing.assert_close(build_loss("dice_focal")(logits, target), dice + build_loss("focal")(logits, target))
    torch.testing.assert_close(build_loss("dice_bce")(logits, target), dice + build_loss("bce")(logits, target))


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="focal"):
        build_loss("hinge")


@pytest.mark.parametrize("kwargs", [{"gamma": -1.0}, {"alpha": 1.5}])
def test_bad_focal_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        build_loss("focal", **kwargs)


def test_smp_dice_already_pools_over_the_batch():
    """What the README claims about `dice`: smp's binary DiceLoss is one Dice over all pixels of the batch."""
    target = torch.zeros(2, 1, 6, 6)
    target[0, :, :4, :4] = 1  # a large tumour, found
    target[1, :, 0, 0] = 1  # a one-pixel tumour, missed
    logits = (target * 2 - 1) * 3
    logits[1, :, 0, 0] = -3
    p = torch.sigmoid(logits)
    pooled = 1 - 2 * (p * target).sum() / (p.sum() + target.sum())
    per_image = (1 - 2 * (p * target).sum((1, 2, 3)) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)))).mean()
    value = build_loss("dice")(logits, target)
    assert value.item() == pytest.approx(pooled.item(), rel=1e-5)
    assert abs(value.item() - per_image.item()) > 1e-3


def test_batch_dice_is_the_pooled_formula_by_hand():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]], [[[-2.0, 1.0], [0.0, 4.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    p = [sigmoid(x) for x in logits.flatten().tolist()]
    t = target.flatten().tolist()
    intersection, total = sum(a * b for a, b in zip(p, t)), sum(p) + sum(t)
    expected = 1 - (2 * intersection + 1e-5) / (total + 1e-5)
    assert build_loss("dice_batch")(logits, target).item() == pytest.approx(expected, rel=1e-6)
    bce = build_loss("bce")(logits, target).item()
    assert build_loss("dice_bce_batch")(logits, target).item() == pytest.approx(expected + bce, rel=1e-6)


def test_per_image_dice_is_the_mean_of_each_images_dice():
    torch.manual_seed(3)
    logits, target = torch.randn(4, 1, 5, 5), (torch.rand(4, 1, 5, 5) > 0.5).float()
    each = [build_loss("dice_batch")(logits[i : i + 1], target[i : i + 1]) for i in range(4)]
    expected = torch.stack(each).mean()
    torch.testing.assert_close(build_loss("dice_image")(logits, target), expected)
    bce = build_loss("bce")(logits, target)
    torch.testing.assert_close(build_loss("dice_bce_image")(logits, target), expected + bce)
    assert abs(expected - build_loss("dice_batch")(logits, target)) > 1e-3  # the two forms differ


def test_batch_dice_scores_a_batch_without_tumour_unlike_smp_dice():
    logits, target = torch.full((2, 1, 4, 4), 1.0), torch.zeros(2, 1, 4, 4)
    assert build_loss("dice")(logits, target).item() == 0.0  # smp: no signal on a tumour-free batch
    assert build_loss("dice_batch")(logits, target).item() == pytest.approx(1.0, abs=1e-5)
    perfect = torch.full((2, 1, 4, 4), -30.0)
    assert build_loss("dice_batch")(perfect, target).item() < 0.01


def test_deep_supervision_weights_halve_and_sum_to_one():
    torch.testing.assert_close(deep_supervision_weights(3), torch.tensor([4 / 7, 2 / 7, 1 / 7]))


def test_deep_supervision_loss_scores_each_output_on_a_nearest_downsampled_mask():
    torch.manual_seed(4)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    outputs = [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 2, 2)]
    bce = build_loss("bce")
    expected = (4 * bce(outputs[0], target) + 2 * bce(outputs[1], target[..., ::2, ::2])
                + bce(outputs[2], target[..., ::4, ::4])) / 7
    torch.testing.assert_close(DeepSupervisionLoss(bce)(outputs, target), expected)
    torch.testing.assert_close(DeepSupervisionLoss(bce)(outputs[0], target), bce(outputs[0], target))  # eval: plain
