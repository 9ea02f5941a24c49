"""Preprocessing: intensity normalisation and resampling to a target spacing.

Order used in the course (nnU-Net does the same): crop to the foreground
(`medseg_helpers.transforms.cropping`), resample to a target spacing, normalise intensities, then
augment (see `medseg_helpers.transforms.augment`).
Normalise *before* intensity augmentation, so that augmentation strengths mean the same
thing for every scan.

Intensity functions take any numeric array (``(Z, Y, X)``, ``(H, W)``, ...) and return
``float32``; they reject NaN/inf with a ``ValueError`` that counts them. Geometric
functions take and return `Volume` objects, so spacing, origin and direction stay right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from medseg_helpers.data.volume import Volume, check_spacing

#: CT display windows as ``(width, level)`` in Hounsfield units (HU).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}


def _as_float32(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as float32, raising ``ValueError`` if it holds NaN or inf."""
    array = np.asarray(image)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"image must be numeric; got dtype {array.dtype}")
    is_float = np.issubdtype(array.dtype, np.floating)
    array = array.astype(np.float32, copy=False)
    if not is_float:
        return array
    n_nan = int(np.count_nonzero(np.isnan(array)))
    if n_nan:
        raise ValueError(
            f"image contains {n_nan} NaN voxel(s) of {array.size}; fill them first "
            "(e.g. np.nan_to_num(image, nan=-1000.0) for CT air)"
        )
    n_inf = int(np.count_nonzero(np.isinf(array)))
    if n_inf:
        raise ValueError(f"image contains {n_inf} infinite voxel(s) of {array.size}")
    return array


def _check_percentiles(lower: float, upper: float) -> None:
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"need 0 <= lower < upper <= 100; got lower={lower}, upper={upper}")


