"""Voxel-level ROC, precision-recall and calibration from predicted probabilities.

A 3D test set has tens of millions of voxels and a lesion may be 0.1 % of them. Keeping
every probability is wasteful and uniform subsampling keeps almost no lesion voxel, so
`sample_voxels` draws a **stratified** sample: up to ``max_per_class`` voxels of each
true class per case, each with a weight ``N_class / n_drawn`` (the number of voxels it
stands for). Weighted curves (scikit-learn's ``sample_weight``) are then unbiased
estimates of the curves over all voxels, with memory bounded by
``cases x classes x max_per_class``:

* ROC (TPR against FPR) and its AUC are rates within the positives and within the
  negatives; in a binary problem stratification alone would not bias them, but the
  "rest" of a one-vs-rest curve mixes classes drawn at different rates, so it needs the
  weights too;
* precision, average precision (AP, area under the PR curve) and calibration depend on
  the class frequencies themselves, so without weights they would be badly wrong. Under
  heavy imbalance AP tells more than ROC AUC: a lesion detector with AUC 0.99 can still
  have precision 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "VoxelSample",
    "concatenate_samples",
    "reliability_curve",
    "roc_pr_curves",
    "sample_voxels",
]


@dataclass(frozen=True)
class VoxelSample:
    """Probabilities of sampled voxels with their true class and weight.

    Attributes:
        probs: ``(n, K)`` float32 class probabilities (rows sum to 1).
        truth: ``(n,)`` int64 true class.
        weights: ``(n,)`` float64, voxels of the full volume(s) each sample stands for.
    """

    probs: np.ndarray
    truth: np.ndarray
    weights: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.probs.shape[1]


def sample_voxels(probs: np.ndarray, truth: np.ndarray, max_per_class: int = 20_000,
                  seed: int = 0) -> VoxelSample:
    """A class-stratified, weighted sample of one case's voxels.

    Args:
        probs: ``(K, *spatial)`` float probabilities (softmax output), e.g. ``(K, Z, Y, X)``.
        truth: ``(*spatial)`` integer ground truth in ``[0, K)``.
        max_per_class: voxels drawn without replacement per true class (all of a class
            with fewer voxels).
        seed: for the random draw.

    Returns:
        a `VoxelSample` with at most ``K * max_per_class`` rows.

    Raises:
        ValueError: the spatial shapes differ (both named) or truth values out of range.
    """
    probs, truth = np.asarray(probs), np.asarray(truth)
    if probs.shape[1:] != truth.shape:
        raise ValueError(f"probs {probs.shape} must be (K, *spatial) with spatial = truth "
                         f"{truth.shape}")
    num_classes = probs.shape[0]
    flat_truth = truth.reshape(-1).astype(np.int64)
    if flat_truth.size and (flat_truth.min() < 0 or flat_truth.max() >= num_classes):
        raise ValueError(f"truth values {np.unique(flat_truth)[:10].tolist()} outside "
                         f"[0, {num_classes})")
    rng = np.random.default_rng(seed)
    picked, weights = [], []
    for c in range(num_classes):
        where = np.flatnonzero(flat_truth == c)
        if where.size == 0:
            continue
        chosen = where if where.size <= max_per_class else rng.choice(where, max_per_class,
                                                                      replace=False)
        picked.append(chosen)
        weights.append(np.full(chosen.size, where.size / chosen.size))
    index = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    flat_probs = probs.reshape(num_classes, -1)
    return VoxelSample(flat_probs[:, index].T.astype(np.float32), flat_truth[index],
                       np.concatenate(weights) if weights else np.zeros(0))


def concatenate_samples(samples: Sequence[VoxelSample]) -> VoxelSample:
    """One `VoxelSample` from several cases (weights keep their meaning)."""
    if not samples:
        raise ValueError("no samples to concatenate")
    return VoxelSample(np.concatenate([s.probs for s in samples]),
                       np.concatenate([s.truth for s in samples]),
                       np.concatenate([s.weights for s in samples]))


def roc_pr_curves(sample: VoxelSample, class_index: int) -> dict[str, np.ndarray | float]:
    """One-vs-rest ROC and precision-recall curves of one class, weighted.

    Args:
        sample: from `sample_voxels` / `concatenate_samples`.
        class_index: the positive class; its probability is the score.

    Returns:
        ``{"fpr", "tpr", "roc_thresholds", "roc_auc", "precision", "recall",
        "average_precision", "prevalence"}`` (scikit-learn's ``roc_curve``,
        ``roc_auc_score``, ``precision_recall_curve``, ``average_precision_score`` with
        ``sample_weight``). ``prevalence`` (weighted share of positives) is the precision
        of a random classifier: the PR baseline.

    Raises:
        ValueError: the sample lacks positives or negatives of the class.
    """
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    positive = sample.truth == class_index
    if positive.all() or not positive.any():
        raise ValueError(f"class {class_index} needs both positive and negative voxels in the "
                         f"sample (has {int(positive.sum())} of {positive.size})")
    score, weight = sample.probs[:, class_index], sample.weights
    fpr, tpr, thresholds = roc_curve(positive, score, sample_weight=weight)
    precision, recall, _ = precision_recall_curve(positive, score, sample_weight=weight)
    return {
        "fpr": fpr, "tpr": tpr, "roc_thresholds": thresholds,
        "roc_auc": float(roc_auc_score(positive, score, sample_weight=weight)),
        "precision": precision, "recall": recall,
        "average_precision": float(average_precision_score(positive, score,
                                                           sample_weight=weight)),
        "prevalence": float(weight[positive].sum() / weight.sum()),
    }  # fmt: skip


def reliability_curve(sample: VoxelSample, class_index: int | None = None,
                      num_bins: int = 10) -> dict[str, np.ndarray | float]:
    """Reliability diagram data and expected calibration error (ECE), weighted.

    Args:
        sample: from `sample_voxels`.
        class_index: None: top-label calibration (confidence = highest probability,
            correct = its class is the truth); an int: one-vs-rest calibration of that
            class's probability.
        num_bins: equal-width bins over [0, 1].

    Returns:
        ``{"confidence", "frequency", "weight", "edges", "ece"}``: per bin the weighted
        mean predicted probability, the observed frequency of "correct"/"positive", and
        the share of voxels (NaN bins are empty); ``ece = sum(weight * |frequency -
        confidence|)`` (Guo et al. 2017, "On calibration of modern neural networks").
        A calibrated model lies on the diagonal.
    """
    if class_index is None:
        confidence = sample.probs.max(axis=1)
        correct = sample.probs.argmax(axis=1) == sample.truth
    else:
        confidence = sample.probs[:, class_index]
        correct = sample.truth == class_index
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, num_bins - 1)
    total = np.bincount(bins, weights=sample.weights, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, sample.weights * confidence, num_bins) / total
        frequency = np.bincount(bins, sample.weights * correct, num_bins) / total
    share = total / total.sum()
    ece = float(np.nansum(share * np.abs(frequency - mean_conf)))
    return {"confidence": mean_conf, "frequency": frequency, "weight": share, "edges": edges,
            "ece": ece}
