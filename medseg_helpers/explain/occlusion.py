"""Occlusion sensitivity of a segmentation target (Zeiler and Fergus 2014).

Hides one patch of the image at a time and measures how much the target (the mean
probability of a class over a region, `medseg_helpers.explain.targets.region_score`) drops.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from medseg_helpers.explain.targets import (
    RegionScore,
    check_image_batch,
    eval_mode,
    target_region,
)


def occlusion_sensitivity(model: nn.Module, image: torch.Tensor, target_class: int,
                          region: torch.Tensor | None = None, mask_size: int = 8,
                          overlap: float = 0.5, mode: str | float = "gaussian",
                          roi: tuple[slice, ...] | None = None, n_batch: int = 16,
                          ) -> torch.Tensor:
    """How much hiding each part of the image lowers the target score (Zeiler and Fergus 2014).

    A patch of ``mask_size`` voxels slides over the image (MONAI's
    ``monai.visualize.OcclusionSensitivity``); for every position the model sees the image with
    that patch occluded, and the target is the mean ``target_class`` probability over
    ``region``. Returned is ``score(original) - score(occluded)``, averaged over the patches
    covering each voxel: positive where the voxel's content supported the prediction.

    Args:
        model: 2D or 3D segmentation network (eval mode is used).
        image: ``(1, C, *S)``; MONAI handles one image at a time.
        target_class: class index to explain.
        region: ``(1, *S)`` or ``(*S)`` bool mask; None: voxels predicted as ``target_class``.
        mask_size: occluding patch edge in voxels; the map's detail depends on it.
        overlap: patch overlap in [0, 1).
        mode: what replaces the patch: ``"gaussian"`` (multiplied by 1 - a Gaussian, so 0 at
            the centre), ``"mean_patch"``, ``"mean_img"`` or a constant value.
        roi: one ``slice(start, stop)`` per spatial axis: occlude only there (the model still
            sees the whole image); the cost grows with the ROI's size over the patch's.
        n_batch: occluded images per forward pass.

    Returns:
        ``(*S)`` float32 map of score drops (can be negative); NaN outside ``roi``.
    """
    from monai.visualize import OcclusionSensitivity

    check_image_batch(model, image)
    if image.shape[0] != 1:
        raise ValueError(f"occlusion works on one image (1, C, *S), got batch {image.shape[0]}")
    spatial = image.shape[2:]
    roi = tuple(slice(None) for _ in spatial) if roi is None else tuple(roi)
    if len(roi) != len(spatial):
        raise ValueError(f"roi needs one slice per spatial axis {tuple(spatial)}, got {roi}")
    bounds = [r.indices(n)[:2] for r, n in zip(roi, spatial, strict=True)]
    if any(stop - start < 1 for start, stop in bounds):
        raise ValueError(f"roi {roi} is empty for spatial shape {tuple(spatial)}")
    b_box = [v for start, stop in bounds for v in (start, stop)]  # MONAI: min, max per axis
    with eval_mode(model), torch.no_grad():
        logits = model(image)
        mask = target_region(logits, target_class, None if region is None else
                            torch.as_tensor(region).reshape(1, *image.shape[2:]))
        scorer = RegionScore(model, target_class, mask[0, 0]).to(image.device)
        baseline = scorer(image)[0, 0]
        occluder = OcclusionSensitivity(scorer, mask_size=mask_size, n_batch=n_batch,
                                        verbose=False, mode=mode, overlap=overlap, activate=False)
        with warnings.catch_warnings():  # MONAI 1.6 indexes with lists; torch warns, same result
            warnings.filterwarnings("ignore", "Using a non-tuple sequence", UserWarning)
            occluded, _ = occluder(image, b_box=b_box)
    drop = torch.full(tuple(spatial), float("nan"), device=image.device)
    inside = tuple(slice(start, stop) for start, stop in bounds)
    drop[inside] = baseline - occluded.as_tensor()[0, 0]
    return drop
