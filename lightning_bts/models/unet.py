"""The paper's 4-level U-Net, layer for layer the Keras original.

The Keras notebook builds (16 base filters, 3-channel input, 1,941,105 parameters)::

    Lambda(x / 255)
    per level: Conv3x3+ReLU (he_normal) -> Dropout -> Conv3x3+ReLU (he_normal)
    down: MaxPool 2x2 after each of the first ``depth`` blocks; bottleneck block at 16 * 2**depth filters
    up: Conv2DTranspose 2x2 stride 2 -> concat [up, skip] -> block
    Conv1x1 + sigmoid

This module returns *logits* (no sigmoid): every loss and metric in the package takes logits, and
``torch.sigmoid(logits)`` gives the Keras output. Plain ``nn.Module``, no Lightning, so export, parity tests
and other frameworks can use it directly.

Two options go beyond the paper, both off by default (the Keras-exact network): a normalisation layer after
every 3x3 conv (``norm``: batch, instance or group norm), and deep supervision (``deep_supervision``: a 1x1
logit head at every decoder level below full resolution, whose outputs the training loss also scores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lightning_bts.errors import ConfigError
from lightning_bts.models.dropout import FastDropout
from lightning_bts.models.input_norm import check_input_norm, normalise_input

# Keras' he_normal draws from a normal truncated at two standard deviations, and scales the standard
# deviation up by this constant so that the *truncated* distribution has variance 2 / fan_in.
_TRUNCATED_NORMAL_STD_CORRECTION = 0.87962566103423978

KERAS_DROPOUT_DOWN = (0.1, 0.1, 0.2, 0.2, 0.3)  # levels 1..4, then the bottleneck
KERAS_DROPOUT_UP = (0.2, 0.2, 0.1, 0.1)  # deepest decoder level first

NORMS = ("none", "batch", "instance", "group")
GROUP_NORM_CHANNELS = 8  # channels per group; the first level's 16 filters make 2 groups
GROUP_NORM_MAX_GROUPS = 32  # Wu & He's default group count, reached at 256 channels


def resolve_norm(norm: str = "none", batch_norm: bool = False) -> str:
    """The normalisation to build from ``norm`` and the older ``batch_norm`` flag (``True`` means ``"batch"``).

    Raises:
        ConfigError: an unknown ``norm``, or ``batch_norm=True`` beside a different ``norm``.
    """
    if norm not in NORMS:
        raise ConfigError(f"model.norm: unknown normalisation {norm!r}; choose one of {', '.join(NORMS)}")
    if batch_norm and norm not in ("none", "batch"):
        raise ConfigError(f"model.batch_norm=true asks for batch norm but model.norm is {norm!r}; set only "
                          "model.norm (batch_norm is the older spelling of norm: batch)")
    return "batch" if batch_norm else norm


def group_count(channels: int) -> int:
    """GroupNorm groups for ``channels``: groups of 8 channels, at most 32 groups, always dividing ``channels``.

    Groups of a fixed size keep the statistics of the narrow first levels (16 channels: 2 groups) from
    degenerating into instance norm, which 32 groups of 1 channel would be.
    """
    groups = max(1, min(GROUP_NORM_MAX_GROUPS, channels // GROUP_NORM_CHANNELS))
    while channels % groups:
        groups -= 1
    return groups


def norm_layer(norm: str, channels: int) -> nn.Module | None:
    """The normalisation layer placed after a 3x3 conv, or ``None`` for ``"none"``.

    Instance norm has learned affine parameters as nnU-Net's; it keeps no running statistics, so training and
    evaluation normalise each image by its own statistics.
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    return None


def keras_he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """In-place Keras ``he_normal``: truncated normal, std = sqrt(2 / fan_in) / 0.8796."""
    fan_in = weight.shape[1] * math.prod(weight.shape[2:])
    std = math.sqrt(2.0 / fan_in) / _TRUNCATED_NORMAL_STD_CORRECTION
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def keras_glorot_uniform_(weight: torch.Tensor) -> torch.Tensor:
    """In-place Keras ``glorot_uniform`` (the Keras default for layers without ``kernel_initializer``).

    For the fans it does not matter whether the kernel is a conv or a transposed conv: the limit depends on
    fan_in + fan_out only.
    """
    receptive_field = math.prod(weight.shape[2:])
    fan_sum = (weight.shape[0] + weight.shape[1]) * receptive_field
    limit = math.sqrt(6.0 / fan_sum)
    return nn.init.uniform_(weight, -limit, limit)


