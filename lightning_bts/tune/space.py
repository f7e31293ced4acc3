"""What a sweep searches: the tunable fit.py options with a check for each value, and the search-space YAML
(``configs/tune_space.yaml``) read, validated and turned into Ray Tune samplers. Tune names the metric ``val_dice``:
a ``/`` in a result key would be read as nesting by Tune's result tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from lightning_bts.errors import UserError
from lightning_bts.losses import LOSS_NAMES

METRIC = "val_dice"  # Tune's name for Lightning's val/dice
MODE = "max"
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _non_negative(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# The options a sweep may tune, each with a check for one of its values (the same rules the classes enforce,
# checked here so a bad space fails before any trial starts). Extend by adding a key and its check.
TUNABLE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.lr": (_positive, "a number > 0"),
    "data.batch_size": (_positive_int, "an integer > 0"),
    "model.loss": (lambda v: v in LOSS_NAMES, f"one of {', '.join(LOSS_NAMES)}"),
    "model.focal_gamma": (_non_negative, "a number >= 0"),
    "model.focal_alpha": (lambda v: v is None or (_non_negative(v) and v <= 1), "null or a number in [0, 1]"),
    "model.dropout_scale": (_non_negative, "a number >= 0"),
    "model.base_filters": (_positive_int, "an integer > 0"),
    "data.augment": (_non_negative, "a number >= 0"),
}


class TuneSetupError(UserError):
    """Bad sweep input, found before any trial started."""


# ----------------------------------------------------------------------------------------------- search space


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and validate a search-space YAML (see configs/tune_space.yaml)."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise TuneSetupError(f"cannot read search space {path}: {error}") from error
    return validate_space(spec, source=str(path))


def validate_space(spec: Any, source: str = "search space") -> dict[str, dict[str, Any]]:
    """Check every key is tunable and every distribution well-formed with valid values; return a plain dict."""
    if not isinstance(spec, Mapping) or not spec:
        raise TuneSetupError(f"{source}: expected a non-empty mapping KEY: {{DISTRIBUTION: ARGS}}, got {spec!r}")
    unknown = sorted(set(spec) - set(TUNABLE))
    if unknown:
        raise TuneSetupError(f"{source}: unknown search-space key(s) {', '.join(map(str, unknown))}; "
                             f"tunable keys are {', '.join(TUNABLE)}")
    space = {}
    for key, entry in spec.items():
        if not isinstance(entry, Mapping) or len(entry) != 1 or next(iter(entry)) not in DISTRIBUTIONS:
            raise TuneSetupError(f"{source}: {key} must be one of {{choice: [...]}}, {{uniform: [low, high]}}, "
                                 f"{{loguniform: [low, high]}}, {{randint: [low, high]}}; got {entry!r}")
        kind, args = next(iter(entry.items()))
        if not isinstance(args, list) or not args or (kind != "choice" and len(args) != 2):
            wanted = "a list of values" if kind == "choice" else "[low, high]"
            raise TuneSetupError(f"{source}: {key}: {kind} takes {wanted}, got {args!r}")
        numbers = all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
        if kind != "choice" and not (numbers and args[0] < args[1]):
            raise TuneSetupError(f"{source}: {key}: {kind} needs numbers low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise TuneSetupError(f"{source}: {key}: loguniform needs low > 0, got {args!r}")
        check, expected = TUNABLE[key]
        values = args if kind == "choice" else [args[0], args[1] - 1 if kind == "randint" else args[1]]
        bad = [v for v in values if not check(v)]
        if bad:
            raise TuneSetupError(f"{source}: {key} must be {expected}; {kind} {args!r} allows {bad[0]!r}")
        space[str(key)] = {kind: list(args)}
    return space


def tune_space(space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The validated space as Ray Tune samplers (OptunaSearch converts these itself)."""
    from ray import tune

    samplers = {"choice": lambda a: tune.choice(a), "uniform": lambda a: tune.uniform(*a),
                "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a)}
    return {key: samplers[kind](args) for key, entry in space.items() for kind, args in entry.items()}
