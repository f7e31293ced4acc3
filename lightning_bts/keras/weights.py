"""Move weights between the Keras original and our :class:`~lightning_bts.models.UNet`, with h5py only.

Why h5py and not ``keras.models.load_model``: the paper's model starts with ``Lambda(lambda x: x / 255)``,
and deserialising a Lambda means running pickled bytecode, which Keras rightly refuses in ``safe_mode``. We
never deserialise anything: we read the weight arrays, match them to our layers by *architecture order*, and
check every shape. So conversion works without TensorFlow, on files from Keras 2 and Keras 3.

Files read (the format is detected from the content, not the suffix):

* ``.keras`` (Keras 3 zip): ``model.weights.h5`` inside, laid out as ``.weights.h5`` below;
* ``.weights.h5`` (Keras 3 ``save_weights``): ``layers/<class>[_k]/vars/{0,1}``, where Keras names each group
  after the layer *class* and its rank among the model's layers of that class (``conv2d``, ``conv2d_1``, ...),
  not after the layer name, so the ``k``-th ``Conv2D`` of the file is our ``k``-th 3x3/1x1 conv;
* ``.h5`` (Keras 2 or 3 legacy ``model.save`` / ``save_weights``): ``[model_weights/]<layer>/...`` with the
  layers in model order in the ``layer_names`` attribute and each layer's arrays in ``weight_names``.

In the U-Net every layer with weights lies on the main path (skips only feed ``concatenate``), so the
model's topological layer order is the architecture order: encoder convs, bottleneck convs, then per
decoder level transposed conv and two convs, then the 1x1 head.

Layout conversion (Keras is channels-last, kernels put the spatial axes first):

==================  ==========================  ==========================  ===================
layer               Keras kernel                torch weight                permutation (K->T)
==================  ==========================  ==========================  ===================
``Conv2D``          ``(kh, kw, in, out)``       ``(out, in, kh, kw)``       ``(3, 2, 0, 1)``
``Conv2DTranspose`` ``(kh, kw, out, in)``       ``(in, out, kh, kw)``       ``(3, 2, 0, 1)``
bias                ``(out,)``                  ``(out,)``                  none
==================  ==========================  ==========================  ===================

Both kernels use the same permutation because Keras stores a transposed conv's kernel with ``out`` before
``in``, just as torch swaps them for ``ConvTranspose2d``; no spatial flip is needed (both frameworks define
the transposed conv as the gradient of a cross-correlation). The inverse permutation is ``(2, 3, 1, 0)``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from lightning_bts.errors import UserError
from lightning_bts.models.unet import UNet

CONV = "Conv2D"
CONV_TRANSPOSE = "Conv2DTranspose"

# Keras kernel axes -> torch weight axes, and back (see the module docstring's table).
KERAS_TO_TORCH_KERNEL = {CONV: (3, 2, 0, 1), CONV_TRANSPOSE: (3, 2, 0, 1)}
TORCH_TO_KERAS_KERNEL = {CONV: (2, 3, 1, 0), CONV_TRANSPOSE: (2, 3, 1, 0)}

# Group names Keras 3 gives each layer class in a weights file (snake case of the class name).
_KERAS3_GROUP_CLASS = {"conv2d": CONV, "conv2d_transpose": CONV_TRANSPOSE}
NORM_LAYERS = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)  # none exists in the Keras original
_CLASS_GROUP = {cls: group for group, cls in _KERAS3_GROUP_CLASS.items()}


class KerasWeightsError(UserError):
    """A Keras file does not hold the original U-Net's weights; the message names the file and the layer."""


@dataclass(frozen=True)
class KerasLayer:
    """One Keras layer with weights, as read from a file.

    Attributes:
        name: the layer's name in the Keras model (``conv2d_19``), for messages.
        location: where the arrays are in the file (``layers/conv2d/vars``), for messages.
        class_name: ``Conv2D`` / ``Conv2DTranspose`` when the file says so, ``None`` when it does not
            (legacy weights-only ``.h5``); then only the shapes are checked.
        kernel: Keras layout, see the module docstring.
        bias: ``(out,)``.
    """

    name: str
    location: str
    class_name: str | None
    kernel: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class TorchLayer:
    """One of our layers with weights, in architecture order."""

    name: str  # module path in the UNet, e.g. ``decoder.0.up``
    class_name: str  # the Keras class it corresponds to
    module: nn.Conv2d | nn.ConvTranspose2d

    def keras_kernel_shape(self) -> tuple[int, ...]:
        """The shape the Keras kernel must have."""
        return tuple(self.module.weight.shape[i] for i in TORCH_TO_KERAS_KERNEL[self.class_name])


