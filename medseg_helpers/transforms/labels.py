"""Label maps: checking, remapping, one-hot encoding and removing small components.

A label map (``label``, or ``pred`` for a prediction) is an integer array of class
indices in ``[0, num_classes)``, 0 = background, shape ``(Z, Y, X)`` or ``(H, W)``.
Connected components use `scipy.ndimage.label`; ``connectivity`` is 1 for face
neighbours (6 in 3D, 4 in 2D) up to ``ndim`` for all neighbours (26 in 3D, 8 in 2D).
The default is ``ndim`` (MONAI's), as in `medseg_helpers.transforms.postprocess`, which
keeps the largest component of a class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from scipy import ndimage

from medseg_helpers.data.volume import check_spacing


def _as_int_label(label: np.ndarray) -> np.ndarray:
    """Return ``label`` with an integer dtype; float labels must hold whole numbers."""
    label = np.asarray(label)
    if np.issubdtype(label.dtype, np.integer) or label.dtype == bool:
        return label.astype(np.int64) if label.dtype == bool else label
    if np.issubdtype(label.dtype, np.floating):
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise ValueError(
                "label has non-integer values (linear interpolation of a label?); "
                "resample labels with nearest neighbour"
            )
        return label.astype(np.int64)
    raise TypeError(f"label must be an integer array; got dtype {label.dtype}")


def count_label_values(label: np.ndarray) -> dict[float, int]:
    """Voxel count per distinct value, e.g. ``{0: 9800, 1: 180, 2: 20}``.

    Args:
        label: any shape, any numeric dtype (floats allowed, to spot interpolated labels).

    Returns:
        ``{value: count}`` sorted by value; integer-valued keys are Python ``int``.
    """
    values, counts = np.unique(np.asarray(label), return_counts=True)
    return {
        (int(v) if float(v).is_integer() else float(v)): int(c)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True)
    }


def check_label_values(label: np.ndarray, allowed: Iterable[int]) -> None:
    """Raise if ``label`` holds a value outside ``allowed`` (e.g. ``range(num_classes)``).

    Args:
        label: any shape, any numeric dtype.
        allowed: the declared label values, e.g. ``dataset.json``'s label indices.

    Raises:
        ValueError: listing each unexpected value with its voxel count.
    """
    allowed_set = {float(v) for v in allowed}
    unexpected = {v: c for v, c in count_label_values(label).items() if float(v) not in allowed_set}
    if unexpected:
        listed = ", ".join(f"{v}: {c} voxel(s)" for v, c in unexpected.items())
        raise ValueError(
            f"label has values outside the allowed set {sorted(allowed_set)}: {listed}"
        )


def remap_labels(label: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Replace label values: ``mapping[old] = new``; values not in ``mapping`` are kept.

    Example: ``remap_labels(label, {2: 1})`` merges class 2 into class 1;
    ``{255: 1}`` turns a 0/255 mask exported by an image editor into 0/1.

    Args:
        label: integer array, any shape.
        mapping: ``{old_value: new_value}`` (integers).

    Returns:
        Same shape; the input dtype if it can hold the new values, else a wider one.
    """
    label = _as_int_label(label)
    values, inverse = np.unique(label, return_inverse=True)
    new_values = np.array([int(mapping.get(int(v), int(v))) for v in values], dtype=np.int64)
    dtype = np.result_type(
        label.dtype,
        np.min_scalar_type(int(new_values.min(initial=0))),
        np.min_scalar_type(int(new_values.max(initial=0))),
    )
    return new_values.astype(dtype)[inverse].reshape(label.shape)


