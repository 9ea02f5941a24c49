"""Voxel-wise uncertainty: Monte-Carlo dropout, test-time augmentation and their summaries.

Both methods draw ``T`` softmax predictions of the same image, ``(T, B, K, *S)``:

* **MC dropout** (Gal and Ghahramani 2016, "Dropout as a Bayesian approximation", ICML)
  keeps the dropout layers sampling at test time; every pass is a different thinned network.
  It needs a model *trained* with dropout (the course `UNet` has ``dropout=``).
* **Test-time augmentation** (Wang et al. 2019, "Aleatoric uncertainty estimation with
  test-time augmentation for medical image segmentation", Neurocomputing) feeds flipped copies
  of the image and flips each prediction back; any model works.

`summarise_samples` turns the samples into the mean probability, the **predictive entropy**
``H[mean_t p_t]`` (total uncertainty, at most ``log K``), the **expected entropy**
``mean_t H[p_t]`` (aleatoric part) and their difference, the **mutual information** between
prediction and model (the epistemic part, BALD: Houlsby et al. 2011). Natural logarithms.

`error_detection_auc` measures how well an uncertainty map points at the model's errors.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["UncertaintyMaps", "error_detection_auc", "flip_combinations", "mc_dropout",
           "mc_dropout_samples", "predictive_entropy", "summarise_samples", "tta_samples",
           "uncertainty_error_dice"]

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for everything except the dropout layers, which keep sampling.

    Batch/instance norm stay in eval mode (running statistics are used and not updated).
    Every module's mode is restored on exit.

    Raises:
        ValueError: the model has no dropout layer with ``p > 0`` (train it with dropout,
            e.g. ``UNet(..., dropout=0.1)``; switching dropout on in a model trained
            without it only adds noise).
    """
    dropouts = [m for m in model.modules() if isinstance(m, _DROPOUT) and m.p > 0]
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no dropout layer with p > 0: MC dropout "
                         "needs a model trained with dropout (e.g. model_kwargs={'dropout': 0.1})")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for module in dropouts:
        module.train()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