def unet_layers(model: UNet) -> list[TorchLayer]:
    """Our layers with weights in the Keras model's order (encoder, bottleneck, decoder, head).

    Raises:
        KerasWeightsError: the UNet has a normalisation layer (``norm`` other than ``none``: batch, instance or
            group norm), which the Keras original does not have.
    """
    norm = getattr(model, "norm", "none")
    if norm != "none" or any(isinstance(module, NORM_LAYERS) for module in model.modules()):
        flag = "batch_norm=True" if norm == "batch" else f"norm={norm!r}"
        raise KerasWeightsError(f"this UNet has {flag}; the Keras original has no normalisation layers, so its "
                                f"weights cannot be exchanged with it (build the UNet with norm='none', "
                                f"batch_norm=False)")
    layers: list[TorchLayer] = []

    def add_block(prefix: str, block: nn.Module) -> None:
        for child_name, child in block.named_children():
            if isinstance(child, nn.Conv2d):
                layers.append(TorchLayer(f"{prefix}.{child_name}", CONV, child))

    for index, block in enumerate(model.encoder):
        add_block(f"encoder.{index}", block)
    add_block("bottleneck", model.bottleneck)
    for index, up_block in enumerate(model.decoder):
        layers.append(TorchLayer(f"decoder.{index}.up", CONV_TRANSPOSE, up_block.up))
        add_block(f"decoder.{index}.block", up_block.block)
    layers.append(TorchLayer("head", CONV, model.head))
    return layers


def read_keras_layers(path: str | Path) -> list[KerasLayer]:
    """The Conv2D/Conv2DTranspose weights of a Keras model file, in architecture order.

    Accepts ``.keras``, ``.weights.h5`` and legacy ``.h5`` files (see the module docstring).

    Raises:
        KerasWeightsError: no such file.
        KerasWeightsError: not a Keras model/weights file, or it holds layers the original does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise KerasWeightsError(f"Keras file {path} does not exist")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise KerasWeightsError(f"{path} is a zip file without model.weights.h5; expected a .keras model")
            data = archive.read("model.weights.h5")
        with h5py.File(io.BytesIO(data), "r") as h5:
            return _read_keras3(h5, f"{path}!model.weights.h5")
    if not h5py.is_hdf5(path):
        raise KerasWeightsError(f"{path} is neither a .keras zip nor an HDF5 (.h5 / .weights.h5) file")
    with h5py.File(path, "r") as h5:
        if "layers" in h5 and isinstance(h5["layers"], h5py.Group):
            return _read_keras3(h5, str(path))
        root = h5["model_weights"] if "model_weights" in h5 else h5
        if "layer_names" in root.attrs:
            return _read_legacy(h5, root, str(path))
    raise KerasWeightsError(
        f"{path} is an HDF5 file but not a Keras model or weights file: no 'layers' group (Keras 3) and no "
        "'layer_names' attribute (legacy .h5)"
    )


def _read_keras3(h5: h5py.File, source: str) -> list[KerasLayer]:
    """Keras 3 layout: per-class groups, ranked by the layer's position in the model; interleave them."""
    by_class: dict[str, list[tuple[int, KerasLayer]]] = {CONV: [], CONV_TRANSPOSE: []}
    for group_name, group in h5["layers"].items():
        variables = group.get("vars")
        if variables is None or len(variables) == 0:
            continue  # Input, Lambda, Dropout, MaxPooling2D, Concatenate: no weights
        match = re.fullmatch(r"(.+?)(?:_(\d+))?", group_name)
        base, rank = match.group(1), int(match.group(2) or 0)
        location = f"{source}:layers/{group_name}/vars"
        layer_name = _decode(variables.attrs.get("name", group_name))
        class_name = _KERAS3_GROUP_CLASS.get(base)
        if class_name is None:
            raise KerasWeightsError(
                f"{source}: layer {layer_name!r} ({location}) has weights but is not a Conv2D or "
                "Conv2DTranspose; the original U-Net has only those (different architecture?)"
            )
        if len(variables) != 2:
            raise KerasWeightsError(f"{source}: layer {layer_name!r} ({location}) holds {len(variables)} arrays; "
                                    "expected 2 (kernel, bias)")
        kernel, bias = np.asarray(variables["0"]), np.asarray(variables["1"])
        by_class[class_name].append((rank, KerasLayer(layer_name, location, class_name, kernel, bias)))
    convs = [layer for _, layer in sorted(by_class[CONV], key=lambda item: item[0])]
    ups = [layer for _, layer in sorted(by_class[CONV_TRANSPOSE], key=lambda item: item[0])]
    depth = len(ups)
    if len(convs) != 4 * depth + 3:
        raise KerasWeightsError(
            f"{source}: {len(convs)} Conv2D and {depth} Conv2DTranspose layers; the original U-Net of depth "
            f"{depth} has {4 * depth + 3} Conv2D (two per level and bottleneck, two per decoder level, one head)"
        )
    ordered = convs[: 2 * (depth + 1)]
    for level in range(depth):
        start = 2 * (depth + 1) + 2 * level
        ordered += [ups[level], *convs[start : start + 2]]
    return [*ordered, convs[-1]]


