"""Simulated annotation errors: boundaries drawn too wide or too tight, missed lesions,
slices labelled on the wrong side or shifted.

Real labels are noisy: annotators disagree by a voxel or two on every boundary, miss
small lesions, and slice-by-slice tools (ITK-SNAP, 3D Slicer) make whole-slice mistakes.
These functions corrupt a clean label map in such controlled ways, so a notebook can
measure what each kind of noise costs a model and whether a remedy helps. Every function
is pure (returns a new array), deterministic given ``seed`` and leaves labels in the set
they came from.

Arrays are label maps ``(Z, Y, X)`` of non-negative integers in array order (see
`medseg_helpers.data.volume`), background 0; distances are in mm with ``spacing_mm =
(sz, sy, sx)``, so a 2 mm dilation of a scan with 3 mm slices does not grow along z.

Removed voxels take the label of the nearest voxel of a lower class, so an
eroded or deleted lesion inside an organ becomes organ, not background.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg_helpers.data.volume import check_spacing

__all__ = ["NOISE_KINDS", "LabelNoise", "corrupt_slices", "drop_components",
           "perturb_boundary"]

NOISE_KINDS = ("dilate", "erode", "drop_components", "flip_slices", "shift_slices",
               "empty_slices")


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 3 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must be an integer (Z, Y, X) array, got {label.dtype} "
                         f"{label.shape}")
    return label


def _fill_from_nearest(label: np.ndarray, remove: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Give each voxel of ``remove`` the label of its nearest voxel in ``keep`` (in voxels)."""
    out = label.copy()
    if not remove.any():
        return out
    if not keep.any():
        out[remove] = 0
        return out
    _, nearest = ndimage.distance_transform_edt(~keep, return_indices=True)
    out[remove] = label[tuple(index[remove] for index in nearest)]
    return out


def perturb_boundary(label: np.ndarray, spacing_mm: Sequence[float], distance_mm: float,
                     classes: Sequence[int] | None = None) -> np.ndarray:
    """Move class boundaries outwards (``distance_mm > 0``) or inwards (``< 0``).

    Classes are nested: the *region* of class ``c`` is every voxel labelled ``c`` or
    higher (a lesion lies inside its organ). Dilation gives class ``c`` every lower-class
    voxel whose centre lies within ``distance_mm`` of the region (Euclidean, in mm);
    erosion removes every ``c`` voxel within
    ``|distance_mm|`` of a voxel of a *lower* class and gives it the nearest such label.
    Higher classes count as lying inside lower ones (a lesion inside its organ): growing
    the organ never overwrites the lesion, and eroding it does not peel the organ away
    around the lesion. One voxel's spacing moves the boundary by one voxel along that
    axis; distances below a spacing change nothing along that axis.

    Args:
        label: ``(Z, Y, X)`` integer labels, background 0.
        spacing_mm: ``(sz, sy, sx)`` voxel size in mm.
        distance_mm: how far the boundary moves, mm; 0 returns a copy.
        classes: classes to move, in this order (later ones win where they overlap);
            None: every foreground class present, ascending (a lesion grows into its organ).

    Returns:
        A new ``(Z, Y, X)`` array, same dtype; the label set never grows.

    Raises:
        ValueError: a label that is not an integer 3D array, or a spacing that is not
            three positive numbers (`check_spacing`).
    """
    label = _check_label(label)
    spacing = check_spacing(spacing_mm)
    out = label.copy()
    if distance_mm == 0:
        return out
    for c in (classes if classes is not None else [v for v in np.unique(label) if v != 0]):
        mask, lower = out == c, out < c
        if not mask.any():
            continue
        if distance_mm > 0:  # distances from the whole region (c and the classes inside it)
            grow = ndimage.distance_transform_edt(lower, sampling=spacing) <= distance_mm
            out[grow & lower] = c
        elif lower.any():
            shrink = mask & (ndimage.distance_transform_edt(~lower, sampling=spacing)
                             <= -distance_mm)
            out = _fill_from_nearest(out, shrink, lower)
    return out


def drop_components(label: np.ndarray, class_index: int, probability: float,
                    seed: int = 0) -> tuple[np.ndarray, int]:
    """Forget whole connected components of one class ("missed lesions").

    Components are 26-connected in 3D (`scipy.ndimage.label`, numbered in raster order);
    each is dropped independently with ``probability``; its voxels take the nearest label
    outside the class (a lesion inside the organ becomes organ).

    Args:
        label: ``(Z, Y, X)`` integer labels.
        class_index: the class to thin out, e.g. 2 for lesions.
        probability: chance of dropping each component, in [0, 1].
        seed: random seed (same seed and label, same result).

    Returns:
        ``(new_label, number_dropped)``.

    Raises:
        ValueError: ``probability`` outside [0, 1] or a bad label array.
    """
    label = _check_label(label)
    if not 0 <= probability <= 1:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    mask = label == class_index
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    dropped = np.flatnonzero(np.random.default_rng(seed).random(count) < probability) + 1
    remove = np.isin(components, dropped)
    return _fill_from_nearest(label, remove, ~mask), int(dropped.size)


