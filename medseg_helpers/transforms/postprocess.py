"""Post-processing of predicted label maps: keep the largest connected component, or drop
the components too small to be real (a rule chosen on validation patients).

A network that sees one 2D slice at a time often leaves small islands of false positives
away from the organ. When the anatomy says "one organ per patient", keeping only the
largest connected component removes them. It is a prior, not a free lunch: a structure
that may have several parts (lesions, metastases) loses all but the largest, which
`notebooks/06_evaluation.ipynb` measures. Equivalent to MONAI's
``KeepLargestConnectedComponent`` on a label map (checked in
``tests/test_postprocess.py``).

Connectivity defaults to MONAI's: voxels touching by a face, an edge or a corner are
one component (26 neighbours in 3D, 8 in 2D); ``connectivity=1`` counts faces only.

For classes that may have many parts, `SmallComponentFilter` removes only the predicted
components under a volume in mm³. `choose_small_component_filter` picks that volume per
class the way nnU-Net picks its post-processing: try a few candidates on the validation
patients and keep one only if it raises that class's mean Dice there. The candidates are
fractions of the smallest component the *training* labels hold (`smallest_components_mm3`),
so a rule can never remove anything the size of a real structure::

    smallest = smallest_components_mm3(training_labels, classes=[2])   # {2: 36.0}
    rule, table = choose_small_component_filter(validation_cases, 3, smallest)
    cleaned = rule.apply(prediction)                 # Volume in, Volume out
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from medseg_helpers.data.volume import Volume
from medseg_helpers.metrics.overlap import compute_dice
from medseg_helpers.transforms.labels import connectivity_structure, remove_small_components

__all__ = ["CANDIDATE_FRACTIONS", "SmallComponentFilter", "choose_small_component_filter",
           "keep_largest_component", "largest_component_mask", "smallest_components_mm3"]

#: Candidate minimum volumes tried per class, as fractions of the smallest component of
#: that class in the training labels (0: keep everything).
CANDIDATE_FRACTIONS = (0.0, 0.125, 0.25, 0.5)


def largest_component_mask(mask: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """The largest connected component of a binary mask.

    Args:
        mask: ``(H, W)`` or ``(Z, Y, X)`` binary mask.
        connectivity: neighbours are voxels at most this many orthogonal steps away
            (1: faces, 6-connectivity in 3D; ``ndim``: faces, edges and corners, 26 in 3D).
            None: ``mask.ndim`` (MONAI's default).

    Returns:
        bool array, same shape; all False for an empty mask. Ties keep the component
        with the lowest label in raster order.
    """
    mask = np.asarray(mask).astype(bool)
    components, count = ndimage.label(
        mask, structure=connectivity_structure(mask.ndim, connectivity))
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    return components == int(np.argmax(sizes)) + 1


def keep_largest_component(pred: np.ndarray, labels: Sequence[int] | None = None,
                           independent: bool = True, connectivity: int | None = None,
                           fill_value: int = 0) -> np.ndarray:
    """Remove all but the largest connected component of some classes of a label map.

    Args:
        pred: ``(H, W)`` or ``(Z, Y, X)`` integer label map.
        labels: classes to clean; None: every non-zero label present.
        independent: True: each class separately; False: the union of ``labels`` is one
            foreground (keep the largest blob of "organ or lesion", so a lesion inside the
            organ survives even if it is not the largest lesion).
        connectivity: neighbours are voxels at most this many orthogonal steps away,
            1 (faces) to ``pred.ndim`` (faces, edges and corners); None (default):
            ``pred.ndim``, as MONAI.
        fill_value: label given to the removed voxels (background).

    Returns:
        A cleaned copy of ``pred`` (same dtype).

    Example:
        >>> keep_largest_component(np.array([[1, 1, 0, 1]]))
        array([[1, 1, 0, 0]])
    """
    pred = np.asarray(pred)
    if not (np.issubdtype(pred.dtype, np.integer) or pred.dtype == bool):
        raise TypeError(f"pred must be an integer label map, got dtype {pred.dtype}")
    if labels is None:
        labels = [int(v) for v in np.unique(pred) if v != 0]
    out = pred.copy()
    if independent:
        for label in labels:
            foreground = pred == label
            out[foreground & ~largest_component_mask(foreground, connectivity)] = fill_value
        return out
    foreground = np.isin(pred, list(labels))
    out[foreground & ~largest_component_mask(foreground, connectivity)] = fill_value
    return out


@dataclass(frozen=True)
class SmallComponentFilter:
    """Remove predicted connected components smaller than a volume, per class.

    Attributes:
        min_volume_mm3: ``{class index: volume in mm³}``; a component of that class with a
            smaller volume becomes background. Classes not listed are left alone; an
            empty map changes nothing.
    """

    min_volume_mm3: Mapping[int, float] = field(default_factory=dict)

    def apply(self, labels: Volume) -> Volume:
        """``labels`` ``(Z, Y, X)`` with the small components removed (its own spacing)."""
        array = labels.array
        for cls, volume in self.min_volume_mm3.items():
            if volume > 0:
                array = remove_small_components(array, min_volume_mm3=volume,
                                                spacing_mm=labels.spacing_mm, classes=[cls])
        return labels if array is labels.array else labels.with_array(array)

    def describe(self, class_names: Sequence[str]) -> str:
        """One line, e.g. ``"lesion components under 4.5 mm³ removed"`` or ``"none"``."""
        parts = [f"{class_names[c]} components under {v:.3g} mm³ removed"
                 for c, v in sorted(self.min_volume_mm3.items()) if v > 0]
        return "; ".join(parts) or "none"

    def to_json(self) -> str:
        return json.dumps({"min_volume_mm3": {str(c): float(v)
                                              for c, v in sorted(self.min_volume_mm3.items())}})

    @classmethod
    def from_json(cls, text: str) -> SmallComponentFilter:
        """Inverse of `to_json`.

        Raises:
            ValueError: not the JSON `to_json` writes.
        """
        try:
            volumes = json.loads(text)["min_volume_mm3"]
            return cls({int(c): float(v) for c, v in volumes.items()})
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"malformed post-processing rule: {err}") from err


def smallest_components_mm3(labels: Iterable[Volume], classes: Sequence[int],
                            connectivity: int | None = None) -> dict[int, float]:
    """The volume (mm³) of the smallest connected component of each class in ``labels``.

    Args:
        labels: ground-truth label maps (typically the training patients').
        classes: class indices to measure; a class that never occurs is left out.
        connectivity: as in `largest_component_mask`.
    """
    smallest: dict[int, float] = {}
    for label in labels:
        structure = connectivity_structure(label.array.ndim, connectivity)
        voxel_mm3 = float(np.prod(label.spacing_mm))
        for cls in classes:
            components, count = ndimage.label(label.array == cls, structure=structure)
            if count:
                volume = float(np.bincount(components.ravel())[1:].min()) * voxel_mm3
                smallest[cls] = min(smallest.get(cls, np.inf), volume)
    return smallest


def choose_small_component_filter(
    cases: Iterable[tuple[str, Volume, Volume]], num_classes: int,
    smallest_mm3: Mapping[int, float],
    fractions: Sequence[float] = CANDIDATE_FRACTIONS,
) -> tuple[SmallComponentFilter, pd.DataFrame]:
    """Pick, per class, the minimum component volume that most raises validation Dice.

    Each class of ``smallest_mm3`` is tried at ``fraction * smallest_mm3[class]`` for every
    fraction; a candidate wins only if it raises that class's mean Dice over ``cases``
    (NaN, a class absent from prediction and truth, is skipped, so a removed false alarm
    on a case without the class leaves the mean instead of counting 0; a mean that is
    NaN, no case left with the class in prediction or truth, ranks as 1). Ties keep the
    smaller volume.

    Args:
        cases: ``(case_id, prediction, truth)`` label maps on the same grid (validation
            patients; never the test patients).
        num_classes: classes including background.
        smallest_mm3: `smallest_components_mm3` of the training labels.
        fractions: candidate fractions (0 is always tried).

    Returns:
        the rule, and a table with one row per class and candidate: ``class``,
        ``min_volume_mm3``, ``mean_dice``, ``chosen``.
    """
    cases = list(cases)
    rows = []
    chosen: dict[int, float] = {}
    for cls, smallest in sorted(smallest_mm3.items()):
        volumes = sorted({0.0, *(float(f) * smallest for f in fractions)})
        scores = [_mean_dice(cases, num_classes, cls, volume) for volume in volumes]
        # NaN: the class is in no prediction and no truth of any case, i.e. full agreement
        ranked = np.nan_to_num(scores, nan=1.0)
        best = volumes[int(np.argmax(ranked))] if ranked[0] < ranked.max() else 0.0
        if best > 0:
            chosen[cls] = best
        rows += [{"class": cls, "min_volume_mm3": v, "mean_dice": s, "chosen": v == best}
                 for v, s in zip(volumes, scores, strict=True)]
    return SmallComponentFilter(chosen), pd.DataFrame(rows)


def _mean_dice(cases: Sequence[tuple[str, Volume, Volume]], num_classes: int, cls: int,
               min_volume_mm3: float) -> float:
    """Mean Dice of class ``cls`` over ``cases`` after removing its small components."""
    rule = SmallComponentFilter({cls: min_volume_mm3})
    scores = [compute_dice(torch.from_numpy(rule.apply(pred).array[None].astype(np.int64)),
                           torch.from_numpy(truth.array[None].astype(np.int64)),
                           num_classes)[0, cls - 1].item() for _, pred, truth in cases]
    return float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else float("nan")