class ConvBlock(nn.Sequential):
    """Conv3x3+ReLU -> Dropout -> Conv3x3+ReLU, with an optional norm layer after each conv (none in the paper).

    Without a norm the layer indices are the Keras-exact ones (conv 0, dropout 2, conv 3) that weight
    conversion and the parity tests rely on. The layers run in order, except that the ReLU before the dropout
    runs inside it (:meth:`FastDropout.after_relu`: one autograd node instead of two, same result).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float, norm: str = "none") -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1)]
        layers += filter(None, [norm_layer(norm, out_channels)])
        layers += [nn.ReLU(inplace=True), FastDropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)]
        layers += filter(None, [norm_layer(norm, out_channels)])
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.dropout_index = next(i for i, layer in enumerate(self) if isinstance(layer, FastDropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self):
            if index == self.dropout_index - 1:
                continue  # the ReLU, applied by the dropout below
            x = layer.after_relu(x) if index == self.dropout_index else layer(x)
        return x


class UpBlock(nn.Module):
    """Conv2DTranspose 2x2 stride 2, concat [up, skip] (Keras order), then a ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, norm: str = "none") -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.block = ConvBlock(2 * out_channels, out_channels, dropout, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """The paper's U-Net.

    Args:
        in_channels: image channels (3 in the paper: grayscale PNGs read as RGB).
        base_filters: filters of the first level; doubles at each level down.
        depth: number of poolings (4 in the paper); the bottleneck has ``base_filters * 2**depth`` filters.
        dropout_down: ``depth + 1`` rates, encoder levels then bottleneck. Default: the paper's.
        dropout_up: ``depth`` rates, deepest decoder level first. Default: the paper's.
        batch_norm: the older spelling of ``norm="batch"`` (kept so that saved configs build the same net).
        input_scale: multiplies the input first, as the Keras ``Lambda(x / 255)``; 1.0 for pre-scaled input.
        input_norm: ``"scale"`` (the paper: ``x * input_scale``) or ``"zscore"`` (per slice and channel over
            its foreground; :mod:`lightning_bts.models.input_norm`).
        norm: ``"none"`` (the paper), ``"batch"``, ``"instance"`` or ``"group"`` (:func:`group_count` groups)
            after every 3x3 conv, before its ReLU.
        deep_supervision: add a 1x1 logit head at each decoder level below full resolution (``depth - 1``
            heads). In training mode ``forward`` then returns all logit maps, full resolution first; in eval mode
            only the main logits, so prediction and export never see the side heads.

    Shape:
        input ``(N, in_channels, H, W)`` with H and W divisible by ``2**depth``; output logits ``(N, 1, H, W)``
        (in training mode with ``deep_supervision``: a list, then ``(N, 1, H / 2**k, W / 2**k)`` for k = 1..depth-1).

    Raises:
        ConfigError: unknown ``norm`` or ``input_norm``, or ``deep_supervision`` with ``depth`` 1 (no level below
            full resolution).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_filters: int = 16,
        depth: int = 4,
        dropout_down: Sequence[float] | None = None,
        dropout_up: Sequence[float] | None = None,
        batch_norm: bool = False,
        input_scale: float = 1.0 / 255.0,
        norm: str = "none",
        deep_supervision: bool = False,
        input_norm: str = "scale",
    ) -> None:
        super().__init__()
        check_input_norm(input_norm)
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if deep_supervision and depth < 2:
            raise ConfigError("model.deep_supervision needs model.depth >= 2 (a decoder level below full resolution)")
        norm = resolve_norm(norm, batch_norm)
        paper_down, paper_up = paper_dropout_rates(depth)
        dropout_down = tuple(dropout_down) if dropout_down is not None else paper_down
        dropout_up = tuple(dropout_up) if dropout_up is not None else paper_up
        if len(dropout_down) != depth + 1 or len(dropout_up) != depth:
            raise ValueError(
                f"depth={depth} needs {depth + 1} dropout_down and {depth} dropout_up rates, "
                f"got {len(dropout_down)} and {len(dropout_up)}"
            )
        self.depth = depth
        self.input_scale = input_scale
        self.input_norm = input_norm
        self.norm = norm
        self.deep_supervision = deep_supervision
        widths = [base_filters * 2**level for level in range(depth + 1)]

        self.encoder = nn.ModuleList()
        channels = in_channels
        for width, rate in zip(widths[:-1], dropout_down[:-1]):
            self.encoder.append(ConvBlock(channels, width, rate, norm))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1], dropout_down[-1], norm)
        self.decoder = nn.ModuleList(
            UpBlock(widths[level + 1], widths[level], rate, norm)
            for level, rate in zip(reversed(range(depth)), dropout_up)
        )
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)
        # Side heads for decoder levels 1..depth-1 below full resolution, nearest to full resolution first.
        self.side_heads = nn.ModuleList(
            nn.Conv2d(widths[level], 1, kernel_size=1) for level in range(1, depth)
        ) if deep_supervision else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras initialisation: he_normal 3x3 convs, glorot_uniform transposed convs and head, zero biases."""
        heads = {id(self.head)} | {id(head) for head in self.side_heads or ()}
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d) or id(module) in heads:
                keras_glorot_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                keras_he_normal_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.InstanceNorm2d | nn.GroupNorm):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size_multiple = 2**self.depth
        if x.shape[-1] % size_multiple or x.shape[-2] % size_multiple:
            raise ValueError(
                f"input height and width must be divisible by {size_multiple} (2**depth), got "
                f"{tuple(x.shape[-2:])}; resize or pad the images"
            )
        x = normalise_input(x, self.input_norm, self.input_scale)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        levels = []
        for up, skip in zip(self.decoder, reversed(skips)):
            x = up(x, skip)
            levels.append(x)
        logits = self.head(x)
        if self.side_heads is None or not self.training:
            return logits
        # levels[-2] is half resolution, levels[0] the deepest decoder level
        return [logits] + [head(level) for head, level in zip(self.side_heads, reversed(levels[:-1]))]


def paper_dropout_rates(depth: int = 4) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The paper's (down, up) dropout rates; other depths repeat the nearest paper level's rate."""

    def stretch(rates: Sequence[float], count: int) -> tuple[float, ...]:
        if count == len(rates):
            return tuple(rates)
        last = len(rates) - 1
        return tuple(rates[min(round(i * last / max(count - 1, 1)), last)] for i in range(count))

    return stretch(KERAS_DROPOUT_DOWN, depth + 1), stretch(KERAS_DROPOUT_UP, depth)
