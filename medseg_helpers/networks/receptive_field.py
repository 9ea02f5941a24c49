"""Receptive field of a segmentation network: computed exactly, and measured.

The receptive field of an output pixel is the set of input pixels that can change it. Along
one axis it is an interval, found by walking back from the output through the layers:

- a convolution or pooling (kernel ``k``, stride ``s``, dilation ``d``, padding ``p``) maps
  units ``[a, b]`` to inputs ``[a s - p, b s - p + (k - 1) d]``;
- a transposed convolution (kernel ``k``, stride ``s``, padding ``p``) maps output pixels
  ``[a, b]`` to inputs ``[ceil((a + p - k + 1) / s), floor((b + p) / s)]`` (one input pixel
  per output for the U-Net's ``k = s = 2``);
- (bi/tri)linear upsampling by ``f`` (``align_corners=False``) reads the two input pixels
  around ``(i + 0.5) / f - 0.5``.

Without upsampling every output pixel has the same field and the usual recurrence
``rf += (k - 1) d jump; jump *= s`` (Araujo, Norris and Sim 2019, "Computing Receptive Fields
of Convolutional Neural Networks", Distill) gives it. After downsampling *and* upsampling
(U-Net, SegNet) the field depends on where a pixel sits on the pooling grid, so
`receptive_field` reports the largest and `receptive_field_range` both ends.
`measure_receptive_field` measures it on a real model from the gradient of one output pixel
(the tests check the arithmetic against it at every grid position).

Everything here is per axis, for an unbounded input (borders and padding of the image are
ignored). Luo et al. (2016), "Understanding the Effective Receptive Field in Deep
Convolutional Neural Networks", NeurIPS: the pixels that *matter* in a trained network (the
effective receptive field) are a much smaller, roughly Gaussian centre of this field.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch
from torch import nn

__all__ = ["Layer", "encoder_decoder_layers", "input_interval", "measure_receptive_field",
           "receptive_field", "receptive_field_range", "receptive_field_steps", "unet_layers"]

Kind = Literal["conv", "transpose", "linear"]


@dataclass(frozen=True)
class Layer:
    """Geometry of one layer along one spatial axis.

    Attributes:
        name: label for tables, e.g. ``"down1.conv2"``.
        kind: ``"conv"`` (convolution or pooling), ``"transpose"`` (transposed convolution)
            or ``"linear"`` ((bi/tri)linear upsampling by ``stride``, ``align_corners=False``).
        kernel_size: kernel size (ignored for ``"linear"``).
        stride: stride; the upsampling factor for ``"transpose"`` and ``"linear"``.
        dilation: kernel dilation (``"conv"`` only).
        padding: zero padding on each side (``"conv"``: ``(k - 1) d / 2`` keeps the size).
    """

    name: str
    kind: Kind = "conv"
    kernel_size: int = 3
    stride: int = 1
    dilation: int = 1
    padding: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("conv", "transpose", "linear"):
            raise ValueError(f"layer {self.name!r}: kind must be 'conv', 'transpose' or "
                             f"'linear', got {self.kind!r}")
        if min(self.kernel_size, self.stride, self.dilation) < 1 or self.padding < 0:
            raise ValueError(f"layer {self.name!r}: kernel_size, stride and dilation must be "
                             f">= 1 and padding >= 0, got {self}")

    @property
    def scale(self) -> Fraction:
        """Input pixels per unit of this layer relative to the one before (its 'jump')."""
        return Fraction(self.stride) if self.kind == "conv" else Fraction(1, self.stride)

    def back(self, first: int, last: int) -> tuple[int, int]:
        """The input pixels ``[first', last']`` that output units ``[first, last]`` read."""
        k, s, d, p = self.kernel_size, self.stride, self.dilation, self.padding
        if self.kind == "conv":
            return first * s - p, last * s - p + (k - 1) * d
        if self.kind == "transpose":
            return -((-(first + p - k + 1)) // s), (last + p) // s  # ceil, floor
        lo = Fraction(2 * first + 1, 2 * s) - Fraction(1, 2)  # source coordinate of `first`
        hi = Fraction(2 * last + 1, 2 * s) - Fraction(1, 2)
        return math.floor(lo), math.ceil(hi)  # a neighbour only counts with non-zero weight


def conv(name: str, kernel_size: int = 3, dilation: int = 1) -> Layer:
    """A stride-1 convolution with "same" padding."""
    return Layer(name, "conv", kernel_size, 1, dilation, (kernel_size - 1) * dilation // 2)


def input_interval(layers: Sequence[Layer], position: int) -> tuple[int, int]:
    """Input pixels ``(first, last)`` (inclusive) that output pixel ``position`` depends on.

    Args:
        layers: the layers on the path from input to output, in order.
        position: index of the output pixel along the axis (negative allowed: the input is
            taken as unbounded).
    """
    first = last = int(position)
    for layer in reversed(layers):
        first, last = layer.back(first, last)
    return first, last


def _period(layers: Sequence[Layer]) -> int:
    """Output positions repeat their alignment with this period (lcm of the strides)."""
    period = 1
    for layer in layers:
        period = period * layer.stride // math.gcd(period, layer.stride)
    return period


def receptive_field_range(layers: Sequence[Layer]) -> tuple[int, int]:
    """Smallest and largest receptive field (pixels, one axis) over all output positions."""
    sizes = [last - first + 1 for first, last in
             (input_interval(layers, p) for p in range(2 * _period(layers)))]
    return min(sizes), max(sizes)


def receptive_field(layers: Sequence[Layer]) -> int:
    """Largest receptive field (pixels along one axis) of an output pixel of ``layers``."""
    return receptive_field_range(layers)[1]


def receptive_field_steps(layers: Sequence[Layer]) -> list[dict[str, object]]:
    """The receptive field after every layer: a table of how it grows.

    Returns:
        One dict per layer: ``{"layer", "rf_min", "rf_max", "jump"}``, the field of the units
        after that layer (pixels, smallest and largest over positions) and the jump (input
        pixels between neighbouring units: 8 at 1/8 resolution).
    """
    rows, jump = [], Fraction(1)
    for i, layer in enumerate(layers):
        jump *= layer.scale
        low, high = receptive_field_range(layers[: i + 1])
        rows.append({"layer": layer.name, "rf_min": low, "rf_max": high,
                     "jump": int(jump) if jump.denominator == 1 else float(jump)})
    return rows


def encoder_decoder_layers() -> list[Layer]:
    """The seed outline's model (`models.EncoderDecoder`): three 3x3 convs and a 1x1 conv."""
    return [conv("encoder.conv1"), conv("encoder.conv2"), conv("decoder.conv1"),
            conv("decoder.head", kernel_size=1)]


