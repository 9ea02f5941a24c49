"""`PseudoLabels`: a teacher's predictions as labels, with a per-case confidence."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_helpers.data.volume import Volume
from medseg_helpers.training.pseudo_labels import PseudoLabels


class _Teacher:
    """Softmax probabilities (K=3, Z=1, Y=1, X=4) per case, and a call counter."""

    def __init__(self) -> None:
        self.calls = 0
        self.probabilities = {
            # voxel 0 background; voxels 1-3 foreground with top probabilities .9, .8, .7
            "sure": [[0.8, 0.05, 0.1, 0.2], [0.1, 0.9, 0.8, 0.1], [0.1, 0.05, 0.1, 0.7]],
            # foreground voxels 1-2 at .5 and .6
            "unsure": [[0.9, 0.3, 0.2, 0.95], [0.05, 0.5, 0.2, 0.03], [0.05, 0.2, 0.6, 0.02]],
            "empty": [[0.9, 0.8, 0.7, 0.6], [0.05, 0.1, 0.2, 0.3], [0.05, 0.1, 0.1, 0.1]],
        }

    def predict(self, case_id: str, probabilities: bool = False) -> Volume:
        assert probabilities
        self.calls += 1
        return Volume(np.array(self.probabilities[case_id], np.float32)[:, None, None, :])


def test_confidence_is_the_mean_top_probability_over_predicted_foreground():
    pseudo = PseudoLabels(_Teacher(), min_confidence=0.75)
    assert pseudo.confidence("sure") == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert pseudo.confidence("unsure") == pytest.approx((0.5 + 0.6) / 2)
    assert pseudo.confidence("empty") == pytest.approx((0.9 + 0.8 + 0.7 + 0.6) / 4)  # all voxels
    assert pseudo.accepted(["unsure", "sure", "empty"]) == ["sure", "empty"]


def test_apply_returns_the_teacher_label_not_the_true_one_and_predicts_once():
    teacher = _Teacher()
    pseudo = PseudoLabels(teacher)
    true_label = np.zeros((1, 1, 4), np.uint8)
    label = pseudo.apply(true_label, (1.0, 1.0, 1.0), "sure")
    assert label.tolist() == [[[0, 1, 1, 2]]] and label.dtype == np.uint8
    pseudo.confidence("sure")
    assert teacher.calls == 1  # cached
    assert pseudo.describe() == "pseudo-labels (confidence >= 0.9)"


def test_shape_mismatch_and_bad_threshold_are_named():
    with pytest.raises(ValueError, match="sure: the teacher predicted"):
        PseudoLabels(_Teacher()).apply(np.zeros((2, 1, 4), np.uint8), (1, 1, 1), "sure")
    with pytest.raises(ValueError, match=r"min_confidence must lie in \[0, 1\]"):
        PseudoLabels(_Teacher(), min_confidence=1.5)
