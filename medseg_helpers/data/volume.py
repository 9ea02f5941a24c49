"""`Volume`: a voxel array that carries its geometry.

Axis conventions (read once, used everywhere in the course):

* ``Volume.array`` is in **array order** ``(Z, Y, X)`` for a 3D scan, or
  ``(C, Z, Y, X)`` for a multi-channel scan (e.g. the four MR sequences of
  Decathlon Task01). This is the order ``SimpleITK.GetArrayFromImage`` returns and
  the one nnU-Net uses: ``array[k]`` is the k-th axial slice for an axial scan.
* ``Volume.spacing_mm`` follows the array's spatial axes: ``(sz, sy, sx)`` in mm.
* ``Volume.origin_mm`` is the physical position of voxel ``[0, 0, 0]`` in the
  patient's **LPS** frame (DICOM/ITK convention), as ``(x, y, z)`` in mm.
* ``Volume.direction`` is the 3x3 ITK direction matrix: column ``j`` is the unit
  vector (LPS) along image index axis ``j``, where index axes are ``(i, j, k) =
  (x, y, z)``, i.e. the array axes reversed.

nibabel uses the other order: its arrays are ``(X, Y, Z)`` and its affine maps
``(i, j, k)`` to **RAS** mm. `Volume.affine_ras` and `Volume.from_nibabel` convert.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def check_spacing(spacing_mm: Iterable[float], ndim: int = 3) -> tuple[float, ...]:
    """``spacing_mm`` as a tuple of ``ndim`` floats, after checking it is a voxel size.

    The one spacing check of the package: `Volume`, resampling, the phantoms, label
    noise, surface metrics and component removal all call it, so a bad spacing reads the
    same everywhere.

    Args:
        spacing_mm: voxel size per array axis in mm, e.g. ``(sz, sy, sx)`` for a
            ``(Z, Y, X)`` array.
        ndim: how many values are expected (the array's spatial dimensions).

    Returns:
        ``ndim`` floats, each finite and > 0 (mm).

    Raises:
        ValueError: not ``ndim`` numbers, or one is zero, negative, NaN or infinite, e.g.
            ``spacing_mm must be 3 finite positive numbers in mm, one per array axis;
            got (1.0, 0.0, 1.0)``.
    """
    try:
        spacing = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) != ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be {ndim} finite positive numbers in mm, one per "
                         f"array axis; got {spacing_mm!r}")
    return spacing


@dataclass(frozen=True)
class Volume:
    """A 3D (or channel-first 4D) voxel array with its physical geometry.

    Attributes:
        array: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` voxel values (any numeric dtype).
        spacing_mm: voxel size per spatial array axis ``(sz, sy, sx)``, mm, all > 0.
        origin_mm: LPS position of voxel ``[0, 0, 0]``, ``(x, y, z)``, mm.
        direction: ``(3, 3)`` ITK direction cosines (columns = index axes x, y, z).
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim not in (3, 4):
            raise ValueError(
                f"Volume.array must be (Z, Y, X) or (C, Z, Y, X); got shape {array.shape}"
            )
        spacing = check_spacing(self.spacing_mm)
        origin = tuple(float(o) for o in self.origin_mm)
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise ValueError(f"origin_mm must be three finite numbers; got {self.origin_mm}")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", origin)
        object.__setattr__(self, "direction", direction)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``, whether or not there is a channel axis."""
        return tuple(self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        """1 for a 3D array, ``C`` for a ``(C, Z, Y, X)`` array."""
        return 1 if self.array.ndim == 3 else self.array.shape[0]

    @property
    def affine_ras(self) -> np.ndarray:
        """``(4, 4)`` nibabel-style affine: index ``(i, j, k) = (x, y, z)`` to RAS mm."""
        spacing_xyz = np.array(self.spacing_mm[::-1])
        affine = np.eye(4)
        affine[:3, :3] = _LPS_TO_RAS @ self.direction @ np.diag(spacing_xyz)
        affine[:3, 3] = _LPS_TO_RAS @ np.array(self.origin_mm)
        return affine

    def with_array(self, array: np.ndarray) -> Volume:
        """Same geometry, new voxels (e.g. a prediction for this scan).

        Raises:
            ValueError: if the spatial shape differs from this volume's.
        """
        array = np.asarray(array)
        if array.shape[-3:] != self.spatial_shape:
            raise ValueError(
                f"new array spatial shape {array.shape[-3:]} != volume spatial shape "
                f"{self.spatial_shape}"
            )
        return replace(self, array=array)

    def same_geometry(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when shape, spacing, origin and direction agree within ``atol`` (mm)."""
        return (
            self.spatial_shape == other.spatial_shape
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=atol)
            and np.allclose(self.origin_mm, other.origin_mm, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def to_sitk(self) -> sitk.Image:
        """Convert to a SimpleITK image (a 4D array becomes a vector image)."""
        is_vector = self.array.ndim == 4
        array = np.moveaxis(self.array, 0, -1) if is_vector else self.array
        image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=is_vector)
        image.SetSpacing(self.spacing_mm[::-1])
        image.SetOrigin(self.origin_mm)
        image.SetDirection(self.direction.flatten().tolist())
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """Build from a 3D SimpleITK image (scalar or vector pixels).

        Raises:
            ValueError: if the image is not 3D.
        """
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image; got {image.GetDimension()}D")
        array = sitk.GetArrayFromImage(image)
        if image.GetNumberOfComponentsPerPixel() > 1:
            array = np.moveaxis(array, -1, 0)
        return cls(
            array=array,
            spacing_mm=tuple(image.GetSpacing())[::-1],
            origin_mm=tuple(image.GetOrigin()),
            direction=np.array(image.GetDirection()).reshape(3, 3),
        )

    @classmethod
    def from_affine_ras(cls, array_xyz: np.ndarray, affine: np.ndarray) -> Volume:
        """Build from a nibabel-order array ``(X, Y, Z[, C])`` and its RAS affine.

        Shear is not representable in ITK geometry and raises ``ValueError``.
        """
        array_xyz = np.asarray(array_xyz)
        if array_xyz.ndim not in (3, 4):
            raise ValueError(f"expected (X, Y, Z) or (X, Y, Z, C); got {array_xyz.shape}")
        linear_lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)[:3, :3]
        spacing_xyz = np.linalg.norm(linear_lps, axis=0)
        direction = linear_lps / spacing_xyz
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise ValueError("affine has shear; it cannot be represented as spacing + direction")
        origin = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)[:3, 3]
        if array_xyz.ndim == 3:
            array = np.transpose(array_xyz, (2, 1, 0))
        else:
            array = np.transpose(array_xyz, (3, 2, 1, 0))
        return cls(array, tuple(spacing_xyz[::-1]), tuple(origin), direction)
