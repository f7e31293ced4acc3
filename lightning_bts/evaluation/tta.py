"""Test-time augmentation by mirroring: which mirrored views of a slice a prediction averages.

A mode names a set of views; the prediction is the mean of the model's probabilities over the views, each
mirrored back first (:meth:`lightning_bts.evaluation.predictor.Predictor.probabilities`):

==========  ==========================================================================================
mode        views
==========  ==========================================================================================
``none``    the slice only
``flip``    the slice and its horizontal (left-right) mirror: the toolkit's TTA since its first version,
            for models trained with horizontal flips (``data.augmentation.flip``)
``mirror``  the slice and its horizontal, vertical and both-axes mirrors: nnU-Net's mirroring along every
            image axis, for models trained with both flips (``flip`` and ``vertical_flip``)
==========  ==========================================================================================

Checkpoints and metrics.json files written before the modes existed store ``true``/``false``:
:func:`check_tta` reads them as ``flip``/``none``.
"""

from __future__ import annotations

from lightning_bts.errors import ConfigError

TTA_MODES = ("none", "flip", "mirror")
"""Simplest first: post-processing selection keeps the first of equally good modes."""

_VIEWS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "flip": ((), (-1,)),
    "mirror": ((), (-1,), (-2,), (-2, -1)),
}
_DESCRIPTIONS = {"none": "", "flip": "flip TTA", "mirror": "mirror TTA (both axes)"}
TTA_CONTRACTS = {
    "none": "none",
    "flip": "horizontal flip: mean of sigmoid(logits) of the slice and, mirrored back, of its mirror",
    "mirror": "mirror along both axes: mean of sigmoid(logits) of the slice and, each mirrored back, of its "
              "horizontal, vertical and both-axes mirrors",
}
"""Each mode in words, for a user who runs an exported model outside the toolkit (ONNX metadata)."""


def check_tta(mode: str | bool | None) -> str:
    """The mode ``mode`` names; ``True``/``False`` (how older files store it) are ``flip``/``none``.

    Raises:
        ConfigError: anything else; the message lists the modes.
    """
    if isinstance(mode, bool):
        return "flip" if mode else "none"
    if mode not in TTA_MODES:
        raise ConfigError(f"TTA mode {mode!r} is unknown; choose one of {', '.join(TTA_MODES)}")
    return mode


def mirror_views(mode: str | bool) -> tuple[tuple[int, ...], ...]:
    """The views of ``mode``: for each, the tensor dims to flip (``()``: the slice as it is)."""
    return _VIEWS[check_tta(mode)]


def describe_tta(mode: str | bool | None) -> str:
    """``", flip TTA"``-style suffix for a rule's description; ``""`` for no TTA (or none recorded)."""
    text = _DESCRIPTIONS[check_tta(mode or False)]
    return f", {text}" if text else ""
