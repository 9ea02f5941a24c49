"""What an attribution method explains in a segmentation network: one number per image.

A classifier explains one number (a class score). A segmentation network outputs a score per
voxel, so each method first turns the output into one number, the **target**: for a class
``c`` and a region ``R`` (`target_region`; default: the voxels predicted as ``c``),

* Grad-CAM (`medseg_helpers.explain.gradcam`) uses the sum of the class-``c`` logits over
  ``R`` (Vinogradova, Dibrov and Myers 2020, "Towards interpretable semantic segmentation via
  gradient-weighted class activation mapping", AAAI);
* occlusion (`medseg_helpers.explain.occlusion`) and LIME (`medseg_helpers.explain.lime`) use
  the mean class-``c`` probability over ``R`` (`region_score`), which stays in [0, 1]
  whatever the size of ``R``.

Layout: images ``(B, C, H, W)`` (2D) or ``(B, C, D, H, W)`` (3D), spatial axes in array order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every module's mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


def check_image_batch(model: nn.Module, image: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``image`` is ``(B, C, H, W)`` or ``(B, C, D, H, W)`` and,
    when ``model`` has ``spatial_dims``, of that rank."""
    dims = getattr(model, "spatial_dims", None)
    if image.ndim not in (4, 5) or (dims is not None and image.ndim != dims + 2):
        want = "(B, C, H, W) or (B, C, D, H, W)" if dims is None else \
            ("(B, C, H, W)" if dims == 2 else "(B, C, D, H, W)")
        raise ValueError(f"expected an image batch {want}, got shape {tuple(image.shape)}")


def target_region(logits: torch.Tensor, target_class: int,
                 region: torch.Tensor | None) -> torch.Tensor:
    """Float mask ``(B, 1, *S)``: ``region`` or the voxels predicted as ``target_class``."""
    if not 0 <= target_class < logits.shape[1]:
        raise ValueError(f"target_class {target_class} out of range for "
                         f"{logits.shape[1]} output classes")
    if region is None:
        mask = logits.argmax(1, keepdim=True) == target_class
    else:
        mask = torch.as_tensor(region, device=logits.device).bool()
        if mask.ndim == logits.ndim - 1:
            mask = mask[:, None]
        if mask.shape[2:] != logits.shape[2:] or mask.shape[0] != logits.shape[0]:
            raise ValueError(f"region of shape {tuple(region.shape)} does not match the "
                             f"logits {tuple(logits.shape)}; expected (B, *S)")
    return mask.to(logits.dtype)


def region_score(probs: torch.Tensor, target_class: int, region: torch.Tensor) -> torch.Tensor:
    """Mean probability of ``target_class`` over ``region``, per image.

    Args:
        probs: ``(B, K, *S)`` softmax probabilities.
        target_class: class index in ``[0, K)``.
        region: ``(B, 1, *S)`` or ``(1, 1, *S)`` 0/1 mask; an empty region scores 0.

    Returns:
        ``(B,)`` scores in [0, 1].
    """
    mask = region.to(probs.dtype)
    dims = tuple(range(1, probs.ndim))
    total = (probs[:, target_class : target_class + 1] * mask).sum(dims)
    return total / mask.sum(dims).clamp_min(1.0)


class RegionScore(nn.Module):
    """Wrap a segmentation network as a one-output "classifier" for attribution methods.

    ``forward(x (B, C, *S)) -> (B, 1)``: the mean softmax probability of ``target_class`` over
    the fixed ``region (*S)`` (0/1). This is what MONAI's ``OcclusionSensitivity`` (written for
    classifiers) needs to explain a segmentation.
    """

    def __init__(self, model: nn.Module, target_class: int, region: torch.Tensor) -> None:
        super().__init__()
        self.model, self.target_class = model, target_class
        self.register_buffer("region", region.float()[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.model(x), dim=1)
        return region_score(probs, self.target_class, self.region)[:, None]