def unet_layers(depth: int = 4, convs_per_block: int = 2, upsample: str = "transpose"
                ) -> list[Layer]:
    """The deepest path through `models.UNet`: stem, ``down1..depth``, ``up<depth>..1``, head.

    The skip connections are shorter paths inside the same field; the field is set by the
    path through the bottleneck.

    Args:
        depth: number of 2x downsamplings (``UNet(depth=...)``).
        convs_per_block: 3x3 convolutions per `ConvBlock` (2 in the package and the paper).
        upsample: ``"transpose"`` (2x2 transposed conv, stride 2) or ``"upsample"``
            (bilinear interpolation, then a 1x1 conv), as ``UNet(upsample=...)``.

    Raises:
        ValueError: ``depth < 1`` or an unknown ``upsample``.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if upsample not in ("transpose", "upsample"):
        raise ValueError(f"upsample must be 'transpose' or 'upsample', got {upsample!r}")

    def block(prefix: str) -> list[Layer]:
        return [conv(f"{prefix}.conv{i + 1}") for i in range(convs_per_block)]

    layers = block("stem")
    for level in range(1, depth + 1):
        layers += [Layer(f"down{level}.pool", "conv", 2, 2, 1, 0), *block(f"down{level}")]
    for level in reversed(range(1, depth + 1)):  # up<k> undoes down<k>
        if upsample == "transpose":
            layers.append(Layer(f"up{level}.transpose", "transpose", 2, 2, 1, 0))
        else:
            layers += [Layer(f"up{level}.linear", "linear", 1, 2, 1, 0),
                       conv(f"up{level}.conv1x1", kernel_size=1)]
        layers += block(f"up{level}")
    return [*layers, conv("head", kernel_size=1)]


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_MAX_TO_AVG = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}


def _linearised(model: nn.Module) -> nn.Module:
    """A float64 copy in which every connection passes gradient.

    Norm layers (whose per-image statistics would make every output depend on the whole
    image) become identities, max pooling becomes average pooling over the same window, and
    conv weights become positive (so no ReLU is ever off): the gradient support is then
    exactly the set of connected input pixels.
    """
    clone = copy.deepcopy(model).eval().double()
    for module in list(clone.modules()):
        for name, child in module.named_children():
            if isinstance(child, _NORMS):
                setattr(module, name, nn.Identity())
            elif type(child) in _MAX_TO_AVG:
                if child.return_indices:
                    raise ValueError("measure_receptive_field cannot follow max-unpooling "
                                     "indices (SegNet); describe the layers and use "
                                     "receptive_field instead")
                avg = _MAX_TO_AVG[type(child)]
                setattr(module, name, avg(child.kernel_size, child.stride, child.padding))
    with torch.no_grad():
        for module in clone.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
    return clone


def measure_receptive_field(model: nn.Module, input_size: Sequence[int], in_channels: int = 1,
                            position: Sequence[int] | None = None) -> tuple[tuple[int, int], ...]:
    """Measure which input pixels one output pixel depends on, from its input gradient.

    On a copy of ``model`` (see the note): one forward pass of a ``(1, in_channels,
    *input_size)`` image of ones, the gradient of the output pixel at ``position`` (summed
    over channels) with respect to the input, and the extent of its non-zero support. The
    model itself is not changed.

    Note:
        The copy has positive conv weights, no normalisation and average instead of max
        pooling, computed in float64. This keeps every path alive (no ReLU or max pooling
        blocks the gradient) without changing which pixels are connected.

    Args:
        model: maps ``(B, in_channels, *S)`` to ``(B, C, *S)``, 2D or 3D.
        input_size: spatial size ``(H, W)`` or ``(D, H, W)``, larger than the field (and
            suited to the model, e.g. a multiple of ``2**depth`` for a U-Net).
        in_channels: input channels.
        position: the output pixel; default the centre ``(s // 2 for s in input_size)``.

    Returns:
        Per spatial axis, the first and last input index ``(first, last)`` of the field;
        its size is ``last - first + 1``.

    Raises:
        ValueError: the output is not the input's size, or the support reaches the border
            of the input (the field is at least as large as the input: enlarge
            ``input_size``; a global pooling branch, as in DeepLab's ASPP, makes it the
            whole image).
    """
    size = tuple(int(s) for s in input_size)
    position = tuple(s // 2 for s in size) if position is None else tuple(position)
    probe = _linearised(model)
    x = torch.ones(1, in_channels, *size, dtype=torch.float64, requires_grad=True)
    out = probe(x)
    if tuple(out.shape[2:]) != size:
        raise ValueError(f"model output spatial shape {tuple(out.shape[2:])} differs from the "
                         f"input's {size}; measure_receptive_field needs dense outputs")
    out[(slice(None), slice(None), *position)].sum().backward()
    support = x.grad[0].abs().sum(dim=0) > 0
    extents = []
    for axis in range(len(size)):
        others = tuple(a for a in range(len(size)) if a != axis)
        idx = torch.nonzero(support.any(dim=others) if others else support).flatten()
        if idx[0] == 0 or idx[-1] == size[axis] - 1:
            raise ValueError(f"the receptive field reaches the border of the {size} input along "
                             f"axis {axis}: it is at least {size[axis]} pixels; use a larger "
                             "input_size")
        extents.append((int(idx[0]), int(idx[-1])))
    return tuple(extents)
