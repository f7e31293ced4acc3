"""Cross-framework validation of the port against the Keras original (GitHub issue 6).

Each check compares the two frameworks on the *same* weights and the *same* real slices, and returns a
:class:`Check` (value, tolerance, pass/fail); :func:`run_parity` runs them all and :meth:`ParityReport.markdown`
writes the report. ``scripts/validate_keras.py`` is the command-line front end.

Keras and TensorFlow are imported lazily, through :mod:`lightning_bts.keras.reference`.

The training check runs Keras, torch with :class:`~lightning_bts.training.optim.KerasAdam` (what
:class:`~lightning_bts.training.module.SegmentationModule` trains with; that module explains why epsilon's placement
matters here), and torch's stock Adam, and reports all curves.
"""

from __future__ import annotations

import math
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lightning_bts.keras import weights as keras_io
from lightning_bts.keras.parity_checks import (
    Slices,
    forward_parity,
    keras_probabilities,
    keras_to_torch,
    load_slices,
    loss_parity,
    metric_parity,
    torch_logits,
)
from lightning_bts.keras.parity_report import Check, ParityReport, Tolerances
from lightning_bts.keras.parity_training import train_keras, train_torch, training_parity
from lightning_bts.models.unet import UNet
from lightning_bts.training.optim import KerasAdam, keras_equivalent_eps

# ---------------------------------------------------------------------------------- architecture, init


def architecture_section(net: UNet, keras_model, report: ParityReport) -> None:
    """Parameter counts and the layer matching table."""
    ours = sum(p.numel() for p in net.parameters())
    theirs = int(keras_model.count_params())
    report.check("parameter count difference (Keras - ours)", abs(theirs - ours), 0)
    rows = []
    keras_layers = [layer for layer in keras_model.layers if layer.weights]
    for keras_layer, layer in zip(keras_layers, keras_io.unet_layers(net)):
        kernel = tuple(keras_layer.weights[0].shape)
        rows.append(f"| {keras_layer.__class__.__name__} | {kernel} | `{layer.name}` | "
                    f"{tuple(layer.module.weight.shape)} |")
    body = (f"Parameters: Keras {theirs:,}, ours {ours:,}.\n\n"
            "| Keras layer | Keras kernel | our module | torch weight |\n|---|---|---|---|\n" + "\n".join(rows))
    report.sections.append(("Architecture", body))


def keras_init_std_and_bound(layer: keras_io.TorchLayer) -> tuple[float, float]:
    """Std and largest possible |w| of the Keras initialiser of ``layer``'s kernel.

    ``he_normal``: normal with sd ``sqrt(2 / fan_in) / 0.8796`` truncated at 2 sd, whose std is
    ``sqrt(2 / fan_in)``. ``glorot_uniform`` (transposed convs and the 1x1 head, no initialiser given):
    uniform on ``+-sqrt(6 / (fan_in + fan_out))``, std ``sqrt(2 / (fan_in + fan_out))``.
    """
    weight = layer.module.weight
    receptive = math.prod(weight.shape[2:])
    fan_a, fan_b = weight.shape[0] * receptive, weight.shape[1] * receptive
    if layer.class_name == keras_io.CONV and layer.name != "head":
        fan_in = weight.shape[1] * receptive
        return math.sqrt(2 / fan_in), 2 * math.sqrt(2 / fan_in) / 0.87962566103423978
    return math.sqrt(2 / (fan_a + fan_b)), math.sqrt(6 / (fan_a + fan_b))


def init_statistics(net: UNet, keras_model, report: ParityReport, tol: Tolerances) -> None:
    """Weight mean/std per layer: our initialisers vs Keras' (he_normal 3x3 convs, glorot_uniform elsewhere).

    The sample std of n weights has a standard error of about ``std * sqrt((kurtosis - 1) / (4 n))``, the
    mean ``std / sqrt(n)``; two independent samples differ by sqrt(2) of that. We allow ``init_sigmas`` of it,
    and require every weight inside the initialiser's support.
    """
    rows, worst, outside = [], 0.0, 0
    keras_layers = [layer for layer in keras_model.layers if layer.weights]
    for keras_layer, layer in zip(keras_layers, keras_io.unet_layers(net)):
        ours = layer.module.weight.detach().double().numpy().ravel()
        theirs = np.asarray(keras_layer.weights[0].numpy(), dtype=np.float64).ravel()
        n = ours.size
        kurtosis = float(np.mean((theirs - theirs.mean()) ** 4) / theirs.var() ** 2)
        se_std = theirs.std() * math.sqrt((kurtosis - 1) / (4 * n)) * math.sqrt(2)
        se_mean = theirs.std() / math.sqrt(n) * math.sqrt(2)
        distance = max(abs(ours.std() - theirs.std()) / se_std, abs(ours.mean() - theirs.mean()) / se_mean)
        worst = max(worst, distance)
        std, bound = keras_init_std_and_bound(layer)
        outside += int((np.abs(ours) > bound * (1 + 1e-6)).sum() + (np.abs(theirs) > bound * (1 + 1e-6)).sum())
        rows.append(f"| `{layer.name}` | {n} | {ours.mean():+.1e} / {theirs.mean():+.1e} | "
                    f"{ours.std():.4g} / {theirs.std():.4g} / {std:.4g} | {np.abs(ours).max():.4g} / "
                    f"{np.abs(theirs).max():.4g} / {bound:.4g} | {distance:.2f} |")
    report.check("init statistics: worst |ours - Keras| in standard errors (mean or std)", worst, tol.init_sigmas)
    report.check("init: weights outside the Keras initialiser's support", outside, 0)
    body = (
        "Fresh initialisations, ours (torch seed) and Keras' (Keras seed); biases are zero in both. "
        "Keras: `he_normal` (truncated at 2 sd) for the 3x3 convs, `glorot_uniform` for the transposed convs "
        "and the 1x1 head. Columns: ours / Keras / theory.\n\n"
        "| layer | n | mean | std | max abs (bound) | distance (standard errors) |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
    )
    report.sections.append(("Initialisation statistics", body))


