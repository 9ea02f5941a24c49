"""Grad-CAM for segmentation networks (Selvaraju et al. 2017; Vinogradova et al. 2020).

The target is the sum of one class's logits over a region (see
`medseg_helpers.explain.targets`); the map weights a layer's feature maps by their spatially
averaged gradients. Which layer matters: `default_target_layer` picks the course U-Net's
bottleneck, `resolve_layer` any module by name.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from medseg_helpers.explain.targets import check_image_batch, eval_mode, target_region

logger = logging.getLogger(__name__)


def default_target_layer(model: nn.Module) -> str:
    """The layer Grad-CAM uses by default: the bottleneck of the course `UNet`.

    The bottleneck (``downs.<depth-1>``, at ``1/2**depth`` resolution) has the most semantic
    features and the coarsest maps; ``ups.<depth-1>.block`` (the last decoder block, full
    resolution) gives sharp maps that mostly repeat the prediction.

    Raises:
        ValueError: for models other than `medseg_helpers.networks.UNet`; pass ``layer=``.
    """
    from medseg_helpers.networks.unet import UNet

    if isinstance(model, UNet):
        return f"downs.{model.depth - 1}"
    raise ValueError(f"no default Grad-CAM layer for {type(model).__name__}: pass layer= "
                     "with a module name from model.named_modules()")


def resolve_layer(model: nn.Module, layer: str | nn.Module | None = None) -> nn.Module:
    """The module ``layer`` names (dotted path as in ``named_modules``), or the default.

    Raises:
        ValueError: no module of that name (the message lists a few valid names).
    """
    if isinstance(layer, nn.Module):
        return layer
    name = default_target_layer(model) if layer is None else layer
    modules = dict(model.named_modules())
    if name not in modules:
        names = [n for n in modules if n and n.count(".") <= 1]
        raise ValueError(f"model has no layer {name!r}; e.g. {', '.join(names[:12])}")
    return modules[name]


def grad_cam(model: nn.Module, image: torch.Tensor, target_class: int,
             region: torch.Tensor | None = None, layer: str | nn.Module | None = None,
             ) -> torch.Tensor:
    """Grad-CAM of a segmentation target (Selvaraju et al. 2017; Vinogradova et al. 2020).

    With ``A_k`` the feature maps of ``layer`` and ``y`` the target (the sum of the
    ``target_class`` logits over ``region``), the map is ``ReLU(sum_k alpha_k A_k)`` with
    ``alpha_k`` the spatial mean of ``dy/dA_k``; it is upsampled (bi/trilinear) to the input
    size and divided by its maximum, per image.

    Args:
        model: 2D or 3D segmentation network; run in eval mode (its modes are restored).
        image: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` float input.
        target_class: class index to explain.
        region: ``(B, *S)`` bool mask of the voxels whose logits are summed; None: the voxels
            the model predicts as ``target_class``.
        layer: module or module name (``"downs.3"``, ``"ups.3.block"``); None:
            `default_target_layer`.

    Returns:
        ``(B, *S)`` float32 maps in [0, 1] on ``image``'s device; all zeros for an image whose
        region is empty or whose gradients are all negative (logged).
    """
    check_image_batch(model, image)
    module = resolve_layer(model, layer)
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        store["activation"] = output

    handle = module.register_forward_hook(keep)
    try:
        with eval_mode(model), torch.enable_grad():
            x = image.detach().clone().requires_grad_(True)  # a graph even if weights frozen
            logits = model(x)
            mask = target_region(logits.detach(), target_class, region)
            score = (logits[:, target_class : target_class + 1] * mask).sum()
            activation = store["activation"]
            (grads,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
    spatial = tuple(range(2, activation.ndim))
    weights = grads.mean(dim=spatial, keepdim=True)
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    mode = "bilinear" if cam.ndim == 4 else "trilinear"
    cam = F.interpolate(cam, size=image.shape[2:], mode=mode, align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).view(-1, *[1] * (cam.ndim - 1))
    if not bool((peak > 0).all()):
        logger.info("Grad-CAM is zero for %d image(s): empty region or no positive evidence",
                    int((peak <= 0).sum()))
    return (cam / peak.clamp_min(1e-12)).float()
