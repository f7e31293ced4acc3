"""The training-trajectory check: Keras, torch with :class:`~lightning_bts.training.optim.KerasAdam` (what
:class:`~lightning_bts.training.module.SegmentationModule` trains with; that module explains why epsilon's placement
matters here), and torch's stock Adam, trained from the same weights on the same batches; all curves are reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightning_bts.keras import weights as keras_io
from lightning_bts.keras.parity_checks import Slices
from lightning_bts.keras.parity_report import ParityReport, Tolerances
from lightning_bts.losses import build_loss
from lightning_bts.models.unet import UNet
from lightning_bts.training.optim import ADAM_BETA1, ADAM_BETA2, KerasAdam, keras_equivalent_eps

# ---------------------------------------------------------------------------------------- training


def batch_indices(step: int, batch_size: int, count: int) -> np.ndarray:
    """The slices of step ``step``: consecutive, wrapping around (the same in both frameworks)."""
    return (np.arange(batch_size) + step * batch_size) % count


def train_keras(keras_model, slices: Slices, loss: str, steps: int, batch_size: int, lr: float,
                eps: float) -> np.ndarray:
    """``steps`` Adam steps as Keras' ``fit`` takes them: a ``tf.function`` train step (graph mode, no XLA),
    the model's sigmoid output fed to the loss. Returns each step's loss, computed before its update."""
    from lightning_bts.keras.reference import import_keras, keras_loss

    keras = import_keras()
    import tensorflow as tf

    loss_fn = keras_loss(loss)
    optimizer = keras.optimizers.Adam(learning_rate=lr, beta_1=ADAM_BETA1, beta_2=ADAM_BETA2, epsilon=eps)
    optimizer.build(keras_model.trainable_variables)

    @tf.function(jit_compile=False)
    def train_step(images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            value = loss_fn(masks, keras_model([images], training=True))
        grads = tape.gradient(value, keras_model.trainable_variables)
        optimizer.apply_gradients(zip(grads, keras_model.trainable_variables))
        return value

    images, masks = slices.nhwc()
    losses = []
    for step in range(steps):
        index = batch_indices(step, batch_size, len(images))
        losses.append(float(train_step(tf.constant(images[index]), tf.constant(masks[index]))))
    return np.asarray(losses)


def train_torch(net: UNet, slices: Slices, loss: str, steps: int, batch_size: int, lr: float, eps: float,
                keras_adam: bool = False, loss_eps: float = 1e-7,
                on_step: Callable[[int, torch.optim.Adam], None] | None = None) -> np.ndarray:
    """``steps`` steps of ``torch.optim.Adam``, or of :class:`KerasAdam` with ``keras_adam``.

    ``loss_eps`` is our loss' probability clipping (``build_loss(eps=...)``); 0 reproduces Keras' training
    BCE, which works on the logits unclipped (see :func:`keras_loss_value`).
    """
    loss_fn = build_loss(loss, eps=loss_eps)
    adam = KerasAdam if keras_adam else torch.optim.Adam
    optimizer = adam(net.parameters(), lr=lr, betas=(ADAM_BETA1, ADAM_BETA2), eps=eps)
    images, masks = torch.from_numpy(slices.images).float(), torch.from_numpy(slices.masks)
    net.train()
    losses = []
    for step in range(steps):
        index = torch.from_numpy(batch_indices(step, batch_size, len(images)))
        optimizer.zero_grad()
        value = loss_fn(net(images[index]), masks[index])
        value.backward()
        if on_step is not None:
            on_step(step, optimizer)
        optimizer.step()
        losses.append(value.item())
    return np.asarray(losses)


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / np.abs(b)


def keras_training_loss_eps(loss: str) -> float:
    """Our ``loss_eps`` that trains as Keras does, which is ``build_loss``'s default for ``loss`` (``bce`` or
    ``focal``): BCE unclipped (Keras uses the logits), focal clipped at 1e-7."""
    return build_loss(loss).eps


def perturb_ulp(net: UNet, seed: int = 1) -> UNet:
    """Multiply every weight by ``1 +- 2^-24`` (half a float32 ulp, random signs), in place.

    Two otherwise identical runs, one from perturbed weights, show how far float rounding alone carries a
    training trajectory apart: the noise floor of the trajectory comparison.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            signs = torch.randint(0, 2, param.shape, generator=generator) * 2 - 1
            param.mul_(1 + signs * 2.0**-24)
    return net


