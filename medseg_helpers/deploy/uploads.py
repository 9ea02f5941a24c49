"""Parse an upload to the segmentation service safely, and encode the mask it answers with.

Uploads are recognised by content, never by file name: gzip magic ``1f 8b`` (a ``.nii.gz``),
a NIfTI-1 header (size 348, magic ``n+1`` at byte 344), or a zip (magic ``PK``) holding one
DICOM series. Every limit is checked before the voxels are decoded: gzip expansion, zip
member count and sizes (names from the archive never reach the file system), the number of
voxels. Nothing is unpickled. A problem raises `ServiceError` with the HTTP status the
service answers with: 415 not a NIfTI/zip, 422 bad content (not 3D, too many voxels,
NaN/Inf, unreadable).
"""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

_MAX_ZIP_MEMBERS = 4096


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
    """422 unless ``shape`` is 3D with at most ``max_voxels`` voxels."""
    if len(shape) != 3:
        raise ServiceError(422, f"expected a 3D volume (X, Y, Z); got shape {shape}")
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


def parse_nifti(data: bytes, max_voxels: int) -> tuple[np.ndarray, Any]:
    """``(array (X, Y, Z) float32, nibabel image)``; 415/422 on bad content."""
    import nibabel as nib

    if data[:2] == b"\x1f\x8b":
        data = _gunzip_limited(data, max_voxels * 8 + 2**20)
    if not _is_nifti1(data):
        raise ServiceError(415, "content is not a single-file NIfTI-1 image (magic 'n+1')")
    try:
        image = nib.Nifti1Image.from_bytes(data)
        _check_shape(tuple(image.header.get_data_shape()), max_voxels)
        array = np.asarray(image.dataobj)
    except ServiceError:
        raise
    except Exception as err:  # nibabel raises several types for truncated/corrupt data
        raise ServiceError(422, f"cannot read NIfTI: {err}") from err
    return _check_values(array), image


def parse_dicom_zip(data: bytes, max_bytes: int, max_voxels: int) -> tuple[np.ndarray, Any]:
    """Unzip one DICOM series safely (size, count, flat names) and read it."""
    import nibabel as nib

    from medseg_helpers.data.io import read_dicom_series

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except zipfile.BadZipFile as err:
        raise ServiceError(422, f"corrupt zip: {err}") from err
    if not members or len(members) > _MAX_ZIP_MEMBERS:
        raise ServiceError(422, f"zip must hold 1..{_MAX_ZIP_MEMBERS} files; has {len(members)}")
    if sum(m.file_size for m in members) > max_bytes:
        raise ServiceError(422, f"zip expands past {max_bytes} bytes")
    with tempfile.TemporaryDirectory(prefix="medseg-dicom-") as folder:
        for index, member in enumerate(members):
            # Flat, generated names: no path from the archive ever reaches the file system.
            with archive.open(member) as src:
                payload = src.read(member.file_size + 1)
            if len(payload) > member.file_size:
                raise ServiceError(422, "zip member larger than its declared size")
            Path(folder, f"{index:05d}.dcm").write_bytes(payload)
        try:
            volume = read_dicom_series(folder)
        except (ValueError, OSError) as err:
            raise ServiceError(422, f"cannot read DICOM series: {err}") from err
    if volume.array.ndim != 3:
        raise ServiceError(422, f"expected a 3D series; got shape {volume.array.shape}")
    array_xyz = np.transpose(volume.array, (2, 1, 0))
    _check_shape(array_xyz.shape, max_voxels)
    return _check_values(array_xyz), nib.Nifti1Image(array_xyz, volume.affine_ras)


def mask_to_nifti_gz(pred_xyz: np.ndarray, image: Any) -> bytes:
    """``pred (X, Y, Z)`` as gzipped NIfTI bytes (uint8) with ``image``'s affine and header."""
    import nibabel as nib

    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    mask = nib.Nifti1Image(pred_xyz.astype(np.uint8), image.affine, header)
    return gzip.compress(mask.to_bytes(), compresslevel=6, mtime=0)
