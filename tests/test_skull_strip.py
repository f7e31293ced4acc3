"""Skull stripping: the paper's method drops tumours at the brain's edge, ``"safe"`` keeps them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lightning_bts.data.retention import measure_retention, summarize
from lightning_bts.data.skull_strip import SKULL_STRIP_METHODS, brain_mask, strip_skull

SIZE = 256
CENTER = (SIZE // 2, SIZE // 2)
SAMPLE_ROOT = Path(__file__).resolve().parents[1] / "data" / "sample"


def synthetic_head() -> tuple[np.ndarray, np.ndarray]:
    """A slice like a sagittal one through the sella, and its tumour mask.

    Faint background noise (air, 10), a bright scalp ring (radii 110-120) around a dark skull gap, a brain
    disc (radius 90) with a bite out of its lower edge, and a bright tumour in the bite, separated from the
    brain by a dark rim, as a pituitary tumour sits in the sella below the brain.
    """
    image = np.full((SIZE, SIZE), 10, np.uint8)
    cv2.circle(image, CENTER, 120, 200, -1)
    cv2.circle(image, CENTER, 110, 20, -1)
    cv2.circle(image, CENTER, 90, 120, -1)
    bite_center = (CENTER[0], CENTER[1] + 90)
    cv2.circle(image, bite_center, 35, 20, -1)
    tumour = np.zeros_like(image)
    cv2.circle(tumour, (CENTER[0], CENTER[1] + 70), 8, 1, -1)
    image[tumour > 0] = 180
    return image, tumour.astype(bool)


def test_paper_drops_the_tumour_and_safe_keeps_it():
    image, tumour = synthetic_head()
    paper, safe = brain_mask(image, "paper"), brain_mask(image, "safe")
    assert not paper[tumour].any(), "the paper keeps only the brain, the largest component"
    assert paper[CENTER[1], CENTER[0]]
    assert safe[tumour].all()


def test_safe_still_removes_the_air_around_the_head():
    image, _ = synthetic_head()
    stripped = strip_skull(image, "safe")
    assert image[0, 0] == 10 and stripped[0, 0] == 0
    assert 0.2 < 1 - brain_mask(image, "safe").mean() < 0.35  # outside the head (radius 120) + margin
    assert np.array_equal(
        stripped[CENTER[1] - 100 : CENTER[1] + 100, CENTER[0]], image[CENTER[1] - 100 : CENTER[1] + 100, CENTER[0]]
    )


def test_safe_ignores_small_specks_outside_the_head():
    image, _ = synthetic_head()
    cv2.rectangle(image, (2, 2), (6, 6), 255, -1)  # an artefact in the air: far below 2% of the head
    assert not brain_mask(image, "safe")[4, 4]


def test_safe_keeps_everything_when_the_foreground_is_implausibly_small():
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[100:110, 100:110] = 255  # only a tiny bright spot passes the threshold
    assert brain_mask(image, "safe").all()


@pytest.mark.parametrize("method", SKULL_STRIP_METHODS)
def test_blank_slice_is_kept_whole(method):
    blank = np.zeros((32, 32), np.uint8)
    assert brain_mask(blank, method).all()
    assert not strip_skull(blank, method).any()


@pytest.mark.parametrize("method", SKULL_STRIP_METHODS)
def test_dtype_and_shape_are_kept(method):
    image, _ = synthetic_head()
    for variant in (image, image[..., None], cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)):
        stripped = strip_skull(variant, method)
        assert stripped.dtype == np.uint8 and stripped.shape == variant.shape
        assert brain_mask(variant, method).shape == image.shape


@pytest.mark.parametrize("method", ["paper", "safe"])
def test_rgb_is_stripped_like_its_grayscale(method):
    image, _ = synthetic_head()
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    assert np.array_equal(brain_mask(rgb, method), brain_mask(image, method))
    assert np.array_equal(strip_skull(rgb, method), cv2.cvtColor(strip_skull(image, method), cv2.COLOR_GRAY2RGB))


def test_none_is_the_identity():
    image, _ = synthetic_head()
    assert strip_skull(image, "none") is image
    assert brain_mask(image, "none").all()


@pytest.mark.parametrize("call", [brain_mask, strip_skull])
def test_unknown_method_lists_the_valid_ones(call):
    with pytest.raises(ValueError, match="unknown skull strip method 'otsu'") as error:
        call(np.zeros((8, 8), np.uint8), "otsu")
    assert all(name in str(error.value) for name in SKULL_STRIP_METHODS)


def test_non_uint8_images_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        brain_mask(np.zeros((8, 8), np.float32))


def test_measure_retention_table(tiny_dataset):
    table = measure_retention(tiny_dataset, "safe", workers=1)
    assert len(table) == 18
    assert list(table.columns) == [
        "method",
        "slice",
        "tumor_type",
        "tumour_pixels",
        "kept_pixels",
        "retained_fraction",
        "removed_fraction",
        "head_removed_fraction",
        "mask_cpu_seconds",
    ]
    assert (table["retained_fraction"] == 1).all() and (table["removed_fraction"] > 0.3).all()
    summary = summarize(table).set_index("tumor_type")
    assert summary.loc["all", "slices"] == 18 and summary.loc["all", "any_loss"] == 0


def test_measure_retention_refuses_unknown_method_before_reading(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        measure_retention(tmp_path / "absent", "otsu")


def test_retention_on_the_shipped_sample():
    """The sample's 129 real slices (256 px): the paper loses three pituitary tumours, safe none."""
    tables = [measure_retention(SAMPLE_ROOT, method, workers=1) for method in ("paper", "safe")]
    table = summarize(pd.concat(tables)).set_index(["method", "tumor_type"])
    assert table.loc[("paper", "pituitary"), "total_loss"] == 3
    assert table.loc[("safe", "all"), "any_loss"] == 0
    assert table.loc[("safe", "all"), "mean_removed"] > 0.3


@pytest.mark.slow
@pytest.mark.shared_data
def test_safe_keeps_every_tumour_pixel_of_the_shared_set(shared_root):
    """Measured over all 2112 slices (``reports/skull_strip_retention.md``): no tumour pixel is lost."""
    table = measure_retention(shared_root, "safe")
    assert len(table) == 2112
    losing = table[table["kept_pixels"] < table["tumour_pixels"]]
    assert losing.empty, f"{len(losing)} slices lose tumour pixels, e.g. {losing['slice'].head().tolist()}"
    assert table["removed_fraction"].mean() > 0.4  # measured 0.434: it still removes the air around the head
