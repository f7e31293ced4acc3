"""The model this toolkit ships: the best CPU recipe's weights, so a new user segments a scan without training.

``best_cpu_128px.ckpt`` is a release checkpoint (``scripts/export.py --output X.ckpt``: weights, preprocessing
and the post-processing chosen on validation; no optimiser state). ``MODEL_CARD.md`` beside it says what it was
trained on, how, how well it does on patients it never saw, and what it must not be used for.
``scripts/predict.py`` uses it when no ``--ckpt`` is given.
"""

from __future__ import annotations

from pathlib import Path

from lightning_bts.errors import UserError

PRETRAINED_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = PRETRAINED_DIR / "best_cpu_128px.ckpt"
MODEL_CARD = PRETRAINED_DIR / "MODEL_CARD.md"


def default_checkpoint() -> Path:
    """The shipped checkpoint's path.

    Raises:
        UserError: the file is not there (an installation without package data): pass ``--ckpt``.
    """
    if not DEFAULT_CHECKPOINT.is_file():
        raise UserError(f"the shipped model {DEFAULT_CHECKPOINT} is not installed; pass --ckpt with a checkpoint "
                        "of your own (scripts/fit.py writes them)")
    return DEFAULT_CHECKPOINT
