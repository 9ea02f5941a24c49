"""Cropping to the foreground and padding, both undoable, with geometry kept.

Functions take and return `Volume` objects: after a crop or a pad every remaining voxel
keeps its physical (LPS, mm) position, because the origin moves with the first voxel.
`CropBox` and `PadWidths` record what was done (JSON-ready) so predictions made on the
cropped or padded grid can be put back onto the source grid (`undo_crop`, `undo_pad`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg_helpers.data.geometry import index_to_physical
from medseg_helpers.data.volume import Volume


@dataclass(frozen=True)
class CropBox:
    """A crop ``array[..., start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]``.

    Attributes:
        start: first kept index per spatial axis ``(z, y, x)``.
        stop: one past the last kept index ``(z, y, x)``.
        source_shape: spatial shape ``(Z, Y, X)`` before cropping (to undo it).

    Fields are stored as tuples of int, so ``dataclasses.asdict`` gives a JSON record.
    """

    start: tuple[int, ...]
    stop: tuple[int, ...]
    source_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("start", "stop", "source_shape"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

    @property
    def slices(self) -> tuple[slice, ...]:
        """Spatial slices; index an array with ``array[(..., *box.slices)]``."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))


@dataclass(frozen=True)
class PadWidths:
    """Voxels added before and after each spatial axis ``(z, y, x)`` (tuples of int)."""

    before: tuple[int, ...]
    after: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("before", "after"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))


def _check_pair(image: Volume, label: Volume | None) -> None:
    if label is not None and not image.same_geometry(label):
        raise ValueError(
            f"image and label geometry differ: shapes {image.spatial_shape} vs "
            f"{label.spatial_shape}, spacing {image.spacing_mm} vs {label.spacing_mm}, "
            f"origin {image.origin_mm} vs {label.origin_mm}"
        )


