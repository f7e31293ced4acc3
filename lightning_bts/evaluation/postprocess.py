"""From a tumour probability map to a mask: threshold, connected components, a fallback for empty slices.

:class:`PostProcessing` is a small frozen value; its default is the paper's rule (``probability > 0.5``,
nothing else). The other rules earn their place on validation data (:mod:`lightning_bts.evaluation.selection`)
and travel with the checkpoint (:mod:`lightning_bts.evaluation.settings`).

The same rule is applied at the model's grid and at a slice's own size, so sizes are fractions of the slice
area, not pixel counts: ``min_area=0.001`` removes components under 0.1 % of the slice (262 px at 512x512,
16 px at 128x128). Components are 8-connected (diagonal neighbours touch).

Rules, in the order they act:

1. ``probability > threshold``;
2. ``components``: ``"all"`` keeps every component, ``"largest"`` only the largest (the first in raster order
   on a tie), ``"drop_small"`` those of at least ``min_area`` of the slice;
3. ``empty_fallback``: when steps 1-2 leave the slice empty, the connected component of
   ``probability > empty_fallback`` that holds the most probable pixel (nothing if even that pixel is not above
   ``empty_fallback``). Every slice of the figshare data shows a tumour, so an empty prediction is usually a
   miss; whether a weak guess beats no guess is for validation Dice to say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from lightning_bts.errors import ConfigError

COMPONENT_RULES = ("all", "largest", "drop_small")


@dataclass(frozen=True)
class PostProcessing:
    """How :meth:`apply` turns a probability map into a mask; see the module docstring for the rules.

    Raises:
        ConfigError: a threshold outside (0, 1), an unknown ``components`` rule, ``min_area`` without
            ``components="drop_small"`` (or outside (0, 1) with it).
    """

    threshold: float = 0.5
    components: str = "all"
    min_area: float = 0.0
    empty_fallback: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"post-processing threshold must be between 0 and 1, got {self.threshold}")
        if self.components not in COMPONENT_RULES:
            raise ConfigError(f"unknown post-processing components rule {self.components!r}; choose one of "
                              f"{', '.join(COMPONENT_RULES)}")
        if self.components == "drop_small" and not 0.0 < self.min_area < 1.0:
            raise ConfigError(f"components='drop_small' needs min_area, a fraction of the slice area in (0, 1), "
                              f"got {self.min_area}")
        if self.components != "drop_small" and self.min_area != 0.0:
            raise ConfigError(f"min_area={self.min_area} only applies with components='drop_small' "
                              f"(got components={self.components!r})")
        if self.empty_fallback is not None and not 0.0 < self.empty_fallback < 1.0:
            raise ConfigError(f"empty_fallback must be a probability between 0 and 1, got {self.empty_fallback}")

    def apply(self, probability: np.ndarray) -> np.ndarray:
        """bool ``(H, W)`` mask of a float ``(H, W)`` probability map (any size)."""
        mask = probability > self.threshold
        if self.components != "all" and mask.any():
            _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
            keep = self.kept_components(stats[1:, cv2.CC_STAT_AREA], mask.size)
            mask = np.isin(labels, np.flatnonzero(keep) + 1)
        if self.empty_fallback is not None and not mask.any():
            mask = most_probable_component(probability, self.empty_fallback)
        return mask

    def kept_components(self, areas: np.ndarray, slice_area: int) -> np.ndarray:
        """bool per component: which of the components with pixel counts ``areas`` rule 2 keeps.

        The one definition of rule 2: :meth:`apply` and the selection's counting both call it.
        """
        if self.components == "all" or len(areas) == 0:
            return np.ones(len(areas), dtype=bool)
        if self.components == "largest":
            return np.arange(len(areas)) == int(np.argmax(areas))
        return areas >= self.min_area * slice_area

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "post-processing") -> PostProcessing:
        """A :class:`PostProcessing` from :meth:`as_dict`'s form; ``source`` names where it came from in errors."""
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"{source}: unknown post-processing setting(s) {unknown}; known: {sorted(fields)}")
        return cls(**values)

    @classmethod
    def parse(cls, spec: str) -> PostProcessing:
        """From the command line: ``"paper"`` (the default rule) or ``"key=value,..."`` over the default.

        Example: ``"threshold=0.4,components=largest,empty_fallback=0.2"``.
        """
        spec = spec.strip()
        if spec == "paper":
            return cls()
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, text = item.partition("=")
            if not sep:
                raise ConfigError(f"--postprocessing {spec!r}: expected 'paper' or key=value pairs separated by "
                                  f"commas (e.g. threshold=0.4,components=largest), got {item!r}")
            values[key.strip()] = _value(key.strip(), text.strip(), spec)
        return cls.from_dict(values, source=f"--postprocessing {spec!r}")

    def describe(self) -> str:
        """One line for tables and logs, e.g. ``threshold 0.4, largest component, empty fallback 0.2``."""
        parts = [f"threshold {self.threshold:g}"]
        if self.components == "largest":
            parts.append("largest component only")
        elif self.components == "drop_small":
            parts.append(f"components under {self.min_area:g} of the slice removed")
        if self.empty_fallback is not None:
            parts.append(f"empty slices: most probable component above {self.empty_fallback:g}")
        return ", ".join(parts)


def most_probable_component(probability: np.ndarray, level: float) -> np.ndarray:
    """bool mask: the connected component of ``probability > level`` holding the most probable pixel.

    Empty when no pixel is above ``level``. The most probable pixel is the first maximum in raster order.
    """
    top = int(np.argmax(probability))
    if not probability.flat[top] > level:
        return np.zeros(probability.shape, dtype=bool)
    above = probability > level
    _, labels = cv2.connectedComponents(above.view(np.uint8), connectivity=8)
    return labels == labels.flat[top]


def _value(key: str, text: str, spec: str) -> Any:
    """A command-line value with the type of the field ``key``."""
    if key == "components":
        return text
    if key == "empty_fallback" and text.lower() in ("none", "off", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--postprocessing {spec!r}: {key} must be a number, got {text!r}") from None
