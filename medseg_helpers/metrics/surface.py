"""Boundary metrics in millimetres: HD95, average surface distance, surface Dice (NSD).

Overlap metrics (Dice, IoU) count voxels, so a thin sliver of error far from the organ
costs almost nothing; boundary metrics measure *where* the contour is, in mm, with the
voxel spacing of the scan (anisotropic spacing matters: 1 voxel along z may be 5 mm).

Definitions (the same as MONAI's ``compute_hausdorff_distance``,
``compute_average_surface_distance`` and ``compute_surface_dice`` without sub-voxel
areas, which ``tests/test_surface_metrics.py`` checks):

* The **surface** of a binary mask is the set of its voxels with at least one face
  neighbour outside the mask (``mask & ~binary_erosion(mask)``, voxels outside the image
  count as background).
* ``d(A -> B)``: for every surface voxel of A, the Euclidean distance in mm (voxel
  centres scaled by ``spacing_mm``) to the nearest surface voxel of B.
* **HD95** (Huttenlocher et al. 1993; the 95th percentile as in the BraTS and
  Decathlon challenges): ``max(P95(d(P -> G)), P95(d(G -> P)))``. The maximum (HD100)
  is one outlier voxel; the 95th percentile ignores the worst 5 % of the boundary.
* **ASD**: ``mean(d(P -> G))`` (``symmetric=False``, MONAI's default) or the average
  symmetric surface distance ``mean(d(P -> G) ∪ d(G -> P))`` (``symmetric=True``, ASSD).
* **Surface Dice / NSD** at tolerance τ mm (Nikolov et al. 2021, arXiv:2111.05408):
  ``(#{d(P -> G) <= τ} + #{d(G -> P) <= τ}) / (|surface P| + |surface G|)``, in [0, 1]:
  the share of both boundaries that lies within τ of the other.

Empty masks (no surface):

=========================  ======================  ========  =============================
truth / prediction         HD95, ASD (here)        NSD       MONAI 1.6
=========================  ======================  ========  =============================
both empty                 NaN (ignored)           NaN       the same
exactly one empty          ``empty_distance_mm``   0.0       HD100, ASD: inf; NSD: 0;
                           (default ``inf``)                 **HD95: NaN** (see below)
=========================  ======================  ========  =============================

MONAI's percentile Hausdorff distance interpolates ``inf - inf`` in ``torch.quantile``
and returns NaN when exactly one mask is empty, so a missed lesion silently drops out of
a NaN-aware mean of HD95; here it is ``inf`` (or the penalty you choose).

An infinite distance makes every mean infinite; `medseg_helpers.metrics.evaluation` replaces it
by the image diagonal (the BraTS convention: the worst distance the image allows), so
a missed lesion is penalised instead of silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg_helpers.data.volume import check_spacing

__all__ = [
    "SurfaceDistances",
    "average_surface_distance",
    "boundary_metrics",
    "hausdorff_distance",
    "mask_surface",
    "surface_dice",
    "surface_distances",
]


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances between the surfaces of two binary masks, mm.

    Attributes:
        pred_to_truth: ``(n_pred,)`` float64, one per prediction surface voxel
            (``inf`` if the truth is empty).
        truth_to_pred: ``(n_truth,)`` float64, one per truth surface voxel.
    """

    pred_to_truth: np.ndarray
    truth_to_pred: np.ndarray

    @property
    def both_empty(self) -> bool:
        return self.pred_to_truth.size == 0 and self.truth_to_pred.size == 0

    @property
    def one_empty(self) -> bool:
        return (self.pred_to_truth.size == 0) != (self.truth_to_pred.size == 0)