@dataclass(frozen=True)
class TrainingRun:
    """One torch run of the training comparison."""

    label: str
    keras_adam: bool
    loss_eps: float
    perturbed: bool = False


def training_parity(keras_weights: Path, slices: Slices, report: ParityReport, tol: Tolerances, loss: str,
                    steps: int, batch_size: int, lr: float, eps: float, workdir: Path) -> Path:
    """Same initial weights (``keras_weights``), same batches, dropout off, Adam in both frameworks.

    Torch runs: *matched* (:class:`KerasAdam`, the loss as Keras trains it), checked against
    ``tol.train_*``; *noise floor* (matched, from weights perturbed by half an ulp), the divergence float
    rounding alone produces; and one run per plausible-but-wrong setting (stock torch Adam; BCE clipped as
    ``keras.losses.binary_crossentropy`` clips probabilities), recorded as findings. The matched settings are
    the package defaults (``SegmentationModule`` trains with ``KerasAdam`` and ``build_loss``'s clipping).
    Returns a ``.weights.h5`` of the model Keras trained (written by
    Keras), for a forward check on trained weights.
    """
    from lightning_bts.keras.reference import build_keras_unet

    config = keras_io.infer_unet_config(keras_weights)
    size = slices.images.shape[-1]
    no_dropout = {"dropout_down": [0.0] * (config["depth"] + 1), "dropout_up": [0.0] * config["depth"]}
    keras_model = build_keras_unet(height=size, **config, **no_dropout)
    keras_model.load_weights(keras_weights)
    start = time.perf_counter()
    keras_losses = train_keras(keras_model, slices, loss, steps, batch_size, lr, eps)
    keras_seconds = time.perf_counter() - start
    trained_path = workdir / f"trained-{loss}.weights.h5"
    keras_model.save_weights(trained_path)
    trained = keras_io.load_keras_weights(UNet(**config, **no_dropout), trained_path)

    matched_eps = keras_training_loss_eps(loss)
    runs = [TrainingRun("torch, matched", True, matched_eps),
            TrainingRun("noise floor: matched, weights +-0.5 ulp", True, matched_eps, perturbed=True),
            TrainingRun("stock torch Adam (eps after bias correction)", False, matched_eps)]
    if loss == "bce":
        runs.append(TrainingRun("BCE clipped at 1e-7 (loss_eps=1e-7)", True, 1e-7))
    gradient_scales: list[np.ndarray] = []

    def record_gradients(step: int, optimizer: torch.optim.Adam) -> None:
        if step == 0 and not gradient_scales:
            grads = [p.grad.abs().flatten() for p in optimizer.param_groups[0]["params"]]
            gradient_scales.append(torch.cat(grads).numpy())

    initial = keras_io.load_keras_weights(UNet(**config, **no_dropout), keras_weights)
    curves, gaps, nets = {}, {}, {}
    for run in runs:
        net = keras_io.load_keras_weights(UNet(**config, **no_dropout), keras_weights)
        if run.perturbed:
            perturb_ulp(net)
        start = time.perf_counter()
        curves[run.label] = train_torch(net, slices, loss, steps, batch_size, lr, eps, keras_adam=run.keras_adam,
                                        loss_eps=run.loss_eps, on_step=record_gradients)
        if run is runs[0]:
            torch_seconds = time.perf_counter() - start
        nets[run.label] = net
        reference = nets[runs[0].label] if run.perturbed else trained
        gaps[run.label] = weight_gap(initial, reference, net)

    matched, floor = curves[runs[0].label], curves[runs[1].label]
    rel = {label: _rel(curve, keras_losses) for label, curve in curves.items()}
    rel[runs[1].label] = _rel(floor, matched)  # the noise floor compares torch with torch
    early = min(tol.train_early_steps, steps)
    report.check(f"{loss}: loss rel diff over the first {early} steps, Keras vs torch matched",
                 rel[runs[0].label][:early].max(), tol.train_early_rel)
    report.check(f"{loss}: loss rel diff over all {steps} steps, Keras vs torch matched "
                 f"(tolerance: {tol.train_floor_factor:g} x noise floor, at least {tol.train_early_rel:g})",
                 rel[runs[0].label].max(), max(tol.train_floor_factor * rel[runs[1].label].max(), tol.train_early_rel))
    report.check(f"{loss}: weight gap after {steps} steps, Keras vs torch matched (relative to distance moved; "
                 f"tolerance: {tol.train_floor_factor:g} x noise floor, at least {tol.train_weight_gap_min:g})",
                 gaps[runs[0].label], max(tol.train_floor_factor * gaps[runs[1].label], tol.train_weight_gap_min))
    for run in runs[2:]:
        report.findings.append(
            f"{loss}, {run.label}: the {steps}-step loss curve departs from Keras' by up to "
            f"{rel[run.label].max():.2g} (relative), vs {rel[runs[0].label].max():.2g} when matched and "
            f"{rel[runs[1].label].max():.2g} for float rounding alone."
        )

    grads = gradient_scales[0]
    keras_eps1 = keras_equivalent_eps(eps, 1)
    first_update_gap = (keras_eps1 - eps) / (grads + keras_eps1)
    header = "| step | Keras | " + " | ".join(run.label for run in runs) + " |"
    rows = [header, "|---" * (len(runs) + 2) + "|"]
    for step in range(steps):
        cells = [f"{curves[run.label][step]:.8f} ({rel[run.label][step]:.1e})" for run in runs]
        rows.append(f"| {step + 1} | {keras_losses[step]:.8f} | " + " | ".join(cells) + " |")
    summary = ["| torch run | max rel diff of loss | weight gap after training (relative to distance moved) |",
               "|---|---|---|"]
    for run in runs:
        compared = "vs matched torch" if run.perturbed else "vs Keras"
        summary.append(f"| {run.label} ({compared}) | {rel[run.label].max():.3g} | {gaps[run.label]:.3g} |")
    body = (
        f"Loss `{loss}`, {steps} steps, batch {batch_size} (slices cycled in order), {size}x{size}, dropout 0, "
        f"Adam lr {lr:g}, betas ({ADAM_BETA1}, {ADAM_BETA2}), eps {eps:g}. Each step's loss is its batch's, "
        "before the update. *Matched*: `KerasAdam` (torch Adam with `eps / sqrt(1 - 0.999^t)` at step t, "
        f"which is Keras' update; see the module docstring) and our loss with `loss_eps={matched_eps:g}`"
        f"{' (Keras trains BCE on the logits, unclipped)' if loss == 'bce' else ' (focal-loss clips at 1e-7)'}. "
        "Cells: loss (relative difference to Keras; for the noise floor, to the matched run).\n\n"
        + "\n".join(rows) + "\n\n" + "\n".join(summary) + "\n\n"
        f"Epsilon placement: Keras' effective epsilon is {keras_eps1:.3g} at step 1 (vs {eps:g}) and "
        f"{keras_equivalent_eps(eps, steps):.3g} at step {steps}; it is within 10% of {eps:g} only after "
        f"~{_steps_until_eps_within(eps, 1.1)} steps. Step-1 gradients are small because the loss is a mean "
        f"over all pixels: median |g| {np.median(grads):.3g}; for {np.mean(first_update_gap > 0.01) * 100:.0f}% "
        "of the weights the two placements' first updates differ by more than 1%, for "
        f"{np.mean(first_update_gap > 0.5) * 100:.0f}% by more than half.\n\n"
        f"Time for {steps} steps (shared CPU, indicative only): Keras {keras_seconds:.1f} s, "
        f"torch {torch_seconds:.1f} s."
    )
    report.sections.append((f"Training-step parity ({loss})", body))
    return trained_path


def _steps_until_eps_within(eps: float, factor: float) -> int:
    """First step at which Keras' effective epsilon is within ``factor`` of ``eps``."""
    return math.ceil(math.log(1 - 1 / factor**2) / math.log(ADAM_BETA2))


def weight_gap(initial: UNet, reference: UNet, other: UNet) -> float:
    """``||other - reference|| / ||reference - initial||`` over all weights: how far two trained models are
    apart, relative to how far training moved the reference (0: identical; 1: as far as training went)."""
    with torch.no_grad():
        pairs = list(zip(initial.parameters(), reference.parameters(), other.parameters()))
        gap = math.sqrt(sum(float((o - r).double().pow(2).sum()) for _, r, o in pairs))
        moved = math.sqrt(sum(float((r - i).double().pow(2).sum()) for i, r, _ in pairs))
    return gap / moved if moved else float("inf")