def _forward_probs(model: nn.Module, image: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([torch.softmax(model(chunk), dim=1)
                      for chunk in image.split(batch_size)])


@torch.no_grad()
def mc_dropout_samples(model: nn.Module, image: torch.Tensor, num_samples: int = 10,
                       batch_size: int = 32, seed: int | None = 0) -> torch.Tensor:
    """``num_samples`` softmax predictions with dropout active (see `mc_dropout`).

    Args:
        model: 2D or 3D network with dropout layers.
        image: ``(B, C, *S)``; for a 2D model and a volume, pass its slices as the batch.
        num_samples: forward passes ``T``.
        batch_size: images per forward pass.
        seed: seeds the dropout masks (restores the global RNG afterwards); the masks also
            depend on ``batch_size``. None: unseeded.

    Returns:
        ``(T, B, K, *S)`` float32 probabilities on the CPU.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        with mc_dropout(model):
            samples = [_forward_probs(model, image, batch_size).float().cpu()
                       for _ in range(num_samples)]
    finally:
        if seed is not None:
            torch.random.set_rng_state(state)
    return torch.stack(samples)


def flip_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes, as tensor dims of ``(B, C, *S)``: ``[(), (2,), ...]``.

    2D gives 4 flips (none, vertical, horizontal, both), 3D gives 8.
    """
    axes = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


@torch.no_grad()
def tta_samples(model: nn.Module, image: torch.Tensor,
                flips: Sequence[Sequence[int]] | None = None, batch_size: int = 32,
                ) -> torch.Tensor:
    """Predictions of flipped copies of ``image``, each flipped back (test-time augmentation).

    Args:
        model: 2D or 3D network; used in eval mode (its modes are restored).
        image: ``(B, C, *S)``.
        flips: tensor dims to flip for each sample (``()`` is the original); None: all
            `flip_combinations`. A flip is its own inverse, so it is applied twice.
        batch_size: images per forward pass.

    Returns:
        ``(T, B, K, *S)`` float32 probabilities on the CPU, aligned with ``image``.
    """
    flips = flip_combinations(image.ndim - 2) if flips is None else [tuple(f) for f in flips]
    for dims in flips:
        if any(not 2 <= d < image.ndim for d in dims):
            raise ValueError(f"flip dims {dims} are not spatial dims of a {image.ndim}D batch "
                             f"(use 2..{image.ndim - 1})")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        samples = []
        for dims in flips:
            flipped = image.flip(dims) if dims else image
            probs = _forward_probs(model, flipped, batch_size)
            samples.append((probs.flip(dims) if dims else probs).float().cpu())
    finally:
        for module, training in modes.items():
            module.train(training)
    return torch.stack(samples)


def predictive_entropy(probs: torch.Tensor, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """Shannon entropy ``-sum_k p_k log p_k`` (nats) along the class axis ``dim``.

    0 for a one-hot prediction, ``log K`` for the uniform one; ``0 log 0`` counts as 0.
    """
    return -(probs * torch.log(probs.clamp_min(eps))).sum(dim)


@dataclass
class UncertaintyMaps:
    """Summaries of ``T`` sampled predictions.

    Attributes:
        mean_probs: ``(B, K, *S)`` mean probability over the samples.
        entropy: ``(B, *S)`` predictive entropy of ``mean_probs`` (total), in [0, log K].
        expected_entropy: ``(B, *S)`` mean entropy of the samples (aleatoric part).
        mutual_information: ``(B, *S)`` ``entropy - expected_entropy`` >= 0 (epistemic
            part: how much the samples disagree).
    """

    mean_probs: torch.Tensor
    entropy: torch.Tensor
    expected_entropy: torch.Tensor
    mutual_information: torch.Tensor

    @property
    def pred(self) -> torch.Tensor:
        """``(B, *S)`` int64 label map of ``mean_probs``."""
        return self.mean_probs.argmax(1)


def summarise_samples(samples: torch.Tensor) -> UncertaintyMaps:
    """Mean prediction, predictive entropy, expected entropy and mutual information.

    Args:
        samples: ``(T, B, K, *S)`` probabilities (each sums to 1 over ``K``).
    """
    if samples.ndim < 4:
        raise ValueError(f"expected samples (T, B, K, *S), got shape {tuple(samples.shape)}")
    mean = samples.mean(0)
    entropy = predictive_entropy(mean, dim=1)
    expected = predictive_entropy(samples, dim=2).mean(0)
    return UncertaintyMaps(mean, entropy, expected, (entropy - expected).clamp_min(0))


def _flat(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.asarray(array).ravel()


def error_detection_auc(uncertainty: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor,
                        truth: np.ndarray | torch.Tensor,
                        mask: np.ndarray | torch.Tensor | None = None) -> float:
    """ROC AUC of ``uncertainty`` as a score for "this voxel is misclassified".

    0.5: uncertainty says nothing about errors; 1: every error is more uncertain than every
    correct voxel. Restrict ``mask`` to where errors are possible (e.g. a dilated foreground):
    over the whole image, thousands of easy air voxels inflate the AUC.

    Args:
        uncertainty: ``(*S)`` float map (entropy, mutual information...).
        pred, truth: ``(*S)`` integer label maps (prediction and ground truth).
        mask: ``(*S)`` bool, voxels to score; None: all.

    Returns:
        the AUC, NaN when the voxels scored are all right or all wrong.
    """
    from sklearn.metrics import roc_auc_score

    u, p, t = _flat(uncertainty), _flat(pred), _flat(truth)
    if not u.shape == p.shape == t.shape:
        raise ValueError(f"shapes differ: uncertainty {np.shape(uncertainty)}, pred "
                         f"{np.shape(pred)}, truth {np.shape(truth)}")
    if mask is not None:
        keep = _flat(mask).astype(bool)
        u, p, t = u[keep], p[keep], t[keep]
    errors = p != t
    if errors.all() or not errors.any():
        return float("nan")
    return float(roc_auc_score(errors, u))


def uncertainty_error_dice(uncertainty: np.ndarray | torch.Tensor,
                           pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor,
                           threshold: float) -> float:
    """Dice between the region ``uncertainty > threshold`` and the error region ``pred != truth``.

    Returns 1.0 when both regions are empty (nothing wrong, nothing flagged), by convention.
    """
    flagged = _flat(uncertainty) > threshold
    errors = _flat(pred) != _flat(truth)
    if flagged.shape != errors.shape:
        raise ValueError(f"shapes differ: uncertainty {np.shape(uncertainty)}, pred "
                         f"{np.shape(pred)}")
    total = flagged.sum() + errors.sum()
    return 1.0 if total == 0 else float(2 * (flagged & errors).sum() / total)
