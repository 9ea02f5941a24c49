"""LIME over superpixels for a segmentation target (Ribeiro, Singh and Guestrin 2016).

The image is cut into SLIC superpixels; a weighted linear surrogate of the target (the mean
probability of a class over a region, `medseg_helpers.explain.targets.region_score`) on
which superpixels are present gives one weight per superpixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medseg_helpers.explain.targets import (
    check_image_batch,
    eval_mode,
    region_score,
    target_region,
)


@dataclass
class LimeResult:
    """A LIME explanation over superpixels.

    Attributes:
        segments: ``(*S)`` int superpixel index per voxel, ``0 .. n-1``.
        weights: ``(n,)`` ridge coefficient per superpixel: the change of the target score
            when that superpixel is present rather than replaced.
        map: ``(*S)`` float32 ``weights[segments]``.
        intercept: score predicted with every superpixel removed.
        r2: weighted R² of the linear surrogate on its samples (how faithful it is).
        base_score: target score of the unperturbed image.
    """

    segments: np.ndarray
    weights: np.ndarray
    map: np.ndarray
    intercept: float
    r2: float
    base_score: float


def lime_superpixels(model: nn.Module, image: torch.Tensor, target_class: int,
                     region: torch.Tensor | None = None, n_segments: int = 50,
                     compactness: float = 0.1, n_samples: int = 200, keep_prob: float = 0.5,
                     fill: float | None = None, kernel_width: float = 0.25, alpha: float = 1.0,
                     batch_size: int = 16, seed: int = 0) -> LimeResult:
    """LIME with SLIC superpixels (Ribeiro, Singh and Guestrin 2016; Achanta et al. 2012).

    The image is cut into superpixels; ``n_samples`` random subsets of them are kept (each
    with probability ``keep_prob``; the first sample keeps all), the rest replaced by
    ``fill``; a ridge regression of the target score (mean ``target_class`` probability over
    ``region``) on the 0/1 presence vector, weighted by the LIME kernel
    ``exp(-d**2 / kernel_width**2)`` of the cosine distance ``d`` to the full image, gives one
    weight per superpixel.

    Args:
        model: 2D or 3D segmentation network (eval mode is used).
        image: ``(1, C, *S)``.
        target_class: class index to explain.
        region: ``(1, *S)`` or ``(*S)`` bool mask; None: voxels predicted as ``target_class``.
        n_segments: approximate number of SLIC superpixels.
        compactness: SLIC compactness on the image rescaled to [0, 1] (higher: squarer).
        n_samples: perturbed images (forward passes).
        keep_prob: probability that a superpixel is kept in a sample.
        fill: value of removed superpixels; None: the image's mean per channel.
        kernel_width: LIME kernel width on the cosine distance.
        alpha: ridge regularisation.
        batch_size: perturbed images per forward pass.
        seed: seeds the random subsets (SLIC is deterministic).

    Returns:
        a `LimeResult`. The weights change with ``seed`` (LIME's instability): compare seeds.
    """
    from skimage.segmentation import slic
    from sklearn.linear_model import Ridge

    check_image_batch(model, image)
    if image.shape[0] != 1:
        raise ValueError(f"LIME works on one image (1, C, *S), got batch {image.shape[0]}")
    if n_samples < 2 or not 0 < keep_prob < 1:
        raise ValueError(f"need n_samples >= 2 and 0 < keep_prob < 1, got {n_samples}, "
                         f"{keep_prob}")
    array = image[0].detach().cpu().numpy().astype(np.float64)  # (C, *S)
    low, high = np.percentile(array, [1, 99])
    scaled = np.clip((array - low) / max(high - low, 1e-12), 0, 1)
    segments = slic(scaled if array.shape[0] > 1 else scaled[0], n_segments=n_segments,
                    compactness=compactness, start_label=0,
                    channel_axis=0 if array.shape[0] > 1 else None)
    n = int(segments.max()) + 1
    rng = np.random.default_rng(seed)
    presence = (rng.random((n_samples, n)) < keep_prob).astype(np.float64)
    presence[0] = 1.0
    spatial = tuple(range(2, image.ndim))
    fill_value = image.mean(dim=spatial, keepdim=True) if fill is None \
        else torch.full_like(image.mean(dim=spatial, keepdim=True), fill)
    seg = torch.from_numpy(segments).to(image.device)
    scores = []
    with eval_mode(model), torch.no_grad():
        logits = model(image)
        mask = target_region(logits, target_class, None if region is None else
                            torch.as_tensor(region).reshape(1, *image.shape[2:]))
        for start in range(0, n_samples, batch_size):
            keep = torch.from_numpy(presence[start : start + batch_size]).to(image)
            kept = keep[:, seg][:, None]  # (b, 1, *S)
            batch = image * kept + fill_value * (1 - kept)
            probs = torch.softmax(model(batch), dim=1)
            scores.append(region_score(probs, target_class, mask).cpu().numpy())
    y = np.concatenate(scores)
    cosine = 1 - presence.sum(1) / (np.sqrt(n) * np.sqrt(presence.sum(1)).clip(1e-12))
    sample_weight = np.exp(-(cosine**2) / kernel_width**2)
    surrogate = Ridge(alpha=alpha).fit(presence, y, sample_weight=sample_weight)
    return LimeResult(segments=segments, weights=surrogate.coef_,
                      map=surrogate.coef_[segments].astype(np.float32),
                      intercept=float(surrogate.intercept_),
                      r2=float(surrogate.score(presence, y, sample_weight=sample_weight)),
                      base_score=float(y[0]))