def _masked_values(array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return array
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != array.shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {array.shape}")
    if not mask.any():
        raise ValueError("mask selects no voxels")
    return array[mask]


def apply_ct_window(
    image: np.ndarray,
    preset: str | None = None,
    *,
    width_hu: float | None = None,
    level_hu: float | None = None,
) -> np.ndarray:
    """Map a CT window (width/level, HU) linearly to [0, 1], clipping outside it.

    ``out = clip((image - (level - width / 2)) / width, 0, 1)``. Soft tissue (W400/L40)
    shows -160 HU as 0 and 240 HU as 1, so air (-1000) and bone (700) saturate. This is
    the continuous form used by most training pipelines, not DICOM's display formula.

    Args:
        image: any shape, CT in HU (integer or float).
        preset: a key of `WINDOW_PRESETS` ("soft_tissue", "lung", "bone", "brain").
        width_hu: window width, HU, > 0 (instead of ``preset``, with ``level_hu``).
        level_hu: window centre, HU.

    Returns:
        Same shape, float32 in [0, 1].

    Raises:
        ValueError: unknown preset, both or neither of preset and width/level given,
            width <= 0, or NaN/inf in ``image``.
    """
    if preset is not None:
        if width_hu is not None or level_hu is not None:
            raise ValueError("give either preset or width_hu/level_hu, not both")
        if preset not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {preset!r}; known: {sorted(WINDOW_PRESETS)}")
        width_hu, level_hu = WINDOW_PRESETS[preset]
    elif width_hu is None or level_hu is None:
        raise ValueError("give a preset or both width_hu and level_hu")
    if width_hu <= 0:
        raise ValueError(f"width_hu must be > 0; got {width_hu}")
    array = _as_float32(image)
    low = np.float32(level_hu - width_hu / 2.0)
    out = (array - low) / np.float32(width_hu)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def normalise_zscore(
    image: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-8
) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation (computed inside ``mask``).

    With a foreground mask (e.g. ``mask = ct > -500`` for the body, or ``mr > 0``), the
    large air/background region does not dominate the statistics. Every voxel is
    normalised with the in-mask statistics. A constant image (std < ``eps``) gives
    ``image - mean`` (zeros where the value equals the mean), never NaN.

    Args:
        image: any shape, any numeric dtype (MR arbitrary units, CT in HU).
        mask: optional, same shape, bool; voxels used for the mean and std.
        eps: standard deviations below this are treated as zero range.

    Returns:
        Same shape, float32; mean ~0 and std ~1 inside the mask.

    Raises:
        ValueError: NaN/inf in ``image``, mask shape differs, or mask is empty.
    """
    array = _as_float32(image)
    values = _masked_values(array, mask)
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    scale = std if std >= eps else 1.0
    return ((array - np.float32(mean)) / np.float32(scale)).astype(np.float32, copy=False)


def clip_percentiles(
    image: np.ndarray,
    lower: float = 0.5,
    upper: float = 99.5,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Clip intensities to the ``[lower, upper]`` percentiles (computed inside ``mask``).

    Removes outliers (metal in CT, bright vessels in MR) before z-score or min-max.
    Values keep their units (HU stay HU).

    Args:
        image: any shape, any numeric dtype.
        lower: lower percentile in [0, 100).
        upper: upper percentile in (lower, 100].
        mask: optional, same shape, bool; voxels used to compute the percentiles.

    Returns:
        Same shape, float32, in ``[p_lower, p_upper]``.

    Raises:
        ValueError: bad percentiles, NaN/inf in ``image``, mask shape differs or empty.
    """
    _check_percentiles(lower, upper)
    array = _as_float32(image)
    low, high = np.percentile(_masked_values(array, mask), [lower, upper])
    return np.clip(array, np.float32(low), np.float32(high))


def normalise_minmax(
    image: np.ndarray, lower_percentile: float = 0.5, upper_percentile: float = 99.5
) -> np.ndarray:
    """Robust min-max: map the ``[lower, upper]`` percentiles to [0, 1], clipping outside.

    With percentiles ``(0, 100)`` this is plain min-max. If the two percentiles are
    equal (a constant image, or one dominated by a single value) the result is all
    zeros: no division by zero, no NaN, no warning.

    Args:
        image: any shape, any numeric dtype.
        lower_percentile: in [0, 100).
        upper_percentile: in (lower_percentile, 100].

    Returns:
        Same shape, float32 in [0, 1].

    Raises:
        ValueError: bad percentiles or NaN/inf in ``image``.
    """
    _check_percentiles(lower_percentile, upper_percentile)
    array = _as_float32(image)
    low, high = (float(v) for v in np.percentile(array, [lower_percentile, upper_percentile]))
    if high - low <= 0.0:
        return np.zeros_like(array)
    out = (array - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def naive_max_normalise(image: np.ndarray) -> np.ndarray:
    """The seed outline's ``image / np.max(image)``, kept only to show how it fails.

    Do not use it. It divides by zero on an empty (all-zero) image, giving NaN with a
    numpy ``RuntimeWarning``; on CT (air -1000 HU, bone/metal up to 3000 HU) it maps
    values to roughly [-1, 1], and a single metal voxel squeezes soft tissue into a
    tiny band. Use `apply_ct_window`, `normalise_zscore` or `normalise_minmax` instead.

    Args:
        image: any shape, any numeric dtype.

    Returns:
        ``image.astype(float32) / max(image)``: NaN or inf when the maximum is 0.
    """
    return np.asarray(image).astype(np.float32) / np.max(image)


# --------------------------------------------------------------------------- geometry


def resampled_shape(shape: Sequence[int], spacing_mm: Sequence[float],
                    new_spacing_mm: Sequence[float]) -> tuple[int, ...]:
    """The grid size `resample_to_spacing` makes: ``max(1, floor(n * s / t + 0.5))`` per
    axis for size ``n``, spacing ``s`` and new spacing ``t`` (same axis order, mm).

    E.g. 40 slices of 2.5 mm at 1 mm: ``(100,)``. Cheap: lets a caller check the memory a
    resampling needs before doing it.
    """
    return tuple(max(1, int(np.floor(n * s / t + 0.5)))
                 for n, s, t in zip(shape, spacing_mm, new_spacing_mm, strict=True))


def resample_to_spacing(
    volume: Volume,
    spacing_mm: tuple[float, float, float],
    *,
    is_label: bool = False,
    interpolator: str = "linear",
    default_value: float | None = None,
) -> Volume:
    """Resample onto a grid with a new spacing and the same direction (SimpleITK).

    The new size is ``round(old_size * old_spacing / new_spacing)`` per axis (at least 1),
    and the new grid is centred on the old one, so both cover the same physical extent:
    their outer voxel *edges* line up whenever the size divides exactly (as in nnU-Net).
    The origin (centre of voxel ``[0, 0, 0]``) therefore moves by half the change in
    spacing, e.g. 3 mm slices resampled to 1 mm start 1 mm further in. Keeping the origin
    instead would shift the whole grid and push its last slice outside the scan.

    Args:
        volume: image ``(Z, Y, X)`` or ``(C, Z, Y, X)``, or a label ``(Z, Y, X)``.
        spacing_mm: target ``(sz, sy, sx)`` in mm, array-axis order like `Volume`.
        is_label: nearest-neighbour interpolation, dtype kept, values stay in their set.
        interpolator: for images, "linear" or "bspline" (cubic; can overshoot the
            input range). Ignored when ``is_label``.
        default_value: value for points outside the input; default 0 for labels and the
            image minimum for images (air for CT).

    Returns:
        A new `Volume`: images as float32, labels with the input dtype.

    Raises:
        ValueError: bad spacing, unknown interpolator, or a 4D label.
    """
    spacing = check_spacing(spacing_mm)
    interpolators = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}
    if is_label:
        if volume.array.ndim != 3:
            raise ValueError(f"a label must be (Z, Y, X); got shape {volume.array.shape}")
        method = sitk.sitkNearestNeighbor
    elif interpolator in interpolators:
        method = interpolators[interpolator]
    else:
        raise ValueError(
            f"interpolator must be one of {sorted(interpolators)}; got {interpolator!r}"
        )
    if default_value is None:
        default_value = 0.0 if is_label else float(np.min(volume.array))
    source = volume if is_label else replace(volume, array=volume.array.astype(np.float32))
    new_size_zyx = list(resampled_shape(volume.spatial_shape, volume.spacing_mm, spacing))
    image = source.to_sitk()
    old_centre_zyx = (np.array(volume.spatial_shape) - 1) * np.array(volume.spacing_mm) / 2
    new_centre_zyx = (np.array(new_size_zyx) - 1) * np.array(spacing) / 2
    origin_xyz = np.array(volume.origin_mm) + np.asarray(volume.direction) @ (
        old_centre_zyx - new_centre_zyx)[::-1]
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(new_size_zyx[::-1])
    resampler.SetOutputSpacing(spacing[::-1])
    resampler.SetOutputOrigin(tuple(float(v) for v in origin_xyz))
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetInterpolator(method)
    resampler.SetDefaultPixelValue(default_value)
    resampler.SetOutputPixelType(image.GetPixelID())
    return Volume.from_sitk(resampler.Execute(image))