def encode_one_hot(label: np.ndarray, num_classes: int, dtype: type = np.float32) -> np.ndarray:
    """One channel per class: ``(...) -> (C, ...)``, channel ``c`` is ``label == c``.

    Args:
        label: integer array ``(Z, Y, X)`` or ``(H, W)``, values in ``[0, num_classes)``.
        num_classes: ``C``, including background.
        dtype: output dtype (float32 for losses, uint8 or bool to save memory).

    Returns:
        ``(C, *label.shape)`` of 0/1.

    Raises:
        ValueError: if a value lies outside ``[0, num_classes)``.
    """
    label = _as_int_label(label)
    check_label_values(label, range(num_classes))
    classes = np.arange(num_classes).reshape((num_classes,) + (1,) * label.ndim)
    return (label[np.newaxis] == classes).astype(dtype)


def decode_one_hot(one_hot: np.ndarray) -> np.ndarray:
    """Inverse of `encode_one_hot` (argmax over the channel axis; also turns probs into pred).

    Args:
        one_hot: ``(C, ...)`` one-hot, probabilities or logits.

    Returns:
        ``(...)`` int64 class indices; ties go to the lowest class.
    """
    one_hot = np.asarray(one_hot)
    if one_hot.ndim < 2:
        raise ValueError(f"expected (C, ...) with a channel axis; got shape {one_hot.shape}")
    return np.argmax(one_hot, axis=0).astype(np.int64)


def _classes_to_process(label: np.ndarray, classes: Iterable[int] | None) -> list[int]:
    if classes is None:
        return [int(c) for c in np.unique(label) if c != 0]
    return [int(c) for c in classes]


def connectivity_structure(ndim: int, connectivity: int | None) -> np.ndarray:
    """The `scipy.ndimage.label` neighbourhood for ``connectivity``: voxels at most this
    many orthogonal steps apart touch (1: faces; ``ndim``: faces, edges and corners;
    None: ``ndim``, MONAI's default).

    Raises:
        ValueError: ``connectivity`` outside ``[1, ndim]``.
    """
    connectivity = ndim if connectivity is None else connectivity
    if not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be in [1, {ndim}] for {ndim}D; got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def remove_small_components(
    label: np.ndarray,
    min_voxels: int | None = None,
    *,
    min_volume_mm3: float | None = None,
    spacing_mm: tuple[float, ...] | None = None,
    classes: Iterable[int] | None = None,
    connectivity: int | None = None,
) -> np.ndarray:
    """Set connected components smaller than a threshold to 0 (background).

    Give either ``min_voxels`` or ``min_volume_mm3`` with ``spacing_mm`` (one value per
    array axis, e.g. ``(sz, sy, sx)``): a component is removed when
    ``voxels * prod(spacing_mm) < min_volume_mm3``.

    Args:
        label: integer array ``(Z, Y, X)`` or ``(H, W)``.
        min_voxels: components with fewer voxels are removed.
        min_volume_mm3: components with a smaller volume (mm³) are removed.
        spacing_mm: voxel size per array axis, mm (needed with ``min_volume_mm3``).
        classes: classes to clean; default every nonzero class present.
        connectivity: 1 (faces) to ``label.ndim`` (faces, edges and corners); None:
            ``label.ndim``.

    Returns:
        A cleaned copy, same shape and dtype.

    Raises:
        ValueError: if not exactly one threshold is given, or spacing is missing/wrong
            (`check_spacing`).
    """
    label = _as_int_label(label)
    if (min_voxels is None) == (min_volume_mm3 is None):
        raise ValueError("give exactly one of min_voxels or min_volume_mm3")
    if min_volume_mm3 is not None:
        if spacing_mm is None:
            raise ValueError("min_volume_mm3 needs spacing_mm (mm per array axis)")
        voxel_mm3 = float(np.prod(check_spacing(spacing_mm, label.ndim)))
    structure = connectivity_structure(label.ndim, connectivity)
    out = label.copy()
    for cls in _classes_to_process(label, classes):
        components, n = ndimage.label(label == cls, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel())
        if min_voxels is not None:
            small = sizes < min_voxels
        else:
            small = sizes * voxel_mm3 < min_volume_mm3
        small[0] = False
        out[small[components]] = 0
    return out
