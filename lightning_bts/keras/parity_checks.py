"""The single-step parity checks against the Keras original on the *same* weights and the *same* real slices:
forward pass, losses, metrics. Each returns its :class:`~lightning_bts.keras.parity_report.Check` rows into the report.

Keras and TensorFlow are imported lazily, through :mod:`lightning_bts.keras.reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from lightning_bts.data.records import load_records, read_pair
from lightning_bts.keras import weights as keras_io
from lightning_bts.keras.parity_report import ParityReport, Tolerances
from lightning_bts.losses import build_loss
from lightning_bts.metrics import OverlapMetrics
from lightning_bts.models.unet import UNet

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
    from lightning_bts.keras.reference import import_keras, keras_loss

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
