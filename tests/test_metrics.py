import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from lightning_bts.metrics import HausdorffMetrics, OverlapMetrics, _boundary, hausdorff_distances


def random_batch(seed: int, n: int = 6, size: int = 24):
    rng = np.random.default_rng(seed)
    target = (rng.random((n, 1, size, size)) > 0.8).astype(np.float32)
    logits = rng.normal(size=(n, 1, size, size)).astype(np.float32) + 2 * (target - 0.5)
    return torch.from_numpy(logits), torch.from_numpy(target)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_metrics_match_sklearn(seed):
    logits, target = random_batch(seed)
    metric = OverlapMetrics()
    metric.update(logits[:3], target[:3])
    metric.update(logits[3:], target[3:])  # accumulates across batches
    scores = metric.compute()
    y, p = target.flatten().numpy(), (logits > 0).flatten().numpy().astype(np.float32)
    assert scores["dice"].item() == pytest.approx(f1_score(y, p), abs=1e-6)
    assert scores["iou"].item() == pytest.approx(jaccard_score(y, p), abs=1e-6)
    assert scores["precision"].item() == pytest.approx(precision_score(y, p), abs=1e-6)
    assert scores["recall"].item() == pytest.approx(recall_score(y, p), abs=1e-6)
    assert scores["accuracy"].item() == pytest.approx(accuracy_score(y, p), abs=1e-6)
    assert scores["specificity"].item() == pytest.approx(recall_score(1 - y, 1 - p), abs=1e-6)


def test_per_image_metrics_are_means_of_sklearn_per_image():
    logits, target = random_batch(3)
    metric = OverlapMetrics()
    metric.update(logits, target)
    scores = metric.compute()
    per_image = [f1_score(t.flatten().numpy(), (x > 0).flatten().numpy()) for x, t in zip(logits, target)]
    assert scores["dice_per_image"].item() == pytest.approx(np.mean(per_image), abs=1e-6)
    np.testing.assert_allclose(metric.per_image_scores()["dice"].numpy(), per_image, atol=1e-6)


def test_threshold_is_applied_to_probabilities():
    logits = torch.tensor([[[[0.5, 1.5]]]])  # probabilities 0.62 and 0.82
    target = torch.tensor([[[[1.0, 1.0]]]])
    metric = OverlapMetrics(threshold=0.7)
    metric.update(logits, target)
    assert metric.compute()["recall"].item() == pytest.approx(0.5)


def test_empty_target_and_empty_prediction_score_one_not_nan():
    metric = OverlapMetrics()
    metric.update(torch.full((1, 1, 4, 4), -5.0), torch.zeros(1, 1, 4, 4))
    scores = metric.compute()
    assert all(torch.isfinite(v) for v in scores.values())
    assert scores["dice_per_image"].item() == 1.0 and scores["precision_per_image"].item() == 1.0


def test_empty_prediction_on_a_tumour_scores_zero_and_lowers_the_mean():
    target = torch.zeros(2, 1, 4, 4)
    target[:, :, 1:3, 1:3] = 1
    logits = torch.where(target > 0, 5.0, -5.0)
    logits[1] = -5.0  # second image: nothing predicted
    metric = OverlapMetrics()
    metric.update(logits, target)
    scores = metric.compute()
    assert scores["precision_per_image"].item() == pytest.approx(0.5)  # (1 + 0) / 2, no NaN dropped
    assert scores["dice_per_image"].item() == pytest.approx(0.5)


def test_hausdorff_matches_scipy_directed_hausdorff():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pred = rng.random((32, 32)) > 0.9
        target = rng.random((32, 32)) > 0.9
        hd, hd95, empty = hausdorff_distances(pred, target)
        a, b = np.argwhere(pred), np.argwhere(target)
        expected = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
        # scipy compares all pixels; boundaries give the same maximum for Euclidean distances
        assert hd == pytest.approx(expected, rel=1e-6)
        assert hd95 <= hd and not empty


def test_hd95_is_the_larger_directed_95th_percentile():
    pred = np.zeros((40, 40), bool)
    target = np.zeros((40, 40), bool)
    pred[10, 10] = True
    target[10, 10:31] = True  # distances 0..20 from the single predicted pixel
    hd, hd95, _ = hausdorff_distances(pred, target)
    assert hd == pytest.approx(20.0)
    assert hd95 == pytest.approx(np.percentile(np.arange(21), 95))


def test_spacing_converts_to_millimetres():
    pred = np.zeros((20, 20), bool)
    target = np.zeros((20, 20), bool)
    pred[5, 5] = target[5, 15] = True
    assert hausdorff_distances(pred, target)[0] == pytest.approx(10.0)
    assert hausdorff_distances(pred, target, spacing=(0.5, 0.8))[0] == pytest.approx(8.0)