def corrupt_slices(label: np.ndarray, fraction: float, mode: str = "flip", seed: int = 0,
                   shift_voxels: int = 4) -> tuple[np.ndarray, list[int]]:
    """Spoil a fraction of the axial slices that hold foreground, as slice-wise tools do.

    Args:
        label: ``(Z, Y, X)`` integer labels; slices are ``label[z]``.
        fraction: share of the foreground slices to spoil (rounded to the nearest count).
        mode: ``"flip"`` mirrors the slice's label left-right (along X, a classic
            orientation slip); ``"shift"`` moves it by ``shift_voxels`` along X and Y
            (rows wrapping around); ``"empty"`` erases it (a skipped slice).
        seed: random seed for the choice of slices.
        shift_voxels: in-plane displacement for ``mode="shift"``.

    Returns:
        ``(new_label, spoiled_slice_indices)`` (indices sorted).

    Raises:
        ValueError: unknown ``mode``, ``fraction`` outside [0, 1] or a bad label array.
    """
    label = _check_label(label)
    if mode not in ("flip", "shift", "empty"):
        raise ValueError(f"mode must be 'flip', 'shift' or 'empty', got {mode!r}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    candidates = np.flatnonzero(label.reshape(len(label), -1).any(axis=1))
    count = int(np.floor(fraction * candidates.size + 0.5))
    chosen = sorted(np.random.default_rng(seed).choice(candidates, count, replace=False)
                    .tolist())
    out = label.copy()
    for z in chosen:
        if mode == "flip":
            out[z] = label[z, :, ::-1]
        elif mode == "shift":
            out[z] = np.roll(label[z], (shift_voxels, shift_voxels), axis=(0, 1))
        else:
            out[z] = 0
    return out, chosen


@dataclass(frozen=True)
class LabelNoise:
    """One kind and amount of annotation noise, applied case by case.

    Attributes:
        kind: one of `NOISE_KINDS`: ``"dilate"``/``"erode"`` (`perturb_boundary` by
            ``amount`` mm), ``"drop_components"`` (`drop_components`, each component of
            ``class_index`` dropped with probability ``amount``), ``"flip_slices"``,
            ``"shift_slices"``, ``"empty_slices"`` (`corrupt_slices` of a fraction
            ``amount`` of the foreground slices).
        amount: mm for boundary noise, else a probability or fraction in [0, 1].
        class_index: the class to corrupt for ``drop_components`` (default 2, lesions in
            the synthetic data) and boundary noise (None: every foreground class).
        seed: base seed; each case adds a stable hash of its id, so cases differ but a
            rerun reproduces them.
    """

    kind: str
    amount: float
    class_index: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise kind {self.kind!r}; choose one of "
                             f"{', '.join(NOISE_KINDS)}")
        if self.kind not in ("dilate", "erode") and not 0 <= self.amount <= 1:
            raise ValueError(f"{self.kind} needs amount in [0, 1], got {self.amount}")
        if self.kind in ("dilate", "erode") and self.amount < 0:
            raise ValueError(f"{self.kind} needs a distance in mm >= 0, got {self.amount}")

    def case_seed(self, case_id: str) -> int:
        """The seed used for one case: ``seed`` plus a CRC32 of its id."""
        return self.seed + zlib.crc32(case_id.encode("utf-8"))

    def apply(self, label: np.ndarray, spacing_mm: Sequence[float], case_id: str = ""
              ) -> np.ndarray:
        """The corrupted copy of one case's ``(Z, Y, X)`` label map (see the attributes)."""
        seed = self.case_seed(case_id)
        classes = None if self.class_index is None else [self.class_index]
        if self.kind == "dilate":
            return perturb_boundary(label, spacing_mm, self.amount, classes)
        if self.kind == "erode":
            return perturb_boundary(label, spacing_mm, -self.amount, classes)
        if self.kind == "drop_components":
            cls = 2 if self.class_index is None else self.class_index
            return drop_components(label, cls, self.amount, seed)[0]
        mode = self.kind.removesuffix("_slices")
        return corrupt_slices(label, self.amount, mode, seed)[0]

    def describe(self) -> str:
        """A short name for tables and plots, e.g. ``"dilate 2 mm"``."""
        if self.kind in ("dilate", "erode"):
            return f"{self.kind} {self.amount:g} mm"
        return f"{self.kind.replace('_', ' ')} {self.amount:.0%}"
