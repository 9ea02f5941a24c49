"""Small from-scratch segmentation models that place the U-Net among its relatives.

All take ``(B, in_channels, H, W)`` (``spatial_dims=2``) or ``(B, in_channels, D, H, W)``
(``spatial_dims=3``, axes in array order Z, Y, X) and return logits of the same spatial size
``(B, out_channels, *S)``. They are deliberately small (tens to hundreds of thousands of
parameters) so that they train on a CPU in a notebook; they show the *idea* of each
architecture, not its published size.

- `EncoderDecoder`: the seed outline's "UNet": four convolutions at full resolution, no
  downsampling and no skip connections (74,691 parameters with 1 input and 3 outputs).
- `FCN`: fully convolutional network with FCN-8s score fusion (Long, Shelhamer and Darrell 2015).
- `SegNet`: encoder-decoder that upsamples with the encoder's max-pooling indices
  (Badrinarayanan, Kendall and Cipolla 2017).
- `DeepLabV3`: dilated backbone and atrous spatial pyramid pooling (Chen et al. 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg_helpers.networks.unet import Norm, conv_layer, max_pool_layer, norm_layer

__all__ = ["ASPP", "DeepLabV3", "EncoderDecoder", "FCN", "SegNet"]


def _conv_norm_relu(spatial_dims: int, in_channels: int, out_channels: int, norm: Norm,
                    kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        conv_layer(spatial_dims, in_channels, out_channels, kernel_size, dilation=dilation,
                   bias=norm == "none"),
        norm_layer(norm, spatial_dims, out_channels), nn.ReLU(inplace=True))


def _stage(spatial_dims: int, in_channels: int, out_channels: int, norm: Norm,
           convs: int = 2, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(*(
        _conv_norm_relu(spatial_dims, in_channels if i == 0 else out_channels, out_channels, norm,
                        dilation=dilation) for i in range(convs)))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


class EncoderDecoder(nn.Module):
    """The seed outline's model: conv-ReLU x2 "encoder", conv-ReLU + 1x1 conv "decoder".

    It is *not* a U-Net: nothing is downsampled, so its receptive field is only 7x7 and
    there are no skip connections to bridge. Kept exactly as in the outline (64 feature maps,
    biases, no normalisation) apart from configurable channels and ``spatial_dims``.
    Parameters: ``(9*in+1)*64 + 2*(9*64+1)*64 + (64+1)*out`` in 2D, i.e. 74,691 for 1 in, 3 out.

    Shapes: ``(B, in_channels, *S)`` → ``(B, out_channels, *S)``.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1,
                 width: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            conv_layer(spatial_dims, in_channels, width), nn.ReLU(inplace=True),
            conv_layer(spatial_dims, width, width), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            conv_layer(spatial_dims, width, width), nn.ReLU(inplace=True),
            conv_layer(spatial_dims, width, out_channels, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class FCN(nn.Module):
    """FCN-8s-style network (Long, Shelhamer and Darrell 2015, CVPR) on a small VGG backbone.

    Five stages of (conv-norm-ReLU x2, 2x max pool) reach 1/32 resolution; 1x1 convolutions
    turn the features at 1/8, 1/16 and 1/32 into class scores, which are upsampled and summed
    coarse-to-fine (the "skip" of FCN fuses *scores*, where U-Net concatenates *features*),
    then upsampled to the input size. Upsampling is fixed bilinear interpolation (the paper
    learns it from a bilinear initialisation). Pooling floors odd sizes and the scores are
    resized to each finer map, so any input of at least 32 voxels per axis works.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (score maps).
        base_channels: feature maps of the first stage; stages use x1, x2, x4, x8, x8.
        norm: normalisation after each convolution (the original VGG has none).

    Shapes: ``(B, in_channels, *S)`` → ``(B, out_channels, *S)``.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 base_channels: int = 16, norm: Norm = "batch") -> None:
        super().__init__()
        widths = [base_channels * m for m in (1, 2, 4, 8, 8)]
        self.stages = nn.ModuleList()
        c_in = in_channels
        for w in widths:
            self.stages.append(nn.Sequential(_stage(spatial_dims, c_in, w, norm),
                                             max_pool_layer(spatial_dims)))
            c_in = w
        self.score = nn.ModuleList(  # scores at 1/8, 1/16 and 1/32
            conv_layer(spatial_dims, w, out_channels, kernel_size=1) for w in widths[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        pool3, pool4, pool5 = features[2:]
        scores = self.score[2](pool5)
        scores = _resize(scores, pool4.shape[2:]) + self.score[1](pool4)
        scores = _resize(scores, pool3.shape[2:]) + self.score[0](pool3)
        return _resize(scores, size)


class SegNet(nn.Module):
    """SegNet (Badrinarayanan, Kendall and Cipolla 2017, IEEE TPAMI), small version.

    The encoder keeps the *indices* of every 2x max pooling; the decoder places each value
    back where the maximum came from (max-unpooling, sparse) and densifies it with
    convolutions. No feature maps are copied across, only indices, which is cheaper in memory
    than U-Net's concatenated skips. Odd sizes work: unpooling restores the pre-pool size.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes.
        base_channels: feature maps of the first stage, doubled per stage.
        depth: number of pooling stages.
        norm: normalisation after each convolution (batch norm in the paper).

    Shapes: ``(B, in_channels, *S)`` → ``(B, out_channels, *S)``, each axis ≥ ``2**depth``.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 base_channels: int = 16, depth: int = 4, norm: Norm = "batch") -> None:
        super().__init__()
        widths = [base_channels * 2**k for k in range(depth)]
        self.encoders = nn.ModuleList(
            _stage(spatial_dims, c_in, w, norm)
            for c_in, w in zip([in_channels, *widths[:-1]], widths, strict=True))
        # Mirror image: each decoder stage maps width k back to width k-1 (the last to width 0).
        self.decoders = nn.ModuleList(
            _stage(spatial_dims, widths[k], widths[max(k - 1, 0)], norm)
            for k in reversed(range(depth)))
        self.pool = max_pool_layer(spatial_dims, return_indices=True)
        self.unpool = (nn.MaxUnpool2d if spatial_dims == 2 else nn.MaxUnpool3d)(2, stride=2)
        self.head = conv_layer(spatial_dims, widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = []
        for encoder in self.encoders:
            x = encoder(x)
            size = x.shape
            x, indices = self.pool(x)
            saved.append((indices, size))
        for decoder, (indices, size) in zip(self.decoders, reversed(saved), strict=True):
            x = decoder(self.unpool(x, indices, output_size=size))
        return self.head(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al. 2017, "Rethinking Atrous Convolution").

    Parallel branches see the same features at several receptive-field sizes: a 1x1
    convolution, 3x3 convolutions with dilation ``rates``, and global average pooling (image
    context). They are concatenated and projected to ``out_channels``. The pooling branch has
    no normalisation, so batches of one work in training (its map is 1x1).

    Shapes: ``(B, in_channels, *S)`` → ``(B, out_channels, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 rates: Sequence[int] = (2, 4, 6), norm: Norm = "batch",
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_norm_relu(spatial_dims, in_channels, out_channels, norm, kernel_size=1)]
            + [_conv_norm_relu(spatial_dims, in_channels, out_channels, norm, dilation=r)
               for r in rates])
        pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        self.image_pool = nn.Sequential(pool(1), conv_layer(spatial_dims, in_channels,
                                                            out_channels, 1),
                                        nn.ReLU(inplace=True))
        self.project = nn.Sequential(
            _conv_norm_relu(spatial_dims, out_channels * (len(rates) + 2), out_channels, norm,
                            kernel_size=1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3(nn.Module):
    """DeepLabV3-style network (Chen et al. 2017, arXiv:1706.05587) on a small dilated backbone.

    Three stages of (conv-norm-ReLU x2, 2x max pool) reach output stride 8; a fourth stage
    uses dilation 2 instead of pooling, keeping resolution while growing the receptive field.
    `ASPP` then mixes several atrous rates, a 1x1 convolution gives class scores, and bilinear
    upsampling returns to the input size. The paper uses rates (6, 12, 18) at output stride 16
    on 513x513 crops; the default (2, 4, 6) at stride 8 suits this course's ~128-pixel images.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes.
        base_channels: feature maps of the first stage; stages use x1, x2, x4, x8.
        atrous_rates: dilation rates of the ASPP 3x3 branches.
        norm: normalisation after each convolution.

    Shapes: ``(B, in_channels, *S)`` → ``(B, out_channels, *S)``, each axis ≥ 8.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 base_channels: int = 16, atrous_rates: Sequence[int] = (2, 4, 6),
                 norm: Norm = "batch") -> None:
        super().__init__()
        w = [base_channels * m for m in (1, 2, 4, 8)]
        self.backbone = nn.Sequential(
            _stage(spatial_dims, in_channels, w[0], norm), max_pool_layer(spatial_dims),
            _stage(spatial_dims, w[0], w[1], norm), max_pool_layer(spatial_dims),
            _stage(spatial_dims, w[1], w[2], norm), max_pool_layer(spatial_dims),
            _stage(spatial_dims, w[2], w[3], norm, dilation=2))
        self.aspp = ASPP(spatial_dims, w[3], w[2], atrous_rates, norm)
        self.classifier = conv_layer(spatial_dims, w[2], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _resize(self.classifier(self.aspp(self.backbone(x))), x.shape[2:])
