"""The one predictor: checkpoint(s) in, tumour probabilities and masks out, the same way for every consumer.

Evaluation, prediction on new scans, the cross-validation runner, post-processing selection and export all
load models through :meth:`Predictor.from_checkpoints`, so a checkpoint means one thing everywhere:

- the preprocessing it was trained with (skull stripping, size, channels; :mod:`lightning_bts.training.checkpoints`);
  a model trained on neighbouring slices (``data.neighbour_slices``) gets each slice's neighbours where the input is
  a scan (:func:`prepare_scan`), and the slice alone in all three channels where it is a single image;
- several checkpoints are an ensemble: the mean of the members' probabilities (averaging probabilities, not
  logits or votes, keeps one over-confident member from deciding alone);
- mirror TTA (:mod:`lightning_bts.evaluation.tta`): the mean over mirrored views of the slice, each prediction
  mirrored back: none, the horizontal mirror (``flip``), or the mirrors along both axes (``mirror``);
- autocast as the ``precision`` option says;
- the post-processing and TTA stored with the checkpoint (:mod:`lightning_bts.evaluation.settings`), unless
  overridden;
- the device, chosen once: ``auto`` takes a GPU when there is one, and a GPU that is asked for but missing is
  an error at once, never a silent fallback to the CPU;
- the backend: PyTorch as trained, or ONNX Runtime on the CPU (:mod:`lightning_bts.evaluation.backends`).

Models are only called as ``model(images)`` on uint8 ``(N, C, S, S)`` batches in eval mode and must return
logits ``(N, 1, S, S)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from lightning_bts.data.neighbours import stack_neighbours
from lightning_bts.data.preprocess import preprocess_image
from lightning_bts.errors import ConfigError, UserError
from lightning_bts.evaluation.backends import check_backend, on_backend
from lightning_bts.evaluation.postprocess import PostProcessing
from lightning_bts.evaluation.settings import InferenceSettings, resolve_settings
from lightning_bts.evaluation.tta import check_tta, mirror_views
from lightning_bts.host_memory import keep_freed_memory
from lightning_bts.training.checkpoints import CheckpointInfo, Preprocessing, load_members

PRECISIONS = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class InferenceError(UserError):
    """Inputs or outputs that cannot be used (no images, an output folder holding inputs, a missing GPU, ...)."""


def resolve_device(name: str | torch.device | None = "auto", option: str = "--device") -> torch.device:
    """The device ``name`` asks for: ``auto`` (or ``None``) is the first CUDA GPU if present, else the CPU.

    ``gpu`` means ``cuda``. ``option`` names the setting in error messages.

    Raises:
        InferenceError: an unknown device, or a GPU (CUDA, MPS) that is not available here.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = "cuda" + str(name)[3:] if str(name).startswith("gpu") else str(name)
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise InferenceError(f"{option} {name!r} is not a device ({error}); use cpu, cuda, cuda:1, mps or auto") \
            from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InferenceError(f"{option} {name}: no CUDA GPU is available here; use {option} cpu, or "
                                 f"{option} auto (a GPU when there is one)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InferenceError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                                 f"numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InferenceError(f"{option} {name}: MPS is not available here; use {option} cpu")
    return device


def check_precision(precision: str, option: str = "--precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; ``option`` names the setting in the error."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{option} {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    return precision


def prepare_image(image: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 ``(C, S, S)`` model input from a uint8 ``(H, W)`` or ``(H, W, 3)`` RGB image, as in training (for a
    model trained on neighbouring slices: the image as a scan of one slice, as the data module has them)."""
    if preprocessing.neighbour_slices:
        return prepare_scan([image], preprocessing)[0]
    prepared = preprocess_image(image, preprocessing.image_size, preprocessing.skull_strip,
                                rgb=preprocessing.in_channels == 3)
    return np.ascontiguousarray(prepared.transpose(2, 0, 1))


def prepare_scan(images: Sequence[np.ndarray], preprocessing: Preprocessing) -> np.ndarray:
    """uint8 ``(N, C, S, S)`` model inputs of consecutive slices of one scan: with ``neighbour_slices`` each slice's
    channels hold the slice before it, itself and the slice after it (:mod:`lightning_bts.data.neighbours`),
    otherwise each slice as :func:`prepare_image` makes it."""
    if not preprocessing.neighbour_slices:
        return np.stack([prepare_image(image, preprocessing) for image in images])
    gray = np.stack([preprocess_image(image, preprocessing.image_size, preprocessing.skull_strip, rgb=False)
                     for image in images])
    one_scan = ["scan"] * len(images)
    return np.ascontiguousarray(stack_neighbours(gray, one_scan).transpose(0, 3, 1, 2))


def to_original_size(probability: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float32 ``(S, S)`` probability map resized to ``shape`` (H, W): linear when enlarging, area when shrinking."""
    height, width = shape
    if probability.shape == (height, width):
        return probability.astype(np.float32, copy=False)
    enlarging = height > probability.shape[0] or width > probability.shape[1]
    return cv2.resize(probability.astype(np.float32, copy=False), (width, height),
                      interpolation=cv2.INTER_LINEAR if enlarging else cv2.INTER_AREA)


class Predictor:
    """Mean tumour probability of one or more models (optionally with mirror TTA), and its post-processed mask.

    Args:
        models: modules returning logits ``(N, 1, S, S)`` for uint8 ``(N, C, S, S)`` images; put in eval mode.
        preprocessing: what their input must look like.
        device: where the models run (:func:`resolve_device`); they are moved there.
        tta: which mirrored views to average (:data:`~lightning_bts.evaluation.tta.TTA_MODES`; ``True`` and
            ``False`` mean ``flip`` and ``none``).
        precision: one of :data:`PRECISIONS`; ``bf16-mixed``/``16-mixed`` autocast the forward passes.
        postprocessing: how :meth:`masks` turns probabilities into masks (default: the paper's rule).
        sources: what the checkpoints behind ``models`` record (:meth:`from_checkpoints` fills it).
        settings_source: where ``tta`` and ``postprocessing`` came from (see :class:`InferenceSettings`).
        backend: what runs ``models`` (:data:`~lightning_bts.evaluation.backends.BACKENDS`); recorded here,
            :meth:`from_checkpoints` converts them.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        preprocessing: Preprocessing,
        device: str | torch.device = "cpu",
        tta: str | bool = "none",
        precision: str = "32-true",
        postprocessing: PostProcessing | None = None,
        sources: Sequence[CheckpointInfo] = (),
        settings_source: str = "default",
        backend: str = "torch",
    ) -> None:
        if not models:
            raise InferenceError("a Predictor needs at least one model")
        keep_freed_memory()
        self.device = resolve_device(device)
        self.precision = check_precision(precision)
        self.backend = check_backend(backend, self.device, self.precision)
        self.models = [model.eval().to(self.device) for model in models]
        self.preprocessing = preprocessing
        self.tta = check_tta(tta)
        self.postprocessing = postprocessing or PostProcessing()
        self.sources = tuple(sources)
        self.settings_source = settings_source

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | Path],
        device: str | torch.device = "cpu",
        precision: str = "32-true",
        tta: str | bool | None = None,
        postprocessing: PostProcessing | None = None,
        threshold: float | None = None,
        backend: str = "torch",
    ) -> Predictor:
        """Loads ``paths`` as an ensemble with the settings they store; arguments other than ``None`` override.

        The device, precision and backend are checked before any file is read.

        Raises:
            InferenceError: a device that is not available. ConfigError: an unknown precision, backend or bad
            override. BackendError: a backend that cannot run here as asked.
            CheckpointError: see :func:`lightning_bts.training.checkpoints.load_members` and
            :func:`lightning_bts.evaluation.settings.resolve_settings`.
        """
        device = resolve_device(device)
        check_backend(backend, device, check_precision(precision))
        models, infos = load_members(paths, map_location=device)
        settings = resolve_settings(infos, postprocessing, threshold, tta)
        preprocessing = infos[0].preprocessing
        models = on_backend(models, backend, preprocessing.image_size, preprocessing.in_channels)
        return cls(models, preprocessing, device, settings.tta, precision, settings.postprocessing, infos,
                   settings.source, backend)

    @property
    def settings(self) -> InferenceSettings:
        return InferenceSettings(self.postprocessing, self.tta, self.settings_source)

    def with_tta(self, tta: str | bool) -> Predictor:
        """The same models and settings with another TTA mode (models are shared, not copied)."""
        return Predictor(self.models, self.preprocessing, self.device, tta, self.precision, self.postprocessing,
                         self.sources, self.settings_source, self.backend)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """float32 ``(N, S, S)`` tumour probabilities of preprocessed uint8 ``(N, C, S, S)`` images."""
        return self.mode_probabilities(images, (self.tta,))[0]

    @torch.inference_mode()
    def mode_probabilities(self, images: torch.Tensor | np.ndarray, modes: Sequence[str | bool]) -> list[np.ndarray]:
        """:meth:`probabilities` under each TTA mode of ``modes``, each view of each model predicted once and shared
        by the modes that use it (post-processing selection compares the modes on the same slices)."""
        batch = torch.as_tensor(images).to(self.device)
        expected = (self.preprocessing.in_channels, self.preprocessing.image_size, self.preprocessing.image_size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise InferenceError(f"model input must be (N, {', '.join(map(str, expected))}) as preprocessed for "
                                 f"this checkpoint, got {tuple(batch.shape)}")
        predicted: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        maps = []
        for mode in modes:
            views = mirror_views(mode)
            total = torch.zeros((batch.shape[0], *batch.shape[2:]), dtype=torch.float32, device=self.device)
            for member, model in enumerate(self.models):
                for dims in views:
                    if (member, dims) not in predicted:
                        predicted[member, dims] = self._probability(model, batch, dims)
                    total += predicted[member, dims]
            maps.append((total / (len(self.models) * len(views))).cpu().numpy())
        return maps

    def _probability(self, model: nn.Module, batch: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """float32 ``(N, S, S)`` of the batch mirrored along ``dims`` (none: as it is), mirrored back."""
        dtype = PRECISIONS[self.precision]
        cast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with cast:
            logits = model(torch.flip(batch, dims=dims) if dims else batch)
        probability = torch.sigmoid(logits.float())[:, 0]
        return torch.flip(probability, dims=dims) if dims else probability

    def masks(self, probabilities: Sequence[np.ndarray]) -> list[np.ndarray]:
        """bool masks of probability maps (any sizes), by :attr:`postprocessing`."""
        return [self.postprocessing.apply(probability) for probability in probabilities]

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """float32 probability maps at each image's own size, for uint8 ``(H, W)`` or ``(H, W, 3)`` images."""
        if not images:
            return []
        batch = np.stack([prepare_image(image, self.preprocessing) for image in images])
        return [to_original_size(p, image.shape[:2]) for p, image in zip(self.probabilities(batch), images)]

    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """bool tumour masks at each image's own size: :meth:`predict`, then :attr:`postprocessing`."""
        return self.masks(self.predict(images))
