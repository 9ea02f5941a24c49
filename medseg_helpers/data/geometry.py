"""Where voxels lie in space: orientation codes, reorienting, index to physical position,
and checking that an image and its label share one grid.

Geometry follows `medseg_helpers.data.volume`: arrays ``(Z, Y, X)`` (or channel first),
spacing in mm in array order, origin and direction in LPS ``(x, y, z)``. Reading and
writing files is `medseg_helpers.data.io`.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from medseg_helpers.data.volume import Volume

PathLike = str | os.PathLike
_AXIS_OF_LETTER = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


class GeometryMismatchError(ValueError):
    """An image and its label do not share shape, spacing, origin or direction."""


def get_orientation(volume: Volume) -> str:
    """Orientation code of ``volume``, e.g. ``"LPS"`` for the identity direction.

    Letter ``n`` is the anatomical direction the n-th *index* axis ``(x, y, z)`` (the array
    axes reversed) points **towards**: ``"RAS"`` means x grows to the patient's Right, y
    to Anterior, z to Superior. This is ITK's ``DICOMOrient`` convention and nibabel's
    ``aff2axcodes``; beware that the older ITK enums (``RAI`` etc.) name where axes come
    *from*. Oblique directions get the closest code.
    """
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        volume.direction.flatten().tolist()
    )


def reorient_to(volume: Volume, orientation: str = "RAS") -> Volume:
    """Permute/flip axes so that the volume has ``orientation`` (see `get_orientation`).

    Voxels are not resampled: each voxel keeps its physical position, only the array
    layout, origin and direction change. Channels (``(C, Z, Y, X)``) are kept.

    Args:
        orientation: three letters, one from each pair L/R, P/A, I/S, e.g. ``"RAS"``.

    Raises:
        ValueError: an invalid code.
    """
    code = orientation.upper()
    if len(code) != 3 or sorted(_AXIS_OF_LETTER.get(c, -1) for c in code) != [0, 1, 2]:
        raise ValueError(
            f"invalid orientation {orientation!r}; use one letter from each of L/R, P/A, I/S"
        )
    return Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), code))


def index_to_physical(volume: Volume, index_zyx: np.ndarray) -> np.ndarray:
    """LPS position ``(x, y, z)`` in mm of array index ``(z, y, x)``; ``(..., 3)`` -> ``(..., 3)``.

    Same as SimpleITK's ``TransformContinuousIndexToPhysicalPoint`` after reversing the
    index: ``origin + direction @ (spacing_xyz * index_xyz)``.
    """
    index_xyz = np.asarray(index_zyx, dtype=np.float64)[..., ::-1]
    scaled = index_xyz * np.asarray(volume.spacing_mm[::-1])
    return np.asarray(volume.origin_mm) + scaled @ volume.direction.T


def check_geometry_match(
    image: Volume,
    label: Volume,
    image_source: PathLike,
    label_source: PathLike,
    atol: float = 1e-4,
) -> None:
    """Raise unless ``image`` and ``label`` share spatial shape, spacing, origin and direction.

    Args:
        atol: absolute tolerance for spacing/origin (mm) and direction cosines.

    Raises:
        GeometryMismatchError: naming the first differing property, both sources and
            both values.
    """
    pairs = {
        "shape (Z, Y, X)": (image.spatial_shape, label.spatial_shape),
        "spacing_mm (Z, Y, X)": (image.spacing_mm, label.spacing_mm),
        "origin_mm (LPS x, y, z)": (image.origin_mm, label.origin_mm),
        "direction": (image.direction, label.direction),
    }
    for name, (a, b) in pairs.items():
        if np.shape(a) != np.shape(b) or not np.allclose(a, b, atol=atol, rtol=0):
            raise GeometryMismatchError(
                f"{name} differs: image {image_source} has {_show(a)}, "
                f"label {label_source} has {_show(b)}"
            )


def _show(value: np.ndarray | tuple[float, ...]) -> list:
    """Numbers for a message: float32 noise and negative zeros rounded away."""
    array = np.asarray(value)
    return array.tolist() if array.dtype.kind in "iu" else (np.round(array, 6) + 0.0).tolist()
