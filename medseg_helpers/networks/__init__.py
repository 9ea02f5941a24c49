"""Segmentation models: a from-scratch U-Net, small teaching models and one registry.

``from medseg_helpers.networks import UNet, build_model``. MONAI and torchvision are imported
only when `build_model` is asked for one of their networks.
"""

from medseg_helpers.networks.teaching import ASPP, FCN, DeepLabV3, EncoderDecoder, SegNet
from medseg_helpers.networks.unet import ConvBlock, Down, UNet, Up
from medseg_helpers.networks.zoo import (
    ModelUnavailableError,
    build_model,
    count_flops,
    count_parameters,
    list_models,
    model_summary_table,
)

__all__ = [
    "ASPP",
    "ConvBlock",
    "DeepLabV3",
    "Down",
    "EncoderDecoder",
    "FCN",
    "ModelUnavailableError",
    "SegNet",
    "UNet",
    "Up",
    "build_model",
    "count_flops",
    "count_parameters",
    "list_models",
    "model_summary_table",
]