def compute_foreground_box(mask: np.ndarray, margin: int | tuple[int, int, int] = 0) -> CropBox:
    """Bounding box of the nonzero voxels of ``mask``, grown by ``margin``, clipped to it.

    Args:
        mask: ``(Z, Y, X)``; nonzero means foreground.
        margin: voxels added on each side, one int or one per axis ``(z, y, x)``.

    Returns:
        The `CropBox`.

    Raises:
        ValueError: if ``mask`` is not 3D or has no nonzero voxel.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (Z, Y, X); got shape {mask.shape}")
    coords = np.argwhere(mask)
    if coords.size == 0:
        raise ValueError("mask has no foreground voxels; nothing to crop to")
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (3,))
    start = np.maximum(coords.min(axis=0) - margins, 0)
    stop = np.minimum(coords.max(axis=0) + 1 + margins, mask.shape)
    return CropBox(start, stop, mask.shape)


def apply_crop(volume: Volume, box: CropBox) -> Volume:
    """Crop a `Volume` to ``box``; the origin moves so voxels keep their physical position.

    Raises:
        ValueError: if the volume's spatial shape is not ``box.source_shape``.
    """
    if volume.spatial_shape != tuple(box.source_shape):
        raise ValueError(f"volume shape {volume.spatial_shape} != box source {box.source_shape}")
    return Volume(
        np.ascontiguousarray(volume.array[(..., *box.slices)]),
        volume.spacing_mm,
        _origin_at(volume, box.start),
        volume.direction,
    )


def crop_to_foreground(
    image: Volume,
    label: Volume | None = None,
    *,
    margin: int | tuple[int, int, int] = 0,
    mask: np.ndarray | None = None,
) -> tuple[Volume, Volume | None, CropBox]:
    """Crop image (and label) jointly to the bounding box of the foreground.

    Args:
        image: ``(Z, Y, X)`` or ``(C, Z, Y, X)``.
        label: optional ``(Z, Y, X)`` with the image's geometry.
        margin: voxels kept around the foreground, per side.
        mask: ``(Z, Y, X)`` foreground; default: voxels where any image channel is
            nonzero. For raw CT pass e.g. ``ct.array > -500`` (body, not air).

    Returns:
        ``(image, label or None, box)``; undo with `undo_crop`.

    Raises:
        ValueError: geometry mismatch or empty foreground.
    """
    _check_pair(image, label)
    if mask is None:
        mask = image.array != 0 if image.array.ndim == 3 else np.any(image.array != 0, axis=0)
    box = compute_foreground_box(mask, margin)
    cropped_label = None if label is None else apply_crop(label, box)
    return apply_crop(image, box), cropped_label, box


def undo_crop(volume: Volume, box: CropBox, fill_value: float = 0) -> Volume:
    """Put a cropped volume (e.g. a prediction) back into the uncropped grid.

    Args:
        volume: the crop, spatial shape ``box.stop - box.start``.
        box: the `CropBox` returned by the crop.
        fill_value: value outside the box (0 = background for labels).

    Returns:
        A `Volume` with spatial shape ``box.source_shape`` and the original origin.
    """
    before = np.asarray(box.start)
    after = np.asarray(box.source_shape) - np.asarray(box.stop)
    return _pad(volume, PadWidths(before, after), fill_value)


def _pad(volume: Volume, pad: PadWidths, fill_value: float) -> Volume:
    widths = [(0, 0)] * (volume.array.ndim - 3) + list(zip(pad.before, pad.after, strict=True))
    array = np.pad(volume.array, widths, mode="constant", constant_values=fill_value)
    origin = _origin_at(volume, -np.asarray(pad.before))
    return Volume(array, volume.spacing_mm, origin, volume.direction)


def pad_to_shape(
    image: Volume,
    label: Volume | None = None,
    *,
    shape: tuple[int, int, int],
    image_fill: float | None = None,
    label_fill: int = 0,
) -> tuple[Volume, Volume | None, PadWidths]:
    """Pad image (and label) jointly, centred, to at least ``shape``; never crops.

    Args:
        image: ``(Z, Y, X)`` or ``(C, Z, Y, X)``.
        label: optional ``(Z, Y, X)`` with the image's geometry.
        shape: minimum spatial shape ``(Z, Y, X)``; axes already larger are unchanged.
        image_fill: value added to the image; default its minimum (air for raw CT,
            0 for a [0, 1] image).
        label_fill: value added to the label (0 = background).

    Returns:
        ``(image, label or None, pad)``; undo with `undo_pad`.
    """
    _check_pair(image, label)
    missing = np.maximum(np.asarray(shape, dtype=int) - np.asarray(image.spatial_shape), 0)
    before = missing // 2
    pad = PadWidths(before, missing - before)
    fill = float(np.min(image.array)) if image_fill is None else image_fill
    padded_label = None if label is None else _pad(label, pad, label_fill)
    return _pad(image, pad, fill), padded_label, pad


def pad_to_multiple(
    image: Volume,
    label: Volume | None = None,
    *,
    multiple: int | tuple[int, int, int] = 16,
    image_fill: float | None = None,
    label_fill: int = 0,
) -> tuple[Volume, Volume | None, PadWidths]:
    """Pad so each spatial size is a multiple of ``multiple`` (e.g. 2**depth for a U-Net).

    Same arguments and returns as `pad_to_shape`, with the target shape
    ``ceil(shape / multiple) * multiple``.
    """
    multiples = np.broadcast_to(np.asarray(multiple, dtype=int), (3,))
    if np.any(multiples < 1):
        raise ValueError(f"multiple must be >= 1; got {multiple}")
    target = -(-np.asarray(image.spatial_shape) // multiples) * multiples
    return pad_to_shape(
        image, label, shape=tuple(map(int, target)), image_fill=image_fill, label_fill=label_fill
    )


def undo_pad(volume: Volume, pad: PadWidths) -> Volume:
    """Remove the padding described by ``pad`` (e.g. from a prediction); origin restored."""
    stop = np.asarray(volume.spatial_shape) - np.asarray(pad.after)
    return apply_crop(volume, CropBox(pad.before, stop, volume.spatial_shape))


def _origin_at(volume: Volume, index_zyx) -> tuple[float, float, float]:
    """LPS position (mm) of array index ``(z, y, x)`` (may be negative): a new origin."""
    return tuple(float(v) for v in index_to_physical(volume, np.asarray(index_zyx)))
