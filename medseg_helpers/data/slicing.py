"""3D to 2D slicing, and merging 2D slices (or 2D predictions) back into a `Volume`.

The seed outline's ``slice_3d_image`` / ``merge_slices_to_3d`` lose the geometry: the
merged array has no spacing, origin or direction, so a saved prediction does not
overlay the scan. Here `slice_volume` returns a `SliceInfo` that remembers the source
geometry, and `merge_slices` rebuilds a `Volume` that matches it exactly.

Axes are spatial array axes of `Volume.array`: 0 = Z, 1 = Y, 2 = X. For an axial scan,
axis 0 gives axial slices, axis 1 coronal and axis 2 sagittal ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medseg_helpers.data.volume import Volume


@dataclass(frozen=True)
class SliceInfo:
    """What `merge_slices` needs to rebuild the source `Volume`.

    Attributes:
        axis: spatial axis sliced along (0 = Z, 1 = Y, 2 = X).
        spatial_shape: source ``(Z, Y, X)``.
        spacing_mm: source ``(sz, sy, sx)``, mm.
        origin_mm: source LPS origin ``(x, y, z)``, mm.
        direction: source ITK direction, the ``(3, 3)`` matrix as 9 floats, row-major.

    All fields are plain ints/floats in tuples, so ``dataclasses.asdict(info)`` can be
    stored as JSON next to cached slices and ``SliceInfo(**record)`` rebuilds it.
    """

    axis: int
    spatial_shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "axis", int(self.axis))
        object.__setattr__(self, "spatial_shape", tuple(int(n) for n in self.spatial_shape))
        for name in ("spacing_mm", "origin_mm", "direction"):
            object.__setattr__(self, name, tuple(float(v) for v in np.ravel(getattr(self, name))))

    @property
    def num_slices(self) -> int:
        """Number of slices ``N``: the source size along ``axis``."""
        return self.spatial_shape[self.axis]

    @property
    def slice_shape(self) -> tuple[int, int]:
        """``(H, W)``: the two other spatial sizes, in array order."""
        return tuple(n for i, n in enumerate(self.spatial_shape) if i != self.axis)  # type: ignore[return-value]

    @property
    def in_plane_spacing_mm(self) -> tuple[float, float]:
        """Pixel size ``(sh, sw)`` in mm of each slice (for mm-aware 2D metrics)."""
        return tuple(s for i, s in enumerate(self.spacing_mm) if i != self.axis)  # type: ignore[return-value]


def slice_volume(volume: Volume, axis: int = 0) -> tuple[np.ndarray, SliceInfo]:
    """Cut a volume into 2D slices along a spatial axis.

    Args:
        volume: ``(Z, Y, X)`` or ``(C, Z, Y, X)``.
        axis: spatial axis, 0 (Z), 1 (Y) or 2 (X).

    Returns:
        ``(slices, info)``: ``slices`` is ``(N, H, W)`` for a 3D volume or ``(N, C, H, W)``
        for a channel-first one (``N`` = size along ``axis``, ``(H, W)`` the other two
        axes in array order), same dtype. A view of ``volume.array`` (no copy;
        non-contiguous for axes 1 and 2): copy it before writing into it.

    Raises:
        ValueError: if ``axis`` is not 0, 1 or 2.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0 (Z), 1 (Y) or 2 (X); got {axis}")
    array = volume.array
    has_channels = array.ndim == 4
    slices = np.moveaxis(array, axis + int(has_channels), 0)
    info = SliceInfo(
        axis=axis,
        spatial_shape=volume.spatial_shape,
        spacing_mm=volume.spacing_mm,
        origin_mm=volume.origin_mm,
        direction=volume.direction.ravel(),
    )
    return slices, info


def merge_slices(slices: np.ndarray | Sequence[np.ndarray], info: SliceInfo) -> Volume:
    """Stack 2D slices back into a `Volume` with the source geometry.

    Works for the slices themselves (exact round trip) and for 2D predictions of any
    dtype: ``(N, H, W)`` integer ``pred`` gives a ``(Z, Y, X)`` label volume, and
    ``(N, C, H, W)`` float ``probs`` give a ``(C, Z, Y, X)`` volume.

    Args:
        slices: ``(N, H, W)`` or ``(N, C, H, W)`` array, or a sequence of ``N`` arrays of
            shape ``(H, W)`` or ``(C, H, W)``, in slice order.
        info: the `SliceInfo` returned by `slice_volume`.

    Returns:
        A `Volume` with ``info``'s spacing, origin and direction; dtype of ``slices``.

    Raises:
        ValueError: if the number or shape of slices does not match ``info`` (both named).
    """
    stacked = np.stack(slices) if not isinstance(slices, np.ndarray) else slices
    if stacked.ndim not in (3, 4):
        raise ValueError(f"expected (N, H, W) or (N, C, H, W) slices; got shape {stacked.shape}")
    expected = (info.num_slices, *info.slice_shape)
    got = (stacked.shape[0], *stacked.shape[-2:])
    if got != expected:
        raise ValueError(
            f"slices (N, H, W) = {got} do not match the source along axis {info.axis}: "
            f"expected {expected} from spatial shape {info.spatial_shape}"
        )
    has_channels = stacked.ndim == 4
    array = np.moveaxis(stacked, 0, info.axis + int(has_channels))
    direction = np.asarray(info.direction).reshape(3, 3)
    return Volume(np.ascontiguousarray(array), info.spacing_mm, info.origin_mm, direction)
