"""The paper's Keras U-Net, rebuilt layer for layer, as the reference for parity checks and benchmarks.

TensorFlow/Keras are imported lazily (only when a function here is called) so the rest of the package, and
:mod:`lightning_bts.keras.weights`, work without them. Install them with ``pip install 'lightning_bts[keras]'``
and ``pip install --no-deps focal-loss==0.0.7`` (``make setup`` does both; why ``--no-deps``: ``pyproject.toml``).

The model is the notebook's, including ``Lambda(lambda x: x / 255)`` as its first layer, so the files it
saves have the same layer list as the original's (which is what :mod:`lightning_bts.keras.weights` must read).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from lightning_bts.models.unet import paper_dropout_rates

_MISSING_KERAS = (
    "the Keras reference needs TensorFlow, Keras and focal-loss, which are not installed; "
    "install them with: pip install 'lightning_bts[keras]' && pip install --no-deps focal-loss==0.0.7 "
    "(--no-deps: focal-loss asks for the full tensorflow, which would install over tensorflow-cpu)"
)


def import_keras() -> ModuleType:
    """``keras`` on TensorFlow; a clear ImportError when the ``keras`` extra is missing.

    If torch_xla is installed it is imported first: TensorFlow and torch_xla both bundle LLVM, and loading
    torch_xla *after* TensorFlow aborts the process ("Option ... registered more than once"). Lightning
    probes torch_xla whenever a ``Trainer`` is built, so without this any process (a test session, a
    notebook) that touched the Keras reference would crash at its next ``Trainer``. In this order they coexist.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    if "tensorflow" not in sys.modules and importlib.util.find_spec("torch_xla") is not None:
        try:
            with warnings.catch_warnings():  # "tensorflow can conflict with torch-xla": the order handles it
                warnings.simplefilter("ignore", UserWarning)
                import torch_xla  # noqa: F401
        except Exception:  # a broken torch_xla must not stop the Keras reference; Lightning will say so
            pass
    try:
        import keras
        import tensorflow  # noqa: F401  (Keras 3 needs a backend; the original ran on TensorFlow)
    except ImportError as error:
        raise ImportError(_MISSING_KERAS) from error
    if keras.backend.backend() != "tensorflow":
        raise ImportError(f"the Keras reference needs the TensorFlow backend (as the original), but KERAS_BACKEND "
                          f"is {keras.backend.backend()!r}; unset it or set KERAS_BACKEND=tensorflow")
    return keras


def build_keras_unet(
    in_channels: int = 3,
    height: int = 256,
    width: int | None = None,
    base_filters: int = 16,
    depth: int = 4,
    dropout_down: Sequence[float] | None = None,
    dropout_up: Sequence[float] | None = None,
    seed: int | None = None,
) -> Any:
    """The notebook's U-Net as a ``keras.Model`` (sigmoid output), same defaults as our ``UNet``.

    Args:
        in_channels, height, width: input shape ``(height, width, in_channels)``; width defaults to height.
        base_filters, depth: 16 and 4 in the paper (filters 16..256).
        dropout_down, dropout_up: the paper's rates by default; all zeros for deterministic parity training.
        seed: seeds Keras' initialisers (``keras.utils.set_random_seed``) for a reproducible model.
    """
    keras = import_keras()
    layers = keras.layers
    width = height if width is None else width
    paper_down, paper_up = paper_dropout_rates(depth)
    dropout_down = tuple(paper_down if dropout_down is None else dropout_down)
    dropout_up = tuple(paper_up if dropout_up is None else dropout_up)
    if len(dropout_down) != depth + 1 or len(dropout_up) != depth:
        raise ValueError(f"depth={depth} needs {depth + 1} dropout_down and {depth} dropout_up rates, "
                         f"got {len(dropout_down)} and {len(dropout_up)}")
    if seed is not None:
        keras.utils.set_random_seed(seed)

    def conv_block(x: Any, filters: int, rate: float) -> Any:
        x = layers.Conv2D(filters, (3, 3), activation="relu", kernel_initializer="he_normal", padding="same")(x)
        x = layers.Dropout(rate)(x)
        return layers.Conv2D(filters, (3, 3), activation="relu", kernel_initializer="he_normal", padding="same")(x)

    inputs = layers.Input((height, width, in_channels))
    x = layers.Lambda(lambda t: t / 255)(inputs)
    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, dropout_down[level])
        skips.append(x)
        x = layers.MaxPooling2D((2, 2))(x)
    x = conv_block(x, base_filters * 2**depth, dropout_down[depth])
    for rate, level in zip(dropout_up, reversed(range(depth))):
        up = layers.Conv2DTranspose(base_filters * 2**level, (2, 2), strides=(2, 2), padding="same")(x)
        x = conv_block(layers.concatenate([up, skips[level]]), base_filters * 2**level, rate)
    outputs = layers.Conv2D(1, (1, 1), activation="sigmoid")(x)
    return keras.Model(inputs=[inputs], outputs=[outputs])


def keras_loss(name: str, gamma: float = 2.0) -> Any:
    """The original's losses: ``focal`` = ``focal_loss.BinaryFocalLoss(gamma)``, ``bce`` = Keras BCE.

    Both take probabilities (the model's sigmoid output), as in the notebook.
    """
    keras = import_keras()
    if name == "bce":
        return keras.losses.BinaryCrossentropy()
    if name == "focal":
        try:
            from focal_loss import BinaryFocalLoss
        except ImportError as error:
            raise ImportError(_MISSING_KERAS) from error
        return BinaryFocalLoss(gamma=gamma)
    raise ValueError(f"the Keras original used 'focal' or 'bce', got {name!r}")


__all__ = ["build_keras_unet", "import_keras", "keras_loss"]