def test_one_empty_mask_scores_the_image_diagonal_and_is_counted():
    pred = np.zeros((30, 40), bool)
    target = np.zeros((30, 40), bool)
    target[5:8, 5:8] = True
    hd, hd95, empty = hausdorff_distances(pred, target)
    assert hd == hd95 == pytest.approx(50.0) and empty
    assert hausdorff_distances(pred, pred) == (0.0, 0.0, False)
    metric = HausdorffMetrics()
    metric.update(torch.full((1, 1, 30, 40), -5.0), torch.from_numpy(target[None, None].astype(np.float32)))
    scores = metric.compute()
    assert scores["hd"].item() == pytest.approx(50.0) and scores["hd_empty"].item() == 1


def test_hausdorff_scores_live_on_the_metric_device():
    """On a GPU the module stacks them with the overlap scores, which live there: CPU states broke that."""
    metric = HausdorffMetrics().to("meta")  # a device that is not the CPU, on any machine
    target = torch.zeros((2, 1, 16, 16))
    target[:, :, 4:9, 4:9] = 1
    metric.update(torch.where(target > 0, 5.0, -5.0), target)
    assert {value.device.type for value in metric.compute().values()} == {"meta"}


def test_bad_threshold_is_rejected():
    with pytest.raises(ValueError, match="between 0 and 1"):
        OverlapMetrics(threshold=1.0)


def _boundary_points(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Foreground pixels with a 4-neighbour outside the mask (or the image), in physical units: by padding."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return np.argwhere(mask & ~inner) * np.asarray(spacing)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 0.8)])
def test_hd95_matches_an_all_pairs_oracle(spacing):
    """HD95 from every boundary-to-boundary distance (SciPy's cdist), not from distance transforms."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(1)
    for _ in range(5):
        pred = np.zeros((48, 40), bool)
        target = np.zeros((48, 40), bool)
        pred[rng.integers(5, 20):rng.integers(25, 45), rng.integers(3, 15):rng.integers(20, 38)] = True
        target[rng.integers(0, 25):rng.integers(30, 48), rng.integers(0, 18):rng.integers(22, 40)] = True
        pred[rng.random(pred.shape) > 0.97] = True  # scattered islands: a long tail of distances
        distances = cdist(_boundary_points(pred, spacing), _boundary_points(target, spacing))
        to_target, to_pred = distances.min(axis=1), distances.min(axis=0)
        hd, hd95, _ = hausdorff_distances(pred, target, spacing=spacing)
        assert hd == pytest.approx(max(to_target.max(), to_pred.max()), rel=1e-9)
        assert hd95 == pytest.approx(max(np.percentile(to_target, 95), np.percentile(to_pred, 95)), rel=1e-9)
        assert hd95 < hd  # the islands make the maximum an outlier that HD95 leaves out


@pytest.mark.parametrize("corner", [False, True])
def test_small_masks_in_a_large_slice_match_the_oracle(corner):
    """Distances are computed in the box around both masks: exact in the middle of a slice and at its edges."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(2)
    spacing = (0.7, 0.45)
    for _ in range(5):
        pred = np.zeros((200, 160), bool)
        target = np.zeros((200, 160), bool)
        top, left = (0, 0) if corner else (rng.integers(40, 120), rng.integers(40, 100))
        target[top:top + rng.integers(8, 30), left:left + rng.integers(8, 30)] = True
        rows = slice(top + rng.integers(0, 6), top + rng.integers(10, 34))
        pred[rows, left + rng.integers(0, 6):left + rng.integers(10, 34)] = True
        pred[top + 40, left + 45] = True  # an island outside the tumour
        distances = cdist(_boundary_points(pred, spacing), _boundary_points(target, spacing))
        to_target, to_pred = distances.min(axis=1), distances.min(axis=0)
        hd, hd95, _ = hausdorff_distances(pred, target, spacing=spacing)
        assert hd == pytest.approx(max(to_target.max(), to_pred.max()), rel=1e-9)
        assert hd95 == pytest.approx(max(np.percentile(to_target, 95), np.percentile(to_pred, 95)), rel=1e-9)


def test_volumes_are_cropped_exactly():
    """The same box in three dimensions: the cropped result equals the distance transform of the whole volume."""
    pred = np.zeros((20, 64, 64), bool)
    target = np.zeros((20, 64, 64), bool)
    target[5:12, 20:35, 22:40] = True
    pred[6:13, 22:38, 20:37] = True
    pred[14, 45, 30] = True  # an island: the box is still well inside the volume
    whole_target = ndimage.distance_transform_edt(~_boundary(target), sampling=(3.0, 0.8, 0.8))[_boundary(pred)]
    whole_pred = ndimage.distance_transform_edt(~_boundary(pred), sampling=(3.0, 0.8, 0.8))[_boundary(target)]
    hd, hd95, _ = hausdorff_distances(pred, target, spacing=(3.0, 0.8, 0.8))
    assert hd == pytest.approx(max(whole_target.max(), whole_pred.max()), rel=1e-12)
    assert hd95 == pytest.approx(max(np.percentile(whole_target, 95), np.percentile(whole_pred, 95)), rel=1e-12)
