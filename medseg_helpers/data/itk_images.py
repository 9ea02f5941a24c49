"""`Volume` to and from the ITK images that files hold, channels included.

Every reader and writer of `medseg_helpers.data.io` goes through here, so all formats (and
DICOM series) share one rule for what a file's image means as a `Volume`: a 3D image is
``(Z, Y, X)``; a 4D image whose 4th axis is the channel (Decathlon Task01: ``(X, Y, Z, C)``
on disk), or a 3D image with vector pixels, is ``(C, Z, Y, X)`` with the 3D geometry. A 4D
image whose 4th axis is tilted into space is not channels and is refused, as are 2D and
5D+ images and geometry `Volume` refuses (e.g. zero spacing), with a `VolumeReadError`
naming the file. Writing does the reverse: ``(C, Z, Y, X)`` becomes a 4D image, channel
last on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg_helpers.data.file_checks import VolumeReadError
from medseg_helpers.data.volume import Volume


def volume_from_image(image: sitk.Image, source: Path) -> Volume:
    """The `Volume` of an image ITK read from ``source`` (named in errors).

    Raises:
        VolumeReadError: see `volume_from_parts`.
    """
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    geometry = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return volume_from_parts(array, image.GetDimension(), *geometry, source)


def volume_from_parts(array: np.ndarray, dimension: int, spacing: Sequence[float],
                      origin: Sequence[float], direction: Sequence[float],
                      source: Path) -> Volume:
    """(Z, Y, X) or channel-first voxels + ITK geometry of a 3D image or a 4D image whose
    4th axis is the channel (Decathlon) -> `Volume` with the 3D geometry.

    Args:
        array: voxels in ITK's array order, a channel axis first if any.
        dimension: the image's ITK dimension (3 or 4 are readable).
        spacing, origin: per ITK index axis ``(x, y, z[, c])``.
        direction: the ``dimension x dimension`` direction matrix, row by row.
        source: the file or folder read, named in errors.

    Raises:
        VolumeReadError: not a 3D image or a 4D image with channels as its 4th axis, or a
            geometry `Volume` refuses (e.g. zero spacing in the header).
    """
    direction = np.reshape(direction, (dimension, dimension))
    cross_terms = [*direction[3, :3], *direction[:3, 3]] if dimension == 4 else [0.0]
    mixed = np.abs(cross_terms).max() > 1e-6  # 4th axis tilted into space: not a channel
    if dimension not in (3, 4) or array.ndim not in (3, 4) or array.ndim < dimension or mixed:
        raise VolumeReadError(
            f"cannot read {source}: expected a 3D image or a 4D image with channels as its "
            f"4th axis; got a {dimension}D image with voxel array {array.shape}"
        )
    try:
        return Volume(array, spacing[2::-1], origin[:3], direction[:3, :3])
    except ValueError as err:  # e.g. zero spacing in the header
        raise VolumeReadError(f"cannot read {source}: {err}") from err


def image_from_volume(volume: Volume) -> sitk.Image:
    """`Volume` -> 3D image, or a 4D image (channel = 4th index axis) for ``(C, Z, Y, X)``.

    ``bool`` voxels become ``uint8`` and ``float16`` become ``float32``: SimpleITK has no
    such pixel types.
    """
    array = volume.array
    if array.dtype == np.bool_ or array.dtype == np.float16:
        array = array.astype(np.uint8 if array.dtype == np.bool_ else np.float32)
    if array.ndim == 3:
        return volume.with_array(array).to_sitk()
    geometry = (volume.spacing_mm, volume.origin_mm, volume.direction)
    return sitk.JoinSeries([Volume(channel, *geometry).to_sitk() for channel in array])