def _read_legacy(h5: h5py.File, root: h5py.Group, source: str) -> list[KerasLayer]:
    """Legacy layout: layers in model order in ``layer_names``, their arrays listed in ``weight_names``."""
    classes = _legacy_classes(h5)
    layers = []
    for layer_name in (_decode(name) for name in root.attrs["layer_names"]):
        group = root[layer_name]
        weight_names = [_decode(name) for name in group.attrs.get("weight_names", [])]
        if not weight_names:
            continue
        location = f"{source}:{group.name}"
        if len(weight_names) != 2:
            raise KerasWeightsError(f"{source}: layer {layer_name!r} ({location}) holds {len(weight_names)} "
                                    f"arrays {weight_names}; the original U-Net's layers hold 2 (kernel, bias)")
        arrays = [np.asarray(group[name]) for name in weight_names]
        kernel, bias = sorted(arrays, key=lambda array: -array.ndim)  # kernel 4-D first, bias 1-D
        class_name = classes.get(layer_name)
        if class_name is not None and class_name not in (CONV, CONV_TRANSPOSE):
            raise KerasWeightsError(
                f"{source}: layer {layer_name!r} ({location}) is a {class_name} with weights; the original U-Net "
                "has only Conv2D and Conv2DTranspose layers with weights (different architecture?)"
            )
        layers.append(KerasLayer(layer_name, location, class_name, kernel, bias))
    return layers


def _legacy_classes(h5: h5py.File) -> dict[str, str]:
    """Layer name -> class from the JSON ``model_config`` of a full-model ``.h5`` (plain JSON, no code runs)."""
    config = h5.attrs.get("model_config")
    if config is None:
        return {}
    try:
        layers = json.loads(_decode(config))["config"]["layers"]
        return {layer["config"]["name"]: layer["class_name"] for layer in layers}
    except (ValueError, KeyError, TypeError):
        return {}  # unusual config: fall back to checking shapes only


