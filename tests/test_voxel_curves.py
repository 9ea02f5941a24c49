"""Stratified voxel sampling, weighted ROC/PR and calibration against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_helpers.metrics.curves import (
    concatenate_samples,
    reliability_curve,
    roc_pr_curves,
    sample_voxels,
)


def _case(seed: int = 0, shape=(8, 30, 30)) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (3, *shape) of a noisy classifier and a label with a rare class 2."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.int64)
    label[:, 5:20, 5:20] = 1
    label[3:5, 10:13, 10:13] = 2  # 18 voxels of 7200: 0.25 %
    logits = rng.normal(0, 1.0, (3, *shape)) + 2.5 * np.eye(3)[label].transpose(3, 0, 1, 2)
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    return probs.astype(np.float32), label


def test_sampling_is_stratified_bounded_and_weighted() -> None:
    probs, label = _case()
    sample = sample_voxels(probs, label, max_per_class=100, seed=0)
    counts = np.bincount(label.ravel(), minlength=3)
    assert np.array_equal(np.bincount(sample.truth, minlength=3), [100, 100, 18])
    for c in range(3):  # the weights of a class add up to its voxel count
        assert sample.weights[sample.truth == c].sum() == pytest.approx(counts[c])
    assert sample.probs.shape == (218, 3) and sample.probs.dtype == np.float32
    again = sample_voxels(probs, label, max_per_class=100, seed=0)
    assert np.array_equal(sample.probs, again.probs)


def test_without_subsampling_curves_equal_sklearn_on_all_voxels() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    probs, label = _case(1)
    sample = sample_voxels(probs, label, max_per_class=10**6)
    curves = roc_pr_curves(sample, class_index=2)
    truth, score = label.ravel() == 2, probs[2].ravel()
    assert curves["roc_auc"] == pytest.approx(roc_auc_score(truth, score))
    assert curves["average_precision"] == pytest.approx(average_precision_score(truth, score))
    assert curves["prevalence"] == pytest.approx(truth.mean())


def test_weighted_subsample_estimates_the_full_curves() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    probs, label = _case(2, shape=(8, 60, 60))
    sample = sample_voxels(probs, label, max_per_class=3000, seed=1)
    curves = roc_pr_curves(sample, class_index=1)
    truth, score = label.ravel() == 1, probs[1].ravel()
    assert curves["roc_auc"] == pytest.approx(roc_auc_score(truth, score), abs=0.01)
    assert curves["average_precision"] == pytest.approx(
        average_precision_score(truth, score), abs=0.02)
    unweighted = average_precision_score(sample.truth == 1, sample.probs[:, 1])
    assert abs(unweighted - curves["average_precision"]) > 0.02  # weights matter for PR


def test_reliability_matches_sklearn_calibration_curve() -> None:
    from sklearn.calibration import calibration_curve

    probs, label = _case(3)
    sample = sample_voxels(probs, label, max_per_class=10**6)
    curve = reliability_curve(sample, class_index=1, num_bins=10)
    frequency, confidence = calibration_curve(label.ravel() == 1, probs[1].ravel(), n_bins=10)
    filled = ~np.isnan(curve["frequency"])
    assert np.allclose(curve["frequency"][filled], frequency)
    assert np.allclose(curve["confidence"][filled], confidence, atol=1e-6)
    assert curve["weight"].sum() == pytest.approx(1.0)


def test_perfectly_calibrated_scores_have_small_ece() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    label = (rng.random(p.size) < p).astype(np.int64)  # P(class 1 | p) = p
    probs = np.stack([1 - p, p]).astype(np.float32)
    curve = reliability_curve(sample_voxels(probs, label, 10**6), class_index=1)
    assert curve["ece"] < 0.01
    overconfident = np.stack([1 - p**0.3, p**0.3]).astype(np.float32)
    assert reliability_curve(sample_voxels(overconfident, label, 10**6), 1)["ece"] > 0.1


def test_top_label_reliability_counts_correct_argmax() -> None:
    probs = np.array([[0.85, 0.65], [0.15, 0.35]], np.float32)  # (K=2, 2 voxels)
    label = np.array([0, 1])  # voxel 0 right (conf 0.85), voxel 1 wrong (conf 0.65)
    curve = reliability_curve(sample_voxels(probs, label), num_bins=10)
    assert curve["frequency"][8] == 1.0 and curve["frequency"][6] == 0.0
    assert curve["ece"] == pytest.approx(0.5 * 0.15 + 0.5 * 0.65)


def test_concatenate_and_errors() -> None:
    probs, label = _case()
    both = concatenate_samples([sample_voxels(probs, label, 10), sample_voxels(probs, label, 5)])
    assert both.probs.shape == (3 * 10 + 3 * 5, 3)
    with pytest.raises(ValueError, match="no samples"):
        concatenate_samples([])
    with pytest.raises(ValueError, match=r"probs \(3, 8, 30, 30\) must be"):
        sample_voxels(probs, label[:4])
    with pytest.raises(ValueError, match="outside"):
        sample_voxels(probs, label + 1)
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_pr_curves(sample_voxels(probs, np.zeros_like(label)), class_index=2)
