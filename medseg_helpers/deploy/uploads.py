"""Parse an upload to the segmentation service safely, and encode the mask it answers with.

Uploads are recognised by content, never by file name: gzip magic ``1f 8b`` (a ``.nii.gz``),
a NIfTI-1 header (size 348, magic ``n+1`` at byte 344), or a zip (magic ``PK``) holding one
DICOM series. Every limit is checked before the voxels are decoded: gzip expansion, zip
member count and sizes (names from the archive never reach the file system), the number of
voxels, the grid the model will see (``check_grid``: e.g. after resampling to the training
spacing). Nothing is unpickled. A problem raises `ServiceError` with the HTTP status the
service answers with: 415 not a NIfTI/zip, 422 bad content (not 3D, an empty axis, too
many voxels, NaN/Inf voxels or geometry, unreadable). Messages never show server paths.
"""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_MAX_ZIP_MEMBERS = 4096
#: Called with ``(shape_xyz, spacing_xyz_mm)`` before the voxels are decoded; raises
#: `ServiceError` when the grid the model would see is over budget.
GridCheck = Callable[[tuple[int, int, int], tuple[float, float, float]], None]


class ServiceError(Exception):
    """An error with the HTTP status the service answers with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data``; 422 when it is corrupt or expands past ``limit`` bytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as err:
        raise ServiceError(422, f"corrupt gzip stream: {err}") from err
    if len(out) > limit:
        raise ServiceError(422, f"decompressed upload exceeds {limit} bytes "
                                "(max_voxels times 8 bytes plus the header)")
    return out


def sniff_format(data: bytes) -> str:
    """``"nifti"``, ``"nifti_gz"`` or ``"zip"`` from the first bytes; 415 otherwise."""
    if data[:2] == b"\x1f\x8b":
        return "nifti_gz"
    if data[:4] == b"PK\x03\x04":
        return "zip"
    if _is_nifti1(data):
        return "nifti"
    raise ServiceError(415, "upload is not a NIfTI-1 file (.nii/.nii.gz) or a zip of DICOM files "
                            "(checked by content: header size 348 and magic 'n+1' at byte 344)")


def _is_nifti1(data: bytes) -> bool:
    """A NIfTI-1 single-file header: magic ``n+1`` at byte 344, header size 348 (either endian)."""
    if len(data) < 352 or data[344:348] != b"n+1\x00":
        return False
    return 348 in (struct.unpack("<i", data[:4])[0], struct.unpack(">i", data[:4])[0])


def _check_shape(shape: tuple[int, ...], max_voxels: int) -> None:
    """422 unless ``shape`` is 3D, no axis empty, with at most ``max_voxels`` voxels."""
    if len(shape) != 3:
        raise ServiceError(422, f"expected a 3D volume (X, Y, Z); got shape {shape}")
    if min(shape) < 1:
        raise ServiceError(422, f"volume {shape} has an empty axis")
    if int(np.prod(shape)) > max_voxels:
        raise ServiceError(422, f"volume {shape} has {int(np.prod(shape))} voxels; "
                                f"the limit is {max_voxels}")


def _check_values(array: np.ndarray) -> np.ndarray:
    """``array`` as float32; 422 for a non-numeric voxel type or NaN/Inf voxels."""
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ServiceError(422, f"voxel type {array.dtype} is not a real scalar")
    array = array.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ServiceError(422, f"volume has {bad} NaN/Inf voxels")
    return array


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size ``(sx, sy, sz)`` mm of a 4x4 affine; 422 if it is not finite or a voxel
    has no extent (a NaN sform would otherwise become a NaN origin)."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ServiceError(422, "the image's affine (sform/qform) is not finite")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not (spacing > 0).all():
        raise ServiceError(422, f"the image's affine gives voxel size {tuple(spacing)} mm; "
                                "every axis needs a positive size")
    return tuple(float(v) for v in spacing)


def parse_nifti(data: bytes, max_voxels: int, check_grid: GridCheck | None = None
                ) -> tuple[np.ndarray, Any]:
    """``(array (X, Y, Z) float32, nibabel image)``; 415/422 on bad content.

    The shape, the affine and ``check_grid`` are checked from the header, before the voxels
    are decoded; gzip data may expand to at most 8 bytes per allowed voxel.
    """
    import nibabel as nib

    if data[:2] == b"\x1f\x8b":
        data = _gunzip_limited(data, max_voxels * 8 + 2**20)
    if not _is_nifti1(data):
        raise ServiceError(415, "content is not a single-file NIfTI-1 image (magic 'n+1')")
    try:
        image = nib.Nifti1Image.from_bytes(data)
        shape = tuple(int(n) for n in image.header.get_data_shape())
    except Exception as err:  # nibabel raises several types for a corrupt header
        raise ServiceError(422, f"cannot read NIfTI header: {_first_line(err)}") from err
    _check_shape(shape, max_voxels)
    spacing = spacing_of(image.affine)
    if check_grid is not None:
        check_grid(shape, spacing)
    try:
        array = np.asarray(image.dataobj)
    except Exception as err:  # truncated data, unsupported voxel type
        raise ServiceError(422, f"cannot read NIfTI voxels: {_first_line(err)}") from err
    return _check_values(array), image


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can span many lines)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def parse_dicom_zip(data: bytes, max_bytes: int, max_voxels: int,
                    check_grid: GridCheck | None = None, series_uid: str | None = None
                    ) -> tuple[np.ndarray, Any]:
    """Unzip one DICOM series safely (size, count, CRC, flat names) and read it.

    Args:
        data: the zip's bytes.
        max_bytes: the members may hold at most this many bytes in all.
        max_voxels: largest accepted series.
        check_grid: see `GridCheck` (called once the series' geometry is known).
        series_uid: SeriesInstanceUID to read when the zip holds several series.
    """
    import nibabel as nib

    from medseg_helpers.data.io import read_dicom_series

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, ValueError, EOFError) as err:
        raise ServiceError(422, f"corrupt zip: {_first_line(err)}") from err
    if not members or len(members) > _MAX_ZIP_MEMBERS:
        raise ServiceError(422, f"zip must hold 1..{_MAX_ZIP_MEMBERS} files; has {len(members)}")
    if sum(m.file_size for m in members) > max_bytes:
        raise ServiceError(422, f"zip expands past {max_bytes} bytes")
    with tempfile.TemporaryDirectory(prefix="medseg-dicom-") as folder:
        for index, member in enumerate(members):
            # Flat, generated names: no path from the archive ever reaches the file system.
            Path(folder, f"{index:05d}.dcm").write_bytes(_read_member(archive, member))
        try:
            volume = read_dicom_series(folder, series_uid)
        except (ValueError, OSError, RuntimeError) as err:
            reason = _first_line(err).replace(str(folder), "the zip")
            raise ServiceError(422, f"cannot read DICOM series: {reason}") from err
    if volume.array.ndim != 3:
        raise ServiceError(422, f"expected a 3D series; got shape {volume.array.shape}")
    array_xyz = np.transpose(volume.array, (2, 1, 0))
    _check_shape(array_xyz.shape, max_voxels)
    if check_grid is not None:
        check_grid(array_xyz.shape, spacing_of(volume.affine_ras))
    return _check_values(array_xyz), nib.Nifti1Image(array_xyz, volume.affine_ras)


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bytes:
    """A member's bytes, at most its declared size; 422 if it is longer, corrupt (CRC),
    encrypted or compressed with an unsupported method."""
    try:
        with archive.open(member) as src:
            payload = src.read(member.file_size + 1)
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError,
            ValueError) as err:
        raise ServiceError(422, f"corrupt zip member {member.filename!r}: "
                                f"{_first_line(err)}") from err
    if len(payload) > member.file_size:
        raise ServiceError(422, "zip member larger than its declared size")
    return payload


def mask_to_nifti_gz(pred_xyz: np.ndarray, image: Any) -> bytes:
    """``pred (X, Y, Z)`` as gzipped NIfTI bytes (uint8) with ``image``'s affine and header."""
    import nibabel as nib

    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    mask = nib.Nifti1Image(pred_xyz.astype(np.uint8), image.affine, header)
    return gzip.compress(mask.to_bytes(), compresslevel=6, mtime=0)
