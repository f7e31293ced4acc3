"""Skull stripping of 2-D MRI slices: the paper's method, and a safe one that never cuts into the head.

The paper blurs the slice, thresholds it with Otsu, keeps the largest connected component and fills its
holes; the image is then multiplied by that mask. On the figshare T1-CE slices the largest component is
sometimes the brain alone, and its outline then runs *inside* tumours at the brain's edge: pituitary
tumours in the sella at the skull base, extra-axial meningiomas, cortical gliomas. Such a tumour is either
a separate component (dark rim) or lies in a concavity of the brain outline, which hole filling does not
close. Over the 2112 shared slices this drops tumour pixels on 132 slices and the whole tumour on 19
(``reports/skull_strip_retention.md``).

``"safe"`` keeps every Otsu component of at least :data:`MIN_COMPONENT_SHARE` of the largest one (brain,
scalp, face: not noise specks) and takes their *convex hull*, widened by :data:`SAFE_MARGIN_FRACTION` of
the image side. That is the head without the air around it: it zeros about 43% of each image (the paper:
51%) but almost nothing inside the head (0.7% of it; the paper: 9%), so it removes background noise and
detached artefacts, not skull. It loses no tumour pixel on the shared set, nor when the slices are
darkened (gamma 1.6) or brightened (gamma 0.6), noised or downsized. The alternative that strips more of
the head (1.5%), the convex hull of the largest component alone plus a margin, keeps every tumour too,
but loses tumours on 10 slices (2 whole) after a mild gamma 1.3: whether the largest component is the
brain depends on contrast, and new scans at inference may differ.

Masks are never stripped and no mask is needed: the same function runs on new scans at inference.
"""

from __future__ import annotations

import cv2
import numpy as np

SKULL_STRIP_METHODS = ("none", "paper", "safe")

BLUR_KERNEL = (5, 5)
"""Gaussian blur before Otsu, as in the paper (sigma derived from the kernel size by OpenCV)."""

MIN_COMPONENT_SHARE = 0.02
"""``"safe"`` keeps components of at least this fraction of the largest one's area.

Relative, not absolute, so that it adapts when contrast leaves only small pieces above the threshold
(0.1 loses tumour on 6 darkened slices, 0.02 on none)."""

SAFE_MARGIN_FRACTION = 0.01
"""Margin around the convex hull, as a fraction of the longer image side (5 px at 512 px).

Not needed on the shared set (no tumour lies outside the hull); a guard for tumours reaching the edge of
the head, whose blurred rim can fall below the threshold."""

MIN_HEAD_FRACTION = 0.05
"""A hull below this fraction of the image is implausible as a head (an artefact took the threshold):
``"safe"`` then keeps the whole image. The smallest hull on the shared set covers 13% of its image."""


def brain_mask(image: np.ndarray, method: str = "safe") -> np.ndarray:
    """Boolean ``(H, W)`` mask of the pixels to keep.

    Args:
        image: uint8 slice, ``(H, W)`` grayscale, ``(H, W, 1)``, or ``(H, W, 3)`` RGB (converted to gray).
        method: one of :data:`SKULL_STRIP_METHODS`; ``"none"`` keeps every pixel.

    Raises:
        ValueError: unknown method, or an image that is not uint8 ``(H, W)``/``(H, W, 1)``/``(H, W, 3)``.
    """
    _check_method(method)
    gray = _grayscale(image)
    if method == "none":
        return np.ones(gray.shape, bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(_otsu_foreground(gray), connectivity=8)
    if count <= 1:  # no foreground at all (a blank slice): nothing to tell brain from background
        return np.ones(gray.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(gray.shape, np.uint8)
    if method == "paper":  # filling the outer contour = the largest component with its holes filled
        largest = (labels == 1 + int(np.argmax(areas))).astype(np.uint8)
        cv2.drawContours(keep, _outer_contours(largest), -1, 1, thickness=cv2.FILLED)
        return keep.astype(bool)
    kept = np.isin(labels, 1 + np.flatnonzero(areas >= MIN_COMPONENT_SHARE * areas.max())).astype(np.uint8)
    cv2.fillConvexPoly(keep, cv2.convexHull(np.vstack(_outer_contours(kept))), 1)
    if keep.mean() < MIN_HEAD_FRACTION:
        return np.ones(gray.shape, bool)
    # Distance of each pixel outside the hull to the hull (5x5 chamfer: within a pixel of Euclidean, 2.5x
    # faster than exact); <= margin is a dilation by a disc of radius margin.
    return cv2.distanceTransform(1 - keep, cv2.DIST_L2, 5) <= SAFE_MARGIN_FRACTION * max(gray.shape)


def strip_skull(image: np.ndarray, method: str = "safe") -> np.ndarray:
    """``image`` with every pixel outside :func:`brain_mask` set to 0; same dtype and shape.

    ``"none"`` returns ``image`` itself, unchanged (not a copy).
    """
    _check_method(method)
    if method == "none":
        return image
    keep = brain_mask(image, method)
    return np.where(keep[..., None] if image.ndim == 3 else keep, image, 0).astype(image.dtype, copy=False)


def _check_method(method: str) -> None:
    if method not in SKULL_STRIP_METHODS:
        raise ValueError(f"unknown skull strip method {method!r}; choose one of {', '.join(SKULL_STRIP_METHODS)}")


def _grayscale(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise ValueError(f"skull stripping expects uint8 images, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {image.shape}")


def _otsu_foreground(gray: np.ndarray) -> np.ndarray:
    """uint8 {0, 255}: pixels above the Otsu threshold of the blurred slice."""
    blurred = cv2.GaussianBlur(gray, BLUR_KERNEL, 0)
    return cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]


def _outer_contours(binary: np.ndarray) -> tuple[np.ndarray, ...]:
    return cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