def _decode(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def infer_unet_config(path: str | Path) -> dict[str, int]:
    """``in_channels``, ``base_filters`` and ``depth`` of the U-Net stored in a Keras file.

    Raises:
        KerasWeightsError: the file cannot hold the original U-Net (too few layers, odd first kernel).
    """
    layers = read_keras_layers(path)
    if len(layers) < 7 or layers[0].kernel.ndim != 4:
        raise KerasWeightsError(f"{path}: {len(layers)} layers with weights; the original U-Net has at least 7")
    if any(layer.class_name is not None for layer in layers):
        depth = sum(1 for layer in layers if layer.class_name == CONV_TRANSPOSE)
    else:  # legacy weights-only file: 4 * depth + 3 convs and depth transposed convs
        depth, rest = divmod(len(layers) - 3, 5)
        if rest:
            raise KerasWeightsError(f"{path}: {len(layers)} layers with weights; the original U-Net has "
                                    "5 * depth + 3 (two convs per level, bottleneck and decoder level, depth "
                                    "transposed convs, one head)")
    _, _, in_channels, base_filters = layers[0].kernel.shape
    return {"in_channels": int(in_channels), "base_filters": int(base_filters), "depth": int(depth)}


def load_keras_weights(model: UNet, path: str | Path) -> UNet:
    """Copy the weights of a Keras file of the original architecture into ``model`` (in place) and return it.

    Every layer's class (when the file records it) and kernel/bias shapes are checked before anything is
    copied, so a failed load leaves ``model`` untouched.

    Raises:
        KerasWeightsError: a different architecture; the message names the file, the Keras layer, our layer
            and the shapes.
    """
    keras_layers = read_keras_layers(path)
    torch_layers = unet_layers(model)
    if len(keras_layers) != len(torch_layers):
        raise KerasWeightsError(
            f"{path}: {len(keras_layers)} layers with weights, but UNet(depth={model.depth}) has "
            f"{len(torch_layers)}; pass the matching depth/base_filters (see infer_unet_config)"
        )
    converted = []
    for keras_layer, torch_layer in zip(keras_layers, torch_layers):
        where = f"{path}: Keras layer {keras_layer.name!r} ({keras_layer.location}) vs our {torch_layer.name!r}"
        if keras_layer.class_name is not None and keras_layer.class_name != torch_layer.class_name:
            raise KerasWeightsError(f"{where}: the file has a {keras_layer.class_name} where the original U-Net "
                                    f"has a {torch_layer.class_name} (different architecture)")
        expected_kernel = torch_layer.keras_kernel_shape()
        expected_bias = tuple(torch_layer.module.bias.shape)
        if keras_layer.kernel.shape != expected_kernel or keras_layer.bias.shape != expected_bias:
            raise KerasWeightsError(
                f"{where}: kernel {keras_layer.kernel.shape} and bias {keras_layer.bias.shape}, expected "
                f"{expected_kernel} and {expected_bias} (different in_channels, base_filters or depth?)"
            )
        kernel = np.transpose(keras_layer.kernel, KERAS_TO_TORCH_KERNEL[torch_layer.class_name])
        converted.append((torch_layer.module, kernel, keras_layer.bias))
    with torch.no_grad():
        for module, kernel, bias in converted:
            module.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            module.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
    return model


def unet_from_keras(path: str | Path, **unet_kwargs) -> UNet:
    """A new :class:`UNet` shaped after the Keras file (``infer_unet_config``) holding its weights.

    ``unet_kwargs`` go to ``UNet`` (e.g. dropout rates); ``in_channels``, ``base_filters`` and ``depth``
    default to the file's.
    """
    config = {**infer_unet_config(path), **unet_kwargs}
    return load_keras_weights(UNet(**config), path)


def export_keras_weights(model: UNet, path: str | Path) -> Path:
    """Write ``model``'s weights as a Keras 3 ``.weights.h5`` that ``keras_model.load_weights`` accepts.

    The Keras model must be the original architecture with the same ``in_channels``, ``base_filters`` and
    ``depth`` (:func:`lightning_bts.keras.reference.build_keras_unet`). Only layers with weights are written;
    Keras finds nothing to load for the others.

    Raises:
        ValueError: ``path`` does not end in ``.weights.h5`` (Keras 3 refuses other names).
    """
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"Keras 3 loads weights only from files named *.weights.h5, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ranks: dict[str, int] = {}
    with h5py.File(path, "w") as h5:
        layers_group = h5.create_group("layers")
        for layer in unet_layers(model):
            rank = ranks.get(layer.class_name, 0)
            ranks[layer.class_name] = rank + 1
            group_name = _CLASS_GROUP[layer.class_name] + (f"_{rank}" if rank else "")
            variables = layers_group.create_group(group_name).create_group("vars")
            variables.attrs["name"] = layer.name
            weight = layer.module.weight.detach().cpu().float().numpy()
            kernel = np.ascontiguousarray(np.transpose(weight, TORCH_TO_KERAS_KERNEL[layer.class_name]))
            variables.create_dataset("0", data=kernel)
            variables.create_dataset("1", data=layer.module.bias.detach().cpu().float().numpy())
        h5.create_group("vars")
    return path


__all__ = [
    "CONV",
    "CONV_TRANSPOSE",
    "KERAS_TO_TORCH_KERNEL",
    "TORCH_TO_KERAS_KERNEL",
    "KerasLayer",
    "KerasWeightsError",
    "TorchLayer",
    "export_keras_weights",
    "infer_unet_config",
    "load_keras_weights",
    "read_keras_layers",
    "unet_from_keras",
    "unet_layers",
]
