"""A U-Net written from scratch, for 2D and 3D images.

Ronneberger, Fischer and Brox (2015), "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI; Çiçek et al. (2016), "3D U-Net: Learning Dense Volumetric Segmentation
from Sparse Annotation", MICCAI.

Layout: tensors are ``(B, C, H, W)`` in 2D and ``(B, C, D, H, W)`` in 3D, the spatial axes in
array order (Z, Y, X), as everywhere in this course. Each encoder level halves every spatial
size, so a network of ``depth`` levels needs sizes that are multiples of ``2**depth``; other
sizes are padded and the output cropped back (or rejected, with ``pad_input=False``).

The small layer factories (`conv_layer`, `norm_layer`, ...) are shared with the teaching
models in :mod:`medseg_helpers.networks.teaching`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "instance", "group", "none"]
UpMode = Literal["transpose", "upsample"]
PadMode = Literal["reflect", "zeros"]

__all__ = ["ConvBlock", "Down", "Up", "UNet", "conv_layer", "norm_layer", "pad_to_multiple"]


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def conv_layer(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
               stride: int = 1, dilation: int = 1, bias: bool = True) -> nn.Module:
    """A ``Conv2d``/``Conv3d`` with "same" padding for odd kernels (size kept at stride 1)."""
    _check_dims(spatial_dims)
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return conv(in_channels, out_channels, kernel_size, stride=stride,
                padding=dilation * (kernel_size - 1) // 2, dilation=dilation, bias=bias)


def norm_layer(norm: Norm, spatial_dims: int, channels: int, num_groups: int = 8) -> nn.Module:
    """Normalisation over ``channels`` feature maps; ``"none"`` gives ``nn.Identity``.

    Batch norm: Ioffe and Szegedy (2015); instance norm: Ulyanov et al. (2016), with learnable
    affine parameters as in nnU-Net; group norm: Wu and He (2018).

    Raises:
        ValueError: for an unknown ``norm`` or when ``num_groups`` does not divide ``channels``.
    """
    _check_dims(spatial_dims)
    if norm == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "instance":
        instance = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        return instance(channels, affine=True)
    if norm == "group":
        if channels % num_groups:
            raise ValueError(f"group norm: num_groups={num_groups} does not divide {channels} "
                             "channels; choose base_channels as a multiple of num_groups")
        return nn.GroupNorm(num_groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance', 'group' or 'none', got {norm!r}")


def max_pool_layer(spatial_dims: int, return_indices: bool = False) -> nn.Module:
    """A 2x max pooling (stride 2) in 2D or 3D."""
    _check_dims(spatial_dims)
    pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
    return pool(2, stride=2, return_indices=return_indices)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: PadMode = "reflect"
                    ) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad every spatial axis of ``x`` up to a multiple of ``multiple``, split evenly.

    Args:
        x: ``(B, C, *spatial)`` tensor.
        multiple: the required multiple (``2**depth`` for a U-Net).
        mode: ``"reflect"`` (mirror the border, no artificial edge) or ``"zeros"``.

    Returns:
        The padded tensor and the index that crops a same-sized output back to ``x``'s size:
        ``y[crop]`` has the spatial shape of ``x``.

    Raises:
        ValueError: if ``mode="reflect"`` needs more padding than an axis is long.
    """
    spatial = x.shape[2:]
    before, after = [], []
    for size in spatial:
        total = -size % multiple
        before.append(total // 2)
        after.append(total - total // 2)
    crop = (slice(None), slice(None)) + tuple(
        slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    if not any(before) and not any(after):
        return x, crop
    if mode == "reflect" and any(max(b, a) >= s for b, a, s in zip(before, after, spatial,
                                                                    strict=True)):
        raise ValueError(f"reflect padding of spatial size {tuple(spatial)} to a multiple of "
                         f"{multiple} needs more padding than the input is long; "
                         "use pad_mode='zeros' or a larger input")
    pad: list[int] = []
    for b, a in zip(reversed(before), reversed(after), strict=True):  # F.pad wants last axis first
        pad += [b, a]
    return F.pad(x, pad, mode="reflect" if mode == "reflect" else "constant"), crop


class ConvBlock(nn.Sequential):
    """Two (conv 3x3 → norm → ReLU) layers, then optional dropout; spatial size kept.

    Input ``(B, in_channels, *S)``, output ``(B, out_channels, *S)``. Convolutions have no bias
    when a normalisation follows (the norm's shift makes it redundant).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 norm: Norm = "batch", dropout: float = 0.0, num_groups: int = 8) -> None:
        bias = norm == "none"
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [conv_layer(spatial_dims, c_in, out_channels, 3, bias=bias),
                       norm_layer(norm, spatial_dims, out_channels, num_groups),
                       nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class Down(nn.Sequential):
    """Encoder step: 2x max pooling, then a `ConvBlock`. ``(B, C_in, *S) → (B, C_out, *S/2)``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 norm: Norm = "batch", dropout: float = 0.0, num_groups: int = 8) -> None:
        super().__init__(max_pool_layer(spatial_dims),
                         ConvBlock(spatial_dims, in_channels, out_channels, norm, dropout,
                                   num_groups))


class Up(nn.Module):
    """Decoder step: upsample 2x halving the channels, concatenate the skip, then a `ConvBlock`.

    ``mode="transpose"`` uses a learned 2x2(x2) transposed convolution (Ronneberger et al.);
    ``"upsample"`` uses (bi/tri)linear interpolation then a 1x1 convolution, which avoids the
    checkerboard artefacts of transposed convolutions (Odena et al. 2016, Distill).

    Forward: ``x (B, C_in, *S/2)`` and ``skip (B, C_in/2, *S)`` → ``(B, C_out, *S)``. With
    ``skip_connection=False`` the skip is ignored and the block sees only the upsampled ``x``
    (the "encoder-decoder" ablation).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 norm: Norm = "batch", dropout: float = 0.0, mode: UpMode = "transpose",
                 skip_connection: bool = True, num_groups: int = 8) -> None:
        super().__init__()
        half = in_channels // 2
        if mode == "transpose":
            conv_t = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
            self.up: nn.Module = conv_t(in_channels, half, kernel_size=2, stride=2)
        elif mode == "upsample":
            linear = "bilinear" if spatial_dims == 2 else "trilinear"
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode=linear, align_corners=False),
                                    conv_layer(spatial_dims, in_channels, half, kernel_size=1))
        else:
            raise ValueError(f"upsample mode must be 'transpose' or 'upsample', got {mode!r}")
        self.skip_connection = skip_connection
        block_in = half + (half if skip_connection else 0)
        self.block = ConvBlock(spatial_dims, block_in, out_channels, norm, dropout, num_groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.skip_connection:
            x = torch.cat([skip, x], dim=1)
        return self.block(x)


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015; 3D: Çiçek et al. 2016) written from scratch.

    Level ``k`` (0 = full resolution) has ``base_channels * 2**k`` feature maps, ``k = 0 ..
    depth``; the encoder halves the spatial size ``depth`` times, the decoder doubles it back
    and concatenates the encoder's feature maps of the same level (the skip connections).

    Args:
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``.
        in_channels: input channels (modalities), ``C`` of the input.
        out_channels: output channels (classes, background included, for softmax).
        base_channels: feature maps at full resolution, doubled at every level.
        depth: number of 2x downsamplings (the bottleneck is at ``1/2**depth`` resolution).
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        dropout: dropout probability after every `ConvBlock` (0 disables it).
        upsample: decoder upsampling, ``"transpose"`` or ``"upsample"`` (see `Up`).
        pad_input: pad inputs whose spatial size is not a multiple of ``2**depth`` and crop
            the output back; if False such inputs raise ``ValueError``.
        pad_mode: ``"reflect"`` or ``"zeros"``, used when padding.
        skip_connections: False turns the network into a plain encoder-decoder of (almost)
            the same size, for the ablation that shows what the skips buy.
        num_groups: groups for ``norm="group"``.

    Shapes: ``(B, in_channels, *S)`` float → logits ``(B, out_channels, *S)``, any ``S``.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 base_channels: int = 16, depth: int = 4, norm: Norm = "batch",
                 dropout: float = 0.0, upsample: UpMode = "transpose", pad_input: bool = True,
                 pad_mode: PadMode = "reflect", skip_connections: bool = True,
                 num_groups: int = 8) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if pad_mode not in ("reflect", "zeros"):
            raise ValueError(f"pad_mode must be 'reflect' or 'zeros', got {pad_mode!r}")
        self.spatial_dims, self.depth = spatial_dims, depth
        self.pad_input, self.pad_mode = pad_input, pad_mode
        widths = [base_channels * 2**k for k in range(depth + 1)]
        kw = {"norm": norm, "dropout": dropout, "num_groups": num_groups}
        self.stem = ConvBlock(spatial_dims, in_channels, widths[0], **kw)
        self.downs = nn.ModuleList(
            Down(spatial_dims, widths[k], widths[k + 1], **kw) for k in range(depth))
        self.ups = nn.ModuleList(
            Up(spatial_dims, widths[k + 1], widths[k], mode=upsample,
               skip_connection=skip_connections, **kw) for k in reversed(range(depth)))
        self.head = conv_layer(spatial_dims, widths[0], out_channels, kernel_size=1)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes that pass without padding are multiples of this (``2**depth``)."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *S)`` for an input ``(B, in_channels, *S)``."""
        x, crop = self._pad(x)
        skips = []
        x = self.stem(x)
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            x = up(x, skip)
        return self.head(x)[crop]

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
        if x.ndim != self.spatial_dims + 2:
            layout = "(B, C, H, W)" if self.spatial_dims == 2 else "(B, C, D, H, W)"
            raise ValueError(f"expected a {self.spatial_dims}D batch {layout}, "
                             f"got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if not self.pad_input and any(s % self.size_multiple for s in spatial):
            raise ValueError(f"spatial size {spatial} is not a multiple of "
                             f"{self.size_multiple} (2**depth, depth={self.depth}); "
                             "pad the input or build the UNet with pad_input=True")
        return pad_to_multiple(x, self.size_multiple, self.pad_mode)