# ----------------------------------------------------------------------------------------- driver


@dataclass
class ParityConfig:
    """What :func:`run_parity` runs; the defaults are the report's."""

    data: str | Path = "data/sample"
    count: int = 8
    size: int | None = 256
    keras_model: str | Path | None = None
    seed: int = 0
    train_steps: int = 20
    train_batch: int = 4
    train_count: int = 8
    train_size: int = 128
    train_losses: Sequence[str] = ("focal", "bce")
    lr: float = 1e-3
    adam_eps: float = 1e-7
    tolerances: Tolerances = field(default_factory=Tolerances)


def run_parity(config: ParityConfig, workdir: str | Path | None = None) -> tuple[ParityReport, UNet]:
    """Every check, in order. Returns the report and the UNet holding the validated weights.

    Without ``config.keras_model`` the weights are a fresh seeded Keras initialisation; with it, the user's
    file, loaded by Keras itself (``load_weights``) on the Keras side and by :mod:`keras_io` on ours, so the
    forward check also tests our reader against Keras' own.
    """
    from lightning_bts.keras.reference import build_keras_unet, import_keras

    keras = import_keras()
    tol = config.tolerances
    report = ParityReport()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        if config.keras_model is not None:
            arch = keras_io.infer_unet_config(config.keras_model)
            net = keras_io.unet_from_keras(config.keras_model)
        else:
            arch = {"in_channels": 3, "base_filters": 16, "depth": 4}
        slices = load_slices(config.data, config.count, config.size, arch["in_channels"])
        size = slices.images.shape[-1]
        keras_model = build_keras_unet(height=size, **arch, seed=config.seed)
        if config.keras_model is not None:
            keras_model.load_weights(config.keras_model)  # Keras' own reader, independent of ours
            source = f"user's Keras file `{config.keras_model}`"
        else:
            net = keras_to_torch(keras_model, UNet(**arch), tmp)
            source = f"fresh Keras initialisation (seed {config.seed})"
        initial_weights = tmp / "initial.weights.h5"
        keras_model.save_weights(initial_weights)

        architecture_section(net, keras_model, report)
        torch.manual_seed(config.seed)
        init_statistics(UNet(**arch), build_keras_unet(height=32, **arch, seed=config.seed + 1), report, tol)
        forward_parity(net, keras_model, slices, report, tol, "validated weights")

        logits = torch_logits(net, slices.images)
        loss_parity(logits.numpy(), slices, report, tol)
        p_keras = keras_probabilities(keras_model, slices.nhwc()[0]).transpose(0, 3, 1, 2)
        metric_parity(logits, p_keras, slices, report, tol)

        train_slices = load_slices(config.data, config.train_count, config.train_size, arch["in_channels"])
        trained_paths = {}
        for loss in config.train_losses:
            trained_paths[loss] = training_parity(initial_weights, train_slices, report, tol, loss, config.train_steps,
                                      config.train_batch, config.lr, config.adam_eps, tmp)
        if config.train_losses:
            loss, trained_path = next(iter(trained_paths.items()))
            trained_keras = build_keras_unet(height=size, **arch)
            trained_keras.load_weights(trained_path)
            trained = keras_io.load_keras_weights(UNet(**arch), trained_path)
            forward_parity(trained, trained_keras, slices, report, tol,
                           f"after {config.train_steps} Keras {loss} steps")

    data_rows = ", ".join(f"{key} ({kind})" for key, kind in zip(slices.keys, slices.tumor_types))
    environment = (f"torch {torch.__version__}, TensorFlow {_tf_version()}, Keras {keras.__version__}, "
                   f"focal-loss {_version('focal-loss')}, scikit-learn {_version('scikit-learn')}, "
                   f"Python {platform.python_version()}, {platform.machine()}, torch threads "
                   f"{torch.get_num_threads()}")
    report.sections.insert(0, ("Setup", f"Weights: {source}.\n\nData: `{config.data}`, {len(slices.keys)} slices "
                                        f"resized to {size}x{size}: {data_rows}. Training checks: "
                                        f"{len(train_slices.keys)} slices at {config.train_size}x"
                                        f"{config.train_size}.\n\nEnvironment: {environment}."))
    return report, net


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


__all__ = [
    "Check",
    "ParityConfig",
    "ParityReport",
    "Slices",
    "Tolerances",
    "forward_parity",
    "KerasAdam",
    "keras_equivalent_eps",
    "load_slices",
    "loss_parity",
    "metric_parity",
    "run_parity",
    "train_keras",
    "train_torch",
    "training_parity",
]
