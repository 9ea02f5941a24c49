"""One registry for every segmentation model of the course, and a table of their costs.

``build_model(name, spatial_dims, in_channels, out_channels, **kw)`` builds the from-scratch
models of this package and MONAI's reference networks with the same four arguments, so a
notebook can swap architectures by changing a string. Keyword arguments go to the model's
constructor and override the defaults listed in `list_models`. MONAI and torchvision are
imported only when one of their models is built.

All models map ``(B, in_channels, *S)`` to logits ``(B, out_channels, *S)``, with ``S`` =
``(H, W)`` or ``(D, H, W)``; except ``mask_rcnn`` (instance segmentation, 2D only), whose
forward takes a list of ``(C, H, W)`` images and returns boxes, labels, scores and masks.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medseg_helpers.networks.teaching import FCN, DeepLabV3, EncoderDecoder, SegNet
from medseg_helpers.networks.unet import UNet

__all__ = ["ModelUnavailableError", "build_model", "count_flops", "count_parameters",
           "list_models", "model_summary_table"]


class ModelUnavailableError(RuntimeError):
    """A model whose library cannot be imported here (e.g. Mask R-CNN without torchvision)."""


@dataclass(frozen=True)
class _Spec:
    builder: Callable[..., nn.Module]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    spatial_dims: tuple[int, ...] = (2, 3)
    requires: tuple[str, ...] = ()  # optional packages MONAI imports lazily (at forward time)


def _from_scratch(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    def build(spatial_dims: int, in_channels: int, out_channels: int, **kw: Any) -> nn.Module:
        return cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                   **kw)
    return build


def _monai(class_name: str) -> Callable[..., nn.Module]:
    def build(spatial_dims: int, in_channels: int, out_channels: int, **kw: Any) -> nn.Module:
        nets = importlib.import_module("monai.networks.nets")
        if class_name == "UNETR" and "img_size" not in kw:
            raise ValueError("'monai_unetr' needs img_size=(...) equal to the input's spatial "
                             "size (its position embedding is sized for it)")
        return getattr(nets, class_name)(spatial_dims=spatial_dims, in_channels=in_channels,
                                         out_channels=out_channels, **kw)
    return build


def _mask_rcnn(spatial_dims: int, in_channels: int, out_channels: int, **kw: Any) -> nn.Module:
    """torchvision's Mask R-CNN (He et al. 2017), untrained; ``out_channels`` counts background.

    For ``in_channels != 3`` the ResNet stem is replaced and the built-in per-channel
    normalisation set to identity, so images must already be normalised (e.g. z-score).
    """
    try:
        detection = importlib.import_module("torchvision.models.detection")
    except Exception as error:  # ImportError, or an ABI mismatch with the installed torch
        raise ModelUnavailableError(
            "mask_rcnn needs torchvision, which is not importable beside this torch "
            f"{torch.__version__} ({type(error).__name__}: {error}). Install the torchvision "
            "build that matches your torch from the same index, e.g. 'pip install torchvision "
            "--index-url https://download.pytorch.org/whl/cpu' (Colab has it already)."
        ) from error
    kw.setdefault("weights", None)
    kw.setdefault("weights_backbone", None)
    model = detection.maskrcnn_resnet50_fpn(num_classes=out_channels, **kw)
    if in_channels != 3:  # ResNet stem and the transform's per-channel normalisation
        model.backbone.body.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        model.transform.image_mean = [0.0] * in_channels
        model.transform.image_std = [1.0] * in_channels
    return model


_MONAI_UNET = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2)}
_REGISTRY: dict[str, _Spec] = {
    "unet": _Spec(_from_scratch(UNet), "U-Net from scratch (Ronneberger 2015), concat skips",
                  {"base_channels": 16, "depth": 4}),
    "encoder_decoder": _Spec(_from_scratch(EncoderDecoder),
                             "the seed outline's 'UNet': 4 convs, no pooling, no skips"),
    "fcn": _Spec(_from_scratch(FCN), "FCN-8s-style score fusion (Long 2015)"),
    "segnet": _Spec(_from_scratch(SegNet), "SegNet, max-unpooling indices (2017)"),
    "deeplabv3": _Spec(_from_scratch(DeepLabV3), "dilated backbone + ASPP (Chen 2017)"),
    "monai_unet": _Spec(_monai("UNet"), "MONAI UNet: strided convs, residual units",
                        {**_MONAI_UNET, "num_res_units": 2}),
    "monai_basic_unet": _Spec(_monai("BasicUNet"), "MONAI BasicUNet: the classic U-Net layout",
                              {"features": (16, 32, 64, 128, 256, 16)}),
    "monai_attention_unet": _Spec(_monai("AttentionUnet"), "attention gates (Oktay 2018)",
                                  dict(_MONAI_UNET)),
    "monai_segresnet": _Spec(_monai("SegResNet"), "residual encoder (Myronenko 2018)",
                             {"init_filters": 8}),
    "monai_unetr": _Spec(_monai("UNETR"), "ViT encoder, conv decoder (Hatamizadeh 2022)",
                         {"feature_size": 16}, requires=("einops",)),
    "monai_swin_unetr": _Spec(_monai("SwinUNETR"), "Swin transformer encoder (2022)",
                              {"feature_size": 24}, requires=("einops",)),
    "mask_rcnn": _Spec(_mask_rcnn, "instance segmentation via torchvision (He 2017)",
                       spatial_dims=(2,)),
}


def list_models(spatial_dims: int | None = None) -> list[str]:
    """Names accepted by `build_model`, optionally only those supporting ``spatial_dims``."""
    return [name for name, spec in _REGISTRY.items()
            if spatial_dims is None or spatial_dims in spec.spatial_dims]


def build_model(name: str, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                **kw: Any) -> nn.Module:
    """Build the model called ``name`` (see `list_models`).

    Args:
        name: registry name, e.g. ``"unet"``, ``"monai_unet"``, ``"deeplabv3"``.
        spatial_dims: 2 for ``(B, C, H, W)`` images, 3 for ``(B, C, D, H, W)`` volumes.
        in_channels: input channels.
        out_channels: output channels (classes incl. background for softmax outputs).
        **kw: constructor arguments overriding the registry defaults (e.g. ``depth=3``,
            ``img_size=(64, 64)`` for ``monai_unetr``).

    Returns:
        A freshly initialised ``nn.Module`` in training mode.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
        ValueError: if the model does not support ``spatial_dims``.
        ModelUnavailableError: if a library the model needs cannot be imported (``mask_rcnn``
            without torchvision, ``monai_unetr``/``monai_swin_unetr`` without einops).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}")
    spec = _REGISTRY[name]
    if spatial_dims not in spec.spatial_dims:
        raise ValueError(f"{name!r} supports spatial_dims {spec.spatial_dims}, got {spatial_dims}")
    missing = [module for module in spec.requires if importlib.util.find_spec(module) is None]
    if missing:
        raise ModelUnavailableError(
            f"{name} needs {', '.join(missing)}, which is not installed here; "
            f"'pip install {' '.join(missing)}' (MONAI imports it only when the model runs).")
    return spec.builder(spatial_dims, in_channels, out_channels, **{**spec.defaults, **kw})


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``x`` (eval mode, no gradients).

    ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of
    convolutions, transposed convolutions, matrix products and attention; normalisation,
    activations, pooling and interpolation count as zero, so MACs = FLOPs / 2 here.
    """
    return _forward_counting(model, x)[0]


def _forward_counting(model: nn.Module, x: torch.Tensor) -> tuple[int, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model(list(x) if _is_detection(model) else x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()), out


def _is_detection(model: nn.Module) -> bool:
    return type(model).__name__ == "MaskRCNN"


def model_summary_table(names: Sequence[str] | None = None, spatial_dims: int = 2,
                        in_channels: int = 1, out_channels: int = 2,
                        input_size: Sequence[int] | None = None, batch_size: int = 1,
                        model_kwargs: dict[str, dict[str, Any]] | None = None) -> Any:
    """Parameters and forward FLOPs/MACs of each model at one input size.

    Args:
        names: models to include; default every model of `list_models` (``spatial_dims``).
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        input_size: spatial size ``(H, W)`` or ``(D, H, W)``; default 128² in 2D, 64³ in 3D.
            Must suit every model (multiples of 32 suit all of them).
        batch_size: batch of the example input (FLOPs scale linearly with it).
        model_kwargs: per-model constructor overrides, e.g. ``{"unet": {"depth": 3}}``.

    Returns:
        ``pandas.DataFrame`` indexed by model name with columns ``params``, ``gflops``,
        ``gmacs`` (one forward pass, eval mode, see `count_flops`), ``output_shape``,
        ``description`` and ``note``. A model that cannot be built here
        (``ModelUnavailableError``) gets missing values and the reason in ``note``.
    """
    import pandas as pd

    size = tuple(input_size or ((128, 128) if spatial_dims == 2 else (64, 64, 64)))
    if len(size) != spatial_dims:
        raise ValueError(f"input_size {size} does not have {spatial_dims} axes")
    x = torch.randn(batch_size, in_channels, *size)
    rows = []
    for name in names or list_models(spatial_dims):
        kw = dict((model_kwargs or {}).get(name, {}))
        if name == "monai_unetr":
            kw.setdefault("img_size", size)
        row: dict[str, Any] = {"model": name, "params": None, "gflops": float("nan"),
                               "gmacs": float("nan"), "output_shape": None,
                               "description": _REGISTRY[name].description if name in _REGISTRY
                               else "", "note": ""}
        try:
            model = build_model(name, spatial_dims, in_channels, out_channels, **kw)
        except ModelUnavailableError as error:
            row["note"] = str(error)
            rows.append(row)
            continue
        flops, out = _forward_counting(model, x)
        row.update(params=count_parameters(model), gflops=flops / 1e9, gmacs=flops / 2e9,
                   output_shape=None if _is_detection(model) else tuple(out.shape))
        rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    table["params"] = table["params"].astype("Int64")  # integers, <NA> where unavailable
    return table