def _check_pair(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float] | None
                ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} do not have the same shape")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D (H, W) or 3D (Z, Y, X), got shape {pred.shape}")
    spacing = (1.0,) * pred.ndim if spacing_mm is None else check_spacing(spacing_mm, pred.ndim)
    return pred, truth, spacing


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary mask: in the mask, with a face neighbour outside it.

    Args:
        mask: ``(H, W)`` or ``(Z, Y, X)`` bool (any dtype; non-zero is inside).

    Returns:
        bool array of the same shape. Voxels on the image border count as surface.
    """
    mask = np.asarray(mask).astype(bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: np.ndarray, truth: np.ndarray,
                      spacing_mm: Sequence[float] | None = None) -> SurfaceDistances:
    """Distances in mm from each surface voxel of one mask to the other mask's surface.

    Args:
        pred: ``(H, W)`` or ``(Z, Y, X)`` binary prediction.
        truth: binary ground truth, same shape.
        spacing_mm: voxel size per array axis (``(sz, sy, sx)`` for a `Volume`), mm;
            None: 1 per axis (distances in voxels).

    Returns:
        `SurfaceDistances`. Only the bounding box of ``pred | truth`` (plus one voxel) is
        processed, which is exact: nearest surfaces lie inside it.

    Raises:
        ValueError: shapes differ (both named), not 2D/3D, or a bad spacing.
    """
    pred, truth, spacing = _check_pair(pred, truth, spacing_mm)
    union = pred | truth
    if not union.any():
        return SurfaceDistances(np.zeros(0), np.zeros(0))
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(union))
    pred_surface, truth_surface = mask_surface(pred[box]), mask_surface(truth[box])
    # (the crop leaves a margin of one voxel, or reaches the image border: erosion is unchanged)

    def one_way(source: np.ndarray, target: np.ndarray) -> np.ndarray:
        if not target.any():
            return np.full(int(source.sum()), np.inf)
        return ndimage.distance_transform_edt(~target, sampling=spacing)[source]

    return SurfaceDistances(one_way(pred_surface, truth_surface),
                            one_way(truth_surface, pred_surface))


def _either(distances: SurfaceDistances, empty_distance_mm: float) -> float | None:
    """The conventional value when a mask is empty, else None."""
    if distances.both_empty:
        return math.nan
    if distances.one_empty:
        return float(empty_distance_mm)
    return None


def hausdorff_distance(pred: np.ndarray, truth: np.ndarray,
                       spacing_mm: Sequence[float] | None = None, percentile: float = 95.0,
                       empty_distance_mm: float = math.inf) -> float:
    """Symmetric (percentile) Hausdorff distance in mm; HD95 by default.

    Args:
        pred, truth, spacing_mm: as in `surface_distances`.
        percentile: in [0, 100]; 100 is the classic Hausdorff distance (the maximum).
        empty_distance_mm: value when exactly one mask is empty (default ``inf`` as
            MONAI); NaN when both are.

    Returns:
        ``max(P(d(pred -> truth)), P(d(truth -> pred)))`` in mm, linear interpolation
        between ranks (``np.percentile``, as ``torch.quantile``).

    Example:
        >>> pred, truth = np.zeros((1, 5), bool), np.zeros((1, 5), bool)
        >>> pred[0, 0], truth[0, 3] = True, True
        >>> hausdorff_distance(pred, truth, spacing_mm=(1.0, 2.0))  # 3 voxels * 2 mm
        6.0
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    distances = surface_distances(pred, truth, spacing_mm)
    special = _either(distances, empty_distance_mm)
    if special is not None:
        return special
    return float(max(np.percentile(distances.pred_to_truth, percentile),
                     np.percentile(distances.truth_to_pred, percentile)))


def average_surface_distance(pred: np.ndarray, truth: np.ndarray,
                             spacing_mm: Sequence[float] | None = None, symmetric: bool = True,
                             empty_distance_mm: float = math.inf) -> float:
    """Average surface distance in mm.

    Args:
        pred, truth, spacing_mm: as in `surface_distances`.
        symmetric: True (default): mean over both boundaries' distances (ASSD); False:
            ``mean(d(pred -> truth))`` only (MONAI's default).
        empty_distance_mm: value when exactly one mask is empty; NaN when both are.
    """
    distances = surface_distances(pred, truth, spacing_mm)
    special = _either(distances, empty_distance_mm)
    if special is not None:
        return special
    if not symmetric:
        return float(distances.pred_to_truth.mean())
    return float(np.concatenate([distances.pred_to_truth, distances.truth_to_pred]).mean())


def surface_dice(pred: np.ndarray, truth: np.ndarray, tolerance_mm: float,
                 spacing_mm: Sequence[float] | None = None) -> float:
    """Normalised surface Dice (NSD) at ``tolerance_mm``, in [0, 1].

    Args:
        pred, truth, spacing_mm: as in `surface_distances`.
        tolerance_mm: boundary deviation accepted as correct, mm (>= 0). Choose it from
            the inter-rater variability of the structure (Nikolov et al. 2021).

    Returns:
        The share of both surfaces within ``tolerance_mm`` of the other; NaN if both
        masks are empty, 0 if exactly one is.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    distances = surface_distances(pred, truth, spacing_mm)
    total = distances.pred_to_truth.size + distances.truth_to_pred.size
    if total == 0:
        return math.nan
    within = (np.count_nonzero(distances.pred_to_truth <= tolerance_mm)
              + np.count_nonzero(distances.truth_to_pred <= tolerance_mm))
    return within / total


def boundary_metrics(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float] | None,
                     tolerance_mm: float, percentile: float = 95.0,
                     empty_distance_mm: float = math.inf) -> dict[str, float]:
    """HD (``percentile``), ASSD and NSD of one binary pair from one distance computation.

    Returns:
        ``{"hd95_mm", "asd_mm", "nsd"}`` with the conventions of `hausdorff_distance`,
        `average_surface_distance` (symmetric) and `surface_dice`.
    """
    distances = surface_distances(pred, truth, spacing_mm)
    special = _either(distances, empty_distance_mm)
    total = distances.pred_to_truth.size + distances.truth_to_pred.size
    if special is not None:
        nsd = math.nan if total == 0 else 0.0
        return {"hd95_mm": special, "asd_mm": special, "nsd": nsd}
    both = np.concatenate([distances.pred_to_truth, distances.truth_to_pred])
    hd = max(np.percentile(distances.pred_to_truth, percentile),
             np.percentile(distances.truth_to_pred, percentile))
    return {"hd95_mm": float(hd), "asd_mm": float(both.mean()),
            "nsd": float(np.count_nonzero(both <= tolerance_mm) / total)}
