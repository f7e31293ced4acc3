"""Builds the network a config names: the paper's U-Net (default) or any segmentation_models_pytorch architecture.

smp networks are built with ``encoder_weights=None`` (randomly initialised: nothing is downloaded, as the paper's
U-Net) and one output channel of logits, and take the paper's input scaling (images arrive as 0..255, the Keras
``Lambda(x / 255)``) through :class:`InputScaled`. Options that only the paper's U-Net has (``base_filters``,
``depth``, ``dropout_scale``, ``norm``, ``deep_supervision``) are refused for smp networks rather than ignored.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from lightning_bts.errors import ConfigError
from lightning_bts.models.input_norm import check_input_norm, normalise_input
from lightning_bts.models.unet import UNet, paper_dropout_rates

PAPER_UNET = "paper_unet"
DEFAULT_ENCODER = "resnet34"  # smp's own default
# The paper U-Net's settings; an smp network must leave them at these values (it has none of these layers).
PAPER_ONLY_DEFAULTS = {"base_filters": 16, "depth": 4, "dropout_scale": 1.0, "norm": "none", "batch_norm": False,
                       "deep_supervision": False}


class InputScaled(nn.Module):
    """``net(x * input_scale)``: an smp network fed 0..255 images as the paper's U-Net is (or, with
    ``input_norm="zscore"``, each slice's foreground z-score: :mod:`lightning_bts.models.input_norm`).

    Shape:
        input ``(N, C, H, W)``; output what ``net`` returns (logits ``(N, 1, H, W)`` for smp networks).
    """

    def __init__(self, net: nn.Module, input_scale: float = 1.0 / 255.0, input_norm: str = "scale") -> None:
        super().__init__()
        check_input_norm(input_norm)
        self.net = net
        self.input_scale = input_scale
        self.input_norm = input_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(normalise_input(x, self.input_norm, self.input_scale))


def smp_architectures() -> dict[str, str]:
    """smp's architecture class names by lower-case name (smp matches names case-insensitively)."""
    import segmentation_models_pytorch as smp

    return {name: cls.__name__ for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


def architecture_names() -> list[str]:
    """Every valid ``model.arch``: ``paper_unet`` then smp's classes."""
    return [PAPER_UNET, *smp_architectures().values()]


def check_encoder(encoder: str) -> None:
    """Accept smp's own encoder names and ``tu-<timm model>``.

    Raises:
        ConfigError: an unknown name; the message suggests close names and lists smp's.
    """
    import segmentation_models_pytorch as smp

    names = smp.encoders.get_encoder_names()
    if encoder in names:
        return
    if encoder.startswith("tu-"):
        import timm

        if timm.is_model(encoder[3:]):
            return
        raise ConfigError(f"model.encoder: timm knows no model {encoder[3:]!r} (from {encoder!r}); "
                          "see timm.list_models() for valid names")
    close = difflib.get_close_matches(encoder, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"model.encoder: unknown encoder {encoder!r}.{hint} Valid: {', '.join(names)}, or "
                      "'tu-<name>' for any timm model")


def build_network(
    arch: str = PAPER_UNET,
    encoder: str = DEFAULT_ENCODER,
    in_channels: int = 3,
    base_filters: int = 16,
    depth: int = 4,
    dropout_scale: float = 1.0,
    norm: str = "none",
    batch_norm: bool = False,
    input_scale: float = 1.0 / 255.0,
    deep_supervision: bool = False,
    input_norm: str = "scale",
) -> nn.Module:
    """The network for these options, returning logits ``(N, 1, H, W)`` for 0..255 input.

    ``paper_unet``: :class:`~lightning_bts.models.unet.UNet` with the paper's dropout rates times
    ``dropout_scale`` (each capped at 0.9). Otherwise an smp architecture by name (case-insensitive) with
    ``encoder``, randomly initialised. ``input_norm`` (both kinds): ``scale`` (the paper's ``x * input_scale``)
    or ``zscore`` (:mod:`lightning_bts.models.input_norm`).

    Raises:
        ConfigError: unknown architecture, encoder or input normalisation (valid choices listed), a paper-U-Net
            option set for an smp network, a negative ``dropout_scale``, or an encoder the architecture cannot take.
    """
    if dropout_scale < 0:
        raise ConfigError(f"model.dropout_scale must be >= 0, got {dropout_scale}")
    if arch == PAPER_UNET:
        down, up = paper_dropout_rates(depth)
        return UNet(in_channels=in_channels, base_filters=base_filters, depth=depth,
                    dropout_down=[min(rate * dropout_scale, 0.9) for rate in down],
                    dropout_up=[min(rate * dropout_scale, 0.9) for rate in up],
                    batch_norm=batch_norm, input_scale=input_scale, norm=norm, deep_supervision=deep_supervision,
                    input_norm=input_norm)

    architectures = smp_architectures()
    if arch.lower() not in architectures:
        raise ConfigError(f"model.arch: unknown architecture {arch!r}; choose one of {', '.join(architecture_names())}")
    given = {"base_filters": base_filters, "depth": depth, "dropout_scale": dropout_scale, "norm": norm,
             "batch_norm": batch_norm, "deep_supervision": deep_supervision}
    for option, value in given.items():
        if value != PAPER_ONLY_DEFAULTS[option]:
            raise ConfigError(f"model.{option}={value!r} applies to model.arch=paper_unet only; smp's {arch} has no "
                              f"such setting (it brings its own normalisation and has no side outputs): leave "
                              f"model.{option} at {PAPER_ONLY_DEFAULTS[option]!r}")
    check_encoder(encoder)
    import segmentation_models_pytorch as smp

    try:
        net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=1)
    except (ValueError, KeyError, RuntimeError, AssertionError) as error:
        raise ConfigError(f"model.arch={arch} cannot be built with model.encoder={encoder}: {error}") from error
    return InputScaled(net, input_scale, input_norm)


def check_image_size(net: nn.Module, image_size: int, arch: str = PAPER_UNET, in_channels: int = 3) -> None:
    """Refuse an ``image_size`` the network cannot take, before any training step.

    The paper's U-Net needs a multiple of ``2**depth``. An smp network is asked first with smp's own check (a
    multiple of its encoder's output stride), then with one forward pass of a blank image in eval mode, which
    catches the rest (PAN, for one, needs at least 128x128 with a stride-32 encoder).

    Raises:
        ConfigError: the message names ``data.image_size``, ``model.arch`` and what went wrong.
    """
    if isinstance(net, UNet):
        multiple = 2**net.depth
        if image_size % multiple:
            raise ConfigError(f"data.image_size={image_size} does not suit model.arch={arch} with "
                              f"model.depth={net.depth}: the size must be a multiple of {multiple} (2**depth)")
        return
    inner = net.net if isinstance(net, InputScaled) else net
    check = getattr(inner, "check_input_shape", None)
    if check is not None:
        try:
            check(torch.empty(1, 1, image_size, image_size))  # smp's own check reads only the shape
        except RuntimeError as error:
            stride = getattr(getattr(inner, "encoder", None), "output_stride", None)
            raise ConfigError(f"data.image_size={image_size} does not suit model.arch={arch}: the size must be a "
                              f"multiple of {stride} (its encoder's output stride). smp says: {error}") from error
    training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, in_channels, image_size, image_size))
    except RuntimeError as error:
        raise ConfigError(f"data.image_size={image_size} is too small or otherwise unfit for model.arch={arch}: a "
                          f"blank {image_size}x{image_size} image fails in its forward pass ({error}); try a larger "
                          "data.image_size") from error
    finally:
        net.train(training)
