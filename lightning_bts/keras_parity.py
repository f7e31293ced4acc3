"""Cross-framework validation of the port against the Keras original (GitHub issue 6).

Each check compares the two frameworks on the *same* weights and the *same* real slices, and returns a
:class:`Check` (value, tolerance, pass/fail); :func:`run_parity` runs them all and :meth:`ParityReport.markdown`
writes the report. ``scripts/validate_keras.py`` is the command-line front end.

Keras and TensorFlow are imported lazily, through :mod:`lightning_bts.keras_reference`.

The training check runs Keras, torch with :class:`~lightning_bts.optim.KerasAdam` (what
:class:`~lightning_bts.module.SegmentationModule` trains with; that module explains why epsilon's placement
matters here), and torch's stock Adam, and reports all curves.
"""

from __future__ import annotations

import math
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from lightning_bts import keras_io
from lightning_bts.data.records import load_records, read_pair
from lightning_bts.losses import build_loss
from lightning_bts.metrics import OverlapMetrics
from lightning_bts.models.unet import UNet
from lightning_bts.optim import ADAM_BETA1, ADAM_BETA2, KerasAdam, keras_equivalent_eps


@dataclass(frozen=True)
class Tolerances:
    """Pass thresholds; the report prints each next to its measured value.

    Attributes:
        forward_max_abs: max |p_keras - p_torch| over all pixels. Both frameworks compute the same float32
            convolutions in a different summation order; 1e-5 leaves two orders of magnitude over the ~1e-7
            we measure, and is far below anything that changes a thresholded mask.
        loss_rel: relative difference of a loss value, away from the clipping bound (|logit| < 16). Both
            reduce ~10^5 float32 terms in a different order, which alone gives ~1e-7.
        metric_abs: our pooled metrics vs scikit-learn on identical masks: ratios of the same integer counts,
            so only float32 rounding of the result (6e-8) remains.
        train_early_rel: max relative difference of the per-step loss, Keras vs torch *matched*
            (:class:`KerasAdam`, the loss as Keras trains it), over the first ``train_early_steps`` steps,
            before rounding has grown: measured <= 1.1e-4 (64x64) and <= 3.5e-6 (128x128); stock torch Adam
            is already ~5e-2 off at step 5.
        train_floor_factor: over the whole run, training amplifies rounding (ReLU and max-pool switches,
            loss spikes at lr 1e-3), so no fixed bound is both safe and sharp: two *torch* runs, one from
            weights perturbed by half an ulp (the noise floor), drift up to 0.23 apart in loss around a spike
            and 0.04..0.13 apart in weights (see ``train_weight_gap_min``). Over all steps, the loss curve and
            the final weights must stay within this factor of the floor measured in the same run.
        train_weight_gap_min: the weight gap ``||w_torch - w_keras|| / ||w_keras - w_0||`` after the run is
            checked against ``max(train_floor_factor * floor gap, this)``. Measured: matched 0.03..0.08,
            floor 0.04..0.13; clipped BCE 0.25..0.32 and stock torch Adam 0.8..1.0, which it catches.
        init_sigmas: initialisation statistics: allowed distance in standard errors of the sample std.
    """

    forward_max_abs: float = 1e-5
    loss_rel: float = 1e-6
    metric_abs: float = 1e-6
    train_early_steps: int = 5
    train_early_rel: float = 1e-3
    train_floor_factor: float = 2.0
    train_weight_gap_min: float = 0.05
    init_sigmas: float = 5.0


@dataclass
class Check:
    """One measured quantity against its tolerance."""

    name: str
    value: float
    tolerance: float
    passed: bool


@dataclass
class ParityReport:
    """Checks plus Markdown sections, in the order they ran."""

    checks: list[Check] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def check(self, name: str, value: float, tolerance: float) -> Check:
        """Record whether ``value <= tolerance``; NaN fails."""
        ok = bool(value <= tolerance)
        self.checks.append(Check(name, float(value), float(tolerance), ok))
        return self.checks[-1]

    def markdown(self, title: str, preamble: str = "") -> str:
        status = "PASS" if self.passed else "FAIL"
        lines = [f"# {title}", "", preamble, "", f"**Overall: {status}** ({sum(c.passed for c in self.checks)}"
                 f"/{len(self.checks)} checks pass)", "", "| check | value | tolerance | result |", "|---|---|---|---|"]
        for check in self.checks:
            name = check.name.replace("|", "\\|")  # a bare | would split the Markdown cell
            lines.append(f"| {name} | {check.value:.3g} | <= {check.tolerance:.3g} | "
                         f"{'pass' if check.passed else '**FAIL**'} |")
        if self.findings:
            lines += ["", "What the obvious alternatives would cost (measured, not pass/fail):", ""]
            lines += [f"- {finding}" for finding in self.findings]
        for heading, body in self.sections:
            lines += ["", f"## {heading}", "", body.strip()]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Slices:
    """Real slices for the checks: ``images`` uint8 ``(N, C, S, S)``, ``masks`` float32 ``(N, 1, S, S)``."""

    images: np.ndarray
    masks: np.ndarray
    keys: list[str]
    tumor_types: list[str]

    def nhwc(self) -> tuple[np.ndarray, np.ndarray]:
        """Keras layout, float32 (the notebook fed 0..255 floats; the model divides by 255)."""
        return (np.ascontiguousarray(self.images.transpose(0, 2, 3, 1), dtype=np.float32),
                np.ascontiguousarray(self.masks.transpose(0, 2, 3, 1)))


