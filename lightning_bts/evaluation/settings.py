"""The post-processing and TTA a checkpoint carries, and which one a run uses.

:mod:`lightning_bts.evaluation.selection` stores its choice *inside* the checkpoint file, as the top-level
entry ``"postprocessing"`` (plain data: the checkpoint still loads with ``weights_only=True``, and Lightning
ignores the entry when it resumes a fit)::

    {"postprocessing": {"threshold": 0.4, "components": "largest", "min_area": 0.0, "empty_fallback": null},
     "tta": "flip",
     "selection": {... what it was chosen on, every candidate's validation Dice ...}}

Inside rather than beside it: a checkpoint is copied, renamed and shipped as one file, and a stored choice must
go wherever the weights go. Evaluation, prediction and the cross-validation report read it through
:func:`resolve_settings`; a checkpoint without it gets the paper's rule (threshold 0.5, no TTA). The members
of an ensemble must agree (selecting for the ensemble stores the same choice in each). ``"tta"`` is a mode of
:mod:`lightning_bts.evaluation.tta`; checkpoints stored before the modes existed hold ``true``/``false``
(``flip``/``none``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_bts.errors import ConfigError
from lightning_bts.evaluation.postprocess import PostProcessing
from lightning_bts.evaluation.tta import TTA_MODES, check_tta, describe_tta
from lightning_bts.training.checkpoints import CheckpointError, CheckpointInfo, write_checkpoint_entry

STORED_KEY = "postprocessing"


@dataclass(frozen=True)
class InferenceSettings:
    """What happens after the models: the TTA mode, and the post-processing rule.

    ``source`` says where the settings came from, for metrics.json and logs: ``"default"`` (the paper's),
    ``"checkpoint"`` (stored by a selection), ``"command line"``, or ``"checkpoint + command line"``.
    """

    postprocessing: PostProcessing = field(default_factory=PostProcessing)
    tta: str = "none"
    source: str = "default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tta", check_tta(self.tta))  # True/False from older callers: flip/none

    def describe(self) -> str:
        return f"{self.postprocessing.describe()}{describe_tta(self.tta)} ({self.source})"


def stored_settings(info: CheckpointInfo) -> InferenceSettings | None:
    """The settings stored in a checkpoint, or ``None`` when it stores none.

    Raises:
        CheckpointError: the stored entry is malformed (the message names the file).
    """
    entry = info.extra.get(STORED_KEY)
    if entry is None:
        return None
    try:
        rule = PostProcessing.from_dict(entry["postprocessing"], source=f"checkpoint {info.path}")
        return InferenceSettings(rule, entry.get("tta", False), "checkpoint")
    except (KeyError, TypeError, ConfigError) as error:
        raise CheckpointError(f"checkpoint {info.path}: unreadable stored post-processing {entry!r}: {error}") \
            from error


def selection_record(info: CheckpointInfo) -> dict[str, Any] | None:
    """What the stored choice was selected on (data, part, candidates' Dice), or ``None``."""
    entry = info.extra.get(STORED_KEY)
    return dict(entry.get("selection") or {}) if isinstance(entry, Mapping) else None


def resolve_settings(
    infos: Sequence[CheckpointInfo],
    postprocessing: PostProcessing | None = None,
    threshold: float | None = None,
    tta: str | bool | None = None,
) -> InferenceSettings:
    """The settings for a run over the checkpoints ``infos``: stored (or the default), then the overrides.

    ``postprocessing`` replaces the stored rule as a whole, ``threshold`` only its threshold, ``tta`` the TTA
    mode; ``None`` keeps what is stored.

    Raises:
        CheckpointError: ensemble members store different settings.
        ConfigError: an override that makes no valid rule (e.g. a threshold outside (0, 1)) or an unknown TTA mode.
    """
    if postprocessing is not None and tta is not None:  # nothing stored is used: members need not agree
        rule = postprocessing if threshold is None else dataclasses.replace(postprocessing, threshold=threshold)
        return InferenceSettings(rule, tta, "command line")
    stored = [stored_settings(info) for info in infos]
    first = stored[0] if stored else None
    for info, other in zip(infos[1:], stored[1:]):
        if _choice(other) != _choice(first):
            raise CheckpointError(
                f"ensemble members store different post-processing: {infos[0].path} has {_text(first)}, "
                f"{info.path} has {_text(other)}; select once for the whole ensemble "
                "(scripts/select_postprocessing.py --ckpt with every member) or pass --postprocessing"
            )
    settings = first or InferenceSettings()
    rule = postprocessing or settings.postprocessing
    if threshold is not None:
        rule = dataclasses.replace(rule, threshold=threshold)
    overridden = postprocessing is not None or threshold is not None or tta is not None
    source = settings.source
    if overridden:
        source = "checkpoint + command line" if first is not None else "command line"
    return InferenceSettings(rule, settings.tta if tta is None else tta, source)


def store_settings(paths: Sequence[str | Path], settings: InferenceSettings, selection: Mapping[str, Any]) -> None:
    """Writes ``settings`` and the ``selection`` record into every checkpoint of ``paths`` (atomically each)."""
    entry = {"postprocessing": settings.postprocessing.as_dict(), "tta": settings.tta, "selection": dict(selection)}
    for path in paths:
        write_checkpoint_entry(path, STORED_KEY, entry)


def postprocessing_argument(spec: str) -> PostProcessing:
    """``--postprocessing SPEC`` for argparse, which shows this message (it drops a plain ValueError's)."""
    try:
        return PostProcessing.parse(spec)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threshold``, ``--tta [MODE]``/``--no-tta``, ``--postprocessing``: evaluate.py and predict.py override
    what is stored."""
    parser.add_argument("--threshold", type=float, default=None,
                        help="tumour if probability > this; default: the checkpoint's stored threshold, else 0.5")
    parser.add_argument("--tta", nargs="?", const="flip", choices=TTA_MODES, default=None, metavar="MODE",
                        help="average over mirrored views of each slice: 'flip' (the horizontal mirror; what --tta "
                        "alone means) or 'mirror' (the mirrors along both axes), or 'none'; default: as stored "
                        "with the checkpoint, else none")
    parser.add_argument("--no-tta", dest="tta", action="store_const", const="none",
                        help="no TTA, whatever the checkpoint stores (the same as --tta none)")
    parser.add_argument("--postprocessing", type=postprocessing_argument, default=None, metavar="SPEC",
                        help="replace the stored post-processing: 'paper' (threshold 0.5 only) or key=value pairs, "
                        "e.g. 'threshold=0.4,components=largest,empty_fallback=0.2' (components: all, largest, "
                        "drop_small with min_area=FRACTION of the slice)")


def _choice(settings: InferenceSettings | None) -> tuple | None:
    return None if settings is None else (settings.postprocessing, settings.tta)


def _text(settings: InferenceSettings | None) -> str:
    return "none" if settings is None else repr(settings.postprocessing.describe() + describe_tta(settings.tta))
