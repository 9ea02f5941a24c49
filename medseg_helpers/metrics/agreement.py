"""Agreement between annotators, and fusing their labels into one (notebook 10).

Several people labelling the same scan disagree: on every boundary by a voxel or two, and
on whether a faint lesion is there at all. Before training on such labels, measure the
agreement, then fuse:

* `pairwise_dice`: Dice between every pair of annotators, per class;
* `fleiss_kappa`: Fleiss' kappa over all voxels, agreement beyond what the class
  frequencies give by chance (1 = perfect, 0 = chance level);
* `majority_vote`: each voxel takes the class most annotators gave it;
* `staple`: STAPLE (Warfield, Zou and Wells 2004, IEEE TMI 23:903), an expectation-
  maximisation estimate of the true label that weighs each annotator by their estimated
  sensitivity and specificity, which it also returns (SimpleITK's ``STAPLEImageFilter``).

Label maps are ``(Z, Y, X)`` arrays of integers in ``[0, num_classes)``, background 0, one
per annotator, all of one shape. For STAPLE the classes are nested regions (class ``c``'s
region is every voxel labelled ``c`` or higher: a lesion lies inside its organ), fused one
region at a time, as in `medseg_helpers.transforms.label_noise`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["StapleResult", "fleiss_kappa", "majority_vote", "pairwise_dice", "staple"]


def _stack(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """``(R, *S)`` int64 of at least two annotators' label maps, checked."""
    if len(labels) < 2:
        raise ValueError(f"need at least two annotators, got {len(labels)}")
    shapes = {np.shape(label) for label in labels}
    if len(shapes) != 1:
        raise ValueError(f"annotators' label maps differ in shape: {sorted(shapes)}")
    stacked = np.stack([np.asarray(label) for label in labels]).astype(np.int64)
    if stacked.min() < 0 or stacked.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); found "
                         f"{int(stacked.min())}..{int(stacked.max())}")
    return stacked


def pairwise_dice(labels: Sequence[np.ndarray], num_classes: int,
                  names: Sequence[str] | None = None) -> pd.DataFrame:
    """Dice between every pair of annotators for each foreground class.

    Returns:
        One row per pair (``a``, ``b``) with a column ``dice_<k>`` per foreground class
        ``k = 1 .. num_classes - 1`` (NaN where neither annotator drew the class).
    """
    import pandas as pd

    from medseg_helpers.metrics.overlap import compute_dice

    stacked = torch.from_numpy(_stack(labels, num_classes))
    names = list(names) if names is not None else [str(i) for i in range(len(stacked))]
    rows = []
    for i, j in combinations(range(len(stacked)), 2):
        dice = compute_dice(stacked[i][None], stacked[j][None], num_classes)[0]
        rows.append({"a": names[i], "b": names[j],
                     **{f"dice_{k}": float(d) for k, d in enumerate(dice, start=1)}})
    return pd.DataFrame(rows)


def fleiss_kappa(labels: Sequence[np.ndarray], num_classes: int) -> float:
    """Fleiss' kappa of several annotators over all voxels (Fleiss 1971).

    With ``n`` annotators and ``n_ik`` of them giving voxel ``i`` class ``k``: the observed
    agreement ``P = mean_i (sum_k n_ik (n_ik - 1)) / (n (n - 1))``, the agreement expected by
    chance ``P_e = sum_k p_k^2`` with ``p_k`` the share of all votes for class ``k``, and
    ``kappa = (P - P_e) / (1 - P_e)``. Over a whole scan background dominates ``p_k``;
    kappa corrects for that, raw voxel agreement does not.

    Returns:
        Kappa (NaN when every vote is for one class: chance agreement is then perfect).
    """
    stacked = _stack(labels, num_classes)
    raters = stacked.shape[0]
    flat = stacked.reshape(raters, -1)
    counts = np.stack([(flat == k).sum(axis=0) for k in range(num_classes)], axis=1)
    observed = float(((counts * (counts - 1)).sum(axis=1) / (raters * (raters - 1))).mean())
    shares = counts.sum(axis=0) / counts.sum()
    chance = float((shares**2).sum())
    return float("nan") if chance == 1.0 else (observed - chance) / (1.0 - chance)


def majority_vote(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Each voxel's most frequent class; a tie goes to the lowest class (background
    before organ before lesion, so a lesion needs a real majority)."""
    stacked = _stack(labels, num_classes)
    counts = np.stack([(stacked == k).sum(axis=0) for k in range(num_classes)])
    return counts.argmax(axis=0).astype(np.asarray(labels[0]).dtype)


@dataclass
class StapleResult:
    """What `staple` estimates.

    Attributes:
        label: the fused label map ``(Z, Y, X)``.
        probability: per foreground class ``k``, the estimated probability ``(Z, Y, X)``
            that each voxel lies in ``k``'s region (key ``k``).
        sensitivity, specificity: per class ``k``, each annotator's estimated sensitivity
            and specificity for ``k``'s region, ``(R,)`` arrays.
    """

    label: np.ndarray
    probability: dict[int, np.ndarray]
    sensitivity: dict[int, np.ndarray]
    specificity: dict[int, np.ndarray]


def staple(labels: Sequence[np.ndarray], num_classes: int, threshold: float = 0.5
           ) -> StapleResult:
    """STAPLE fusion of nested class regions, with each annotator's estimated quality.

    For each foreground class ``k`` (in increasing order) SimpleITK's binary STAPLE
    estimates the probability that a voxel lies in ``k``'s region (voxels labelled ``k``
    or higher) from every annotator's region; voxels with probability ``>= threshold`` take
    class ``k``, overwriting lower classes.

    Raises:
        ValueError: fewer than two annotators, shapes that differ, labels out of range.
    """
    import SimpleITK as sitk

    stacked = _stack(labels, num_classes)
    fused = np.zeros(stacked.shape[1:], dtype=np.asarray(labels[0]).dtype)
    probability, sensitivity, specificity = {}, {}, {}
    for k in range(1, num_classes):
        regions = [sitk.GetImageFromArray((rater >= k).astype(np.uint8)) for rater in stacked]
        estimator = sitk.STAPLEImageFilter()
        estimator.SetForegroundValue(1)
        estimate = sitk.GetArrayFromImage(estimator.Execute(regions))
        probability[k] = estimate
        sensitivity[k] = np.asarray(estimator.GetSensitivity())
        specificity[k] = np.asarray(estimator.GetSpecificity())
        fused[estimate >= threshold] = k
    return StapleResult(fused, probability, sensitivity, specificity)