def load_slices(root: str | Path, count: int = 8, size: int | None = 256, in_channels: int = 3) -> Slices:
    """``count`` slices spread evenly over the dataset's slice list, resized to ``size`` (None: native).

    Grayscale slices are repeated to ``in_channels`` channels, as the notebook read the PNGs as RGB. Images
    are resized with area interpolation, masks with nearest neighbour (as our preprocessing).
    """
    records = load_records(root)
    picks = np.unique(np.linspace(0, len(records) - 1, min(count, len(records))).round().astype(int))
    images, masks = [], []
    for index in picks:
        image, mask = read_pair(records.image_path[index], records.mask_path[index])
        if size is not None and image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
        image = image[..., None] if image.ndim == 2 else image
        if image.shape[2] != in_channels:
            image = np.repeat(image[..., :1], in_channels, axis=2)
        images.append(image.transpose(2, 0, 1))
        masks.append(mask[None].astype(np.float32))
    return Slices(np.stack(images), np.stack(masks), [records.key[i] for i in picks],
                  [str(records.tumor_type[i]) for i in picks])


# ------------------------------------------------------------------------------------- forward passes


def keras_probabilities(keras_model, images_nhwc: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """Keras sigmoid output ``(N, H, W, 1)`` in inference mode (dropout off)."""
    outputs = [np.asarray(keras_model([images_nhwc[i : i + batch_size]], training=False))
               for i in range(0, len(images_nhwc), batch_size)]
    return np.concatenate(outputs)


@torch.no_grad()
def torch_logits(net: UNet, images: np.ndarray, batch_size: int = 4) -> torch.Tensor:
    """Our logits ``(N, 1, H, W)`` in eval mode for uint8 images ``(N, C, H, W)``."""
    net.eval()
    batches = [net(torch.from_numpy(images[i : i + batch_size]).float()) for i in range(0, len(images), batch_size)]
    return torch.cat(batches)


def keras_to_torch(keras_model, net: UNet, workdir: Path) -> UNet:
    """Copy a live Keras model's weights into ``net`` through a Keras-written ``.weights.h5`` file."""
    path = workdir / "transfer.weights.h5"
    keras_model.save_weights(path)
    return keras_io.load_keras_weights(net, path)


def forward_parity(net: UNet, keras_model, slices: Slices, report: ParityReport, tol: Tolerances, label: str) -> None:
    """Probabilities and thresholded masks of both frameworks on the same weights and slices."""
    images_nhwc, _ = slices.nhwc()
    p_keras = keras_probabilities(keras_model, images_nhwc).transpose(0, 3, 1, 2)
    logits = torch_logits(net, slices.images)
    p_torch = torch.sigmoid(logits).numpy()
    diff = np.abs(p_keras.astype(np.float64) - p_torch)
    mask_keras, mask_torch = p_keras > 0.5, p_torch > 0.5
    flipped = mask_keras != mask_torch
    overlap = 2 * np.logical_and(mask_keras, mask_torch).sum()
    total = mask_keras.sum() + mask_torch.sum()
    dice = overlap / total if total else 1.0
    # A flipped pixel is explained when its probability lies within the measured difference of 0.5.
    unexplained = int((flipped & (np.abs(p_torch - 0.5) > diff.max())).sum())
    report.check(f"forward max abs diff ({label})", diff.max(), tol.forward_max_abs)
    report.check(f"mask pixels flipped beyond |p-0.5| <= max diff ({label})", unexplained, 0)
    body = (
        f"{len(slices.images)} slices, {slices.images.shape[-2]}x{slices.images.shape[-1]}, eval mode.\n\n"
        "| quantity | value |\n|---|---|\n"
        f"| max abs diff of probabilities | {diff.max():.3g} |\n"
        f"| mean abs diff of probabilities | {diff.mean():.3g} |\n"
        f"| max abs diff of logits (torch vs Keras' probabilities mapped back) | "
        f"{_logit_diff(p_keras, logits.numpy()):.3g} |\n"
        f"| Dice between the two thresholded masks (p > 0.5) | {dice:.6f} |\n"
        f"| pixels whose mask differs | {int(flipped.sum())} of {flipped.size} |\n"
        f"| predicted tumour pixels Keras / torch | {int(mask_keras.sum())} / {int(mask_torch.sum())} |\n"
        f"| probability range (torch) | {p_torch.min():.4f} .. {p_torch.max():.4f} |\n"
    )
    report.sections.append((f"Forward parity ({label})", body))


def _logit_diff(p_keras: np.ndarray, logits: np.ndarray) -> float:
    """Logit difference where Keras' probability is not saturated (the map back is ill-conditioned there)."""
    p = p_keras.astype(np.float64)
    usable = (p > 1e-4) & (p < 1 - 1e-4)
    if not usable.any():
        return float("nan")
    return float(np.abs(np.log(p[usable] / (1 - p[usable])) - logits[usable]).max())


# ------------------------------------------------------------------------------------------- losses


def keras_loss_value(name: str, logits: np.ndarray, masks: np.ndarray, as_model_output: bool) -> float:
    """The Keras loss on ``sigmoid(logits)`` (NCHW arrays).

    ``as_model_output=True`` computes the sigmoid with ``keras.activations.sigmoid`` as the model's last
    layer does: Keras then attaches the logits to the output (``_keras_logits``) and ``binary_crossentropy``
    uses them, unclipped. ``False`` passes a plain probability tensor, which Keras clips into
    ``[1e-7, 1 - 1e-7]`` (the documented behaviour). The focal-loss package always clips probabilities.
    """
    from lightning_bts.keras_reference import import_keras, keras_loss

    keras = import_keras()
    import tensorflow as tf

    z = tf.constant(np.ascontiguousarray(logits.transpose(0, 2, 3, 1)))
    y = tf.constant(np.ascontiguousarray(masks.transpose(0, 2, 3, 1)))
    p = keras.activations.sigmoid(z) if as_model_output else tf.math.sigmoid(z)
    return float(keras_loss(name)(y, p))


def torch_loss_value(name: str, logits: np.ndarray, masks: np.ndarray, eps: float = 1e-7) -> float:
    """Our loss (``build_loss``) on NCHW logits."""
    return float(build_loss(name, eps=eps)(torch.from_numpy(logits), torch.from_numpy(masks)))


def loss_parity(logits: np.ndarray, slices: Slices, report: ParityReport, tol: Tolerances) -> None:
    """Our focal/BCE vs the Keras ones on the model's logits, on moderate logits, and on saturated ones.

    Moderate: the model's logits rescaled to span +-8 (well inside the 1e-7 clip at |z| = 16.1), so every
    term of both losses matters. Saturated: the same rescaled to +-40, so most pixels are clipped.
    """
    masks = slices.masks
    spread = np.abs(logits).max() or 1.0
    cases = {
        "model logits": logits,
        "moderate (max abs 8)": (logits / spread * 8).astype(np.float32),
        "saturated (max abs 40)": (logits / spread * 40).astype(np.float32),
    }
    rows = []
    for case, z in cases.items():
        for name in ("focal", "bce"):
            ours = torch_loss_value(name, z, masks)
            keras_prob = keras_loss_value(name, z, masks, as_model_output=False)
            keras_model = keras_loss_value(name, z, masks, as_model_output=True)
            rel_prob = abs(ours - keras_prob) / abs(keras_prob)
            rel_model = abs(ours - keras_model) / abs(keras_model)
            rows.append(f"| {case} | {name} | {ours:.8g} | {keras_prob:.8g} | {keras_model:.8g} | "
                        f"{rel_prob:.2g} | {rel_model:.2g} |")
            finite = math.isfinite(ours) and math.isfinite(keras_prob) and math.isfinite(keras_model)
            if case.startswith("saturated"):
                report.check(f"{name} loss finite at saturated logits", float(not finite), 0)
            else:
                report.check(f"{name} loss rel diff vs Keras ({case})", max(rel_prob, rel_model), tol.loss_rel)
    grad_finite = _saturated_gradients_finite(cases["saturated (max abs 40)"], masks)
    report.check("loss gradients finite at saturated logits", float(not grad_finite), 0)
    unclipped = torch_loss_value("bce", cases["saturated (max abs 40)"], masks, eps=0.0)
    body = (
        "Ours takes logits; Keras takes `sigmoid(logits)`. *Keras (probabilities)*: a plain probability tensor, "
        "clipped into [1e-7, 1 - 1e-7]. *Keras (model output)*: the probabilities as the model's sigmoid layer "
        "returns them: Keras' `binary_crossentropy` then finds the logits attached to the tensor "
        "(`_keras_logits`; in graph mode, the Sigmoid op's input) and computes "
        "`sigmoid_cross_entropy_with_logits`, **without clipping**. That is what `model.fit` computes for BCE "
        "in Keras 2.7+ and 3. focal-loss always clips probabilities, so both Keras columns agree for focal.\n\n"
        "| logits | loss | ours | Keras (probabilities) | Keras (model output) | rel diff (prob.) | "
        "rel diff (model out.) |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Ours with clipping off (`loss_eps=0`), BCE on the saturated logits: {unclipped:.8g} "
        "(compare with the *model output* column).\n\n"
        "Saturated pixels: Keras' upper clip bound `1 - 1e-7` rounds to `1 - 1.19e-7` in float32, so on a "
        "plain probability tensor a confidently wrong background pixel costs `-log(1.19e-7) = 15.94` in Keras "
        "and `-log(1e-7) = 16.12` in ours (BCE only; focal-loss clips `1 - p` at exactly 1e-7 like ours). "
        "The loss gradient is zero there in both, so this changes reported loss values, not training."
    )
    report.sections.append(("Losses", body))


def _saturated_gradients_finite(logits: np.ndarray, masks: np.ndarray) -> bool:
    finite = True
    for name in ("focal", "bce"):
        z = torch.from_numpy(logits).requires_grad_(True)
        loss = build_loss(name)(z, torch.from_numpy(masks))
        loss.backward()
        finite &= bool(torch.isfinite(loss)) and bool(torch.isfinite(z.grad).all())
    return finite


# ------------------------------------------------------------------------------------------ metrics


def metric_parity(logits: torch.Tensor, p_keras: np.ndarray, slices: Slices, report: ParityReport,
                  tol: Tolerances) -> None:
    """Our pooled metrics vs scikit-learn on the flattened masks (as the paper computed them)."""
    from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

    overlap = OverlapMetrics(threshold=0.5)
    overlap.update(logits, torch.from_numpy(slices.masks))
    ours = {name: float(value) for name, value in overlap.compute().items()}
    truth = slices.masks.ravel() > 0.5
    sklearn_fns = {"dice": f1_score, "iou": jaccard_score, "precision": precision_score, "recall": recall_score}

    def sklearn_scores(pred: np.ndarray) -> dict[str, float]:
        scores = {name: float(fn(truth, pred, zero_division=0)) for name, fn in sklearn_fns.items()}
        scores["accuracy"] = float(accuracy_score(truth, pred))
        return scores

    # Our metrics threshold logits at 0; the same masks for scikit-learn.
    reference = sklearn_scores(logits.numpy().ravel() > 0)
    from_keras = sklearn_scores(p_keras.ravel() > 0.5)
    rows, worst = [], 0.0
    for name in ("dice", "iou", "precision", "recall", "accuracy"):
        worst = max(worst, abs(ours[name] - reference[name]))
        rows.append(f"| {name} | {ours[name]:.8f} | {reference[name]:.8f} | {from_keras[name]:.8f} |")
    report.check("pooled metrics, ours vs scikit-learn (max abs diff)", worst, tol.metric_abs)
    rounding = int(((torch.sigmoid(logits).numpy().ravel() > 0.5) != (logits.numpy().ravel() > 0)).sum())
    body = (
        "Pooled over all pixels of all slices (the paper's definition). *sklearn (Keras masks)* scores the Keras "
        "model's `p > 0.5` masks, so it also carries the forward difference.\n\n"
        "| metric | ours (torchmetrics counts) | scikit-learn (same masks) | scikit-learn (Keras masks) |\n"
        "|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Threshold: ours uses `logit > 0`, i.e. `p > 0.5` in exact arithmetic; pixels where float32 "
        f"`sigmoid` rounds to exactly 0.5 and the two rules disagree: {rounding}."
    )
    report.sections.append(("Metrics", body))


# ---------------------------------------------------------------------------------------- training


def batch_indices(step: int, batch_size: int, count: int) -> np.ndarray:
    """The slices of step ``step``: consecutive, wrapping around (the same in both frameworks)."""
    return (np.arange(batch_size) + step * batch_size) % count


def train_keras(keras_model, slices: Slices, loss: str, steps: int, batch_size: int, lr: float,
                eps: float) -> np.ndarray:
    """``steps`` Adam steps as Keras' ``fit`` takes them: a ``tf.function`` train step (graph mode, no XLA),
    the model's sigmoid output fed to the loss. Returns each step's loss, computed before its update."""
    from lightning_bts.keras_reference import import_keras, keras_loss

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
    from lightning_bts.keras_reference import build_keras_unet

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
    from lightning_bts.keras_reference import build_keras_unet, import_keras

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
