"""Post-processing of predicted label maps: keep the largest connected component.

A network that sees one 2D slice at a time often leaves small islands of false positives
away from the organ. When the anatomy says "one organ per patient", keeping only the
largest connected component removes them. It is a prior, not a free lunch: a structure
that may have several parts (lesions, metastases) loses all but the largest, which
`notebooks/06_evaluation.ipynb` measures. Equivalent to MONAI's
``KeepLargestConnectedComponent`` on a label map (checked in
``tests/test_postprocess.py``).

Connectivity defaults to MONAI's: voxels touching by a face, an edge or a corner are
one component (26 neighbours in 3D, 8 in 2D); ``connectivity=1`` counts faces only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest_component", "largest_component_mask"]


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
    connectivity = mask.ndim if connectivity is None else connectivity
    if not 1 <= connectivity <= mask.ndim:
        raise ValueError(f"connectivity must be in [1, {mask.ndim}] for a {mask.ndim}D mask, "
                         f"got {connectivity}")
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    components, count = ndimage.label(mask, structure=structure)
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
