"""Pseudo-labels for unlabelled cases: semi-supervised self-training (notebook 10).

Labels are scarce; scans without labels are not. Self-training uses both: a *teacher*
trained on the labelled cases predicts the unlabelled ones; the cases it is confident
about join the training set with its predictions as their labels; a *student* trains on
the union. Confidence is judged per case: the mean, over the voxels the teacher calls
foreground, of its largest class probability (a case whose foreground is drawn with
probabilities near 0.5 is a guess, not a label).

`PseudoLabels` plugs into `tuning.experiments.Experiment.run` where label noise would
(``noise=``, ``noisy_ids=`` the unlabelled cases): for those cases the teacher's label
map replaces the true one, which is never read. Pseudo-labels are label noise of a
particular kind, the teacher's own errors, which is why the threshold matters and why a
student can learn its teacher's mistakes with confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PseudoLabels"]


class PseudoLabels:
    """A teacher's predictions as labels, with a per-case confidence.

    Args:
        teacher: a trained model with ``predict(case_id, probabilities=True)`` returning a
            `data.volume.Volume` of softmax probabilities ``(K, Z, Y, X)`` on the source
            grid (`course.model.TrainedModel`).
        min_confidence: cases below this confidence are not `accepted`.

    Raises:
        ValueError: ``min_confidence`` outside [0, 1].
    """

    def __init__(self, teacher: Any, min_confidence: float = 0.9) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must lie in [0, 1], got {min_confidence}")
        self.teacher, self.min_confidence = teacher, min_confidence
        self._predictions: dict[str, tuple[np.ndarray, float]] = {}

    def _predict(self, case_id: str) -> tuple[np.ndarray, float]:
        if case_id not in self._predictions:
            probabilities = np.asarray(self.teacher.predict(case_id, probabilities=True).array)
            label = probabilities.argmax(axis=0)
            top = probabilities.max(axis=0)
            foreground = label > 0
            confidence = float(top[foreground].mean() if foreground.any() else top.mean())
            self._predictions[case_id] = (label, confidence)
        return self._predictions[case_id]

    def confidence(self, case_id: str) -> float:
        """The teacher's mean top-class probability over its foreground voxels of a case
        (over all voxels when it predicts no foreground)."""
        return self._predict(case_id)[1]

    def accepted(self, case_ids: Sequence[str]) -> list[str]:
        """The cases whose confidence reaches ``min_confidence``, in the given order."""
        return [c for c in case_ids if self.confidence(c) >= self.min_confidence]

    def apply(self, label: np.ndarray, spacing_mm: Sequence[float], case_id: str = ""
              ) -> np.ndarray:
        """The teacher's label map for ``case_id`` (``label``, the true one, only gives the
        shape and dtype to match: `derive_dataset` calls this as it calls `LabelNoise`).

        Raises:
            ValueError: the prediction's shape is not the label's.
        """
        predicted, _ = self._predict(case_id)
        if predicted.shape != np.shape(label):
            raise ValueError(f"{case_id}: the teacher predicted {predicted.shape}, the label "
                             f"is {np.shape(label)}")
        return predicted.astype(np.asarray(label).dtype)

    def describe(self) -> str:
        """One line for tables: ``pseudo-labels (confidence >= 0.9)``."""
        return f"pseudo-labels (confidence >= {self.min_confidence:g})"
