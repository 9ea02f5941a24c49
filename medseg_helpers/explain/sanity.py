"""Sanity checks for attribution maps (Adebayo et al. 2018, "Sanity checks for saliency
maps", NeurIPS).

Some saliency maps barely change when the model's weights are randomised, so they explain the
image, not the model. Compare a method's map for the trained model with its map for
`reinitialised_copy` using `rank_correlation`: a faithful method gives a low correlation.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def reinitialised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every layer's parameters re-initialised (``seed``).

    The model-randomisation sanity check of Adebayo et al. (2018): an explanation method that
    depends on the model must give different maps for this copy. Normalisation statistics
    (running mean/var) are reset too.
    """
    clone = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in clone.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    finally:
        torch.random.set_rng_state(generator_state)
    return clone


def rank_correlation(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Spearman rank correlation of two maps of the same shape (1: same ranking).

    Adebayo et al. (2018) compare maps this way. Raises ``ValueError`` on shape mismatch.
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a.ravel(), b.ravel())[0])
