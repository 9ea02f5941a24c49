"""Check a NIfTI header as stored, before any voxel is read.

`check_nifti_header` reads the header block as stored (decompressing a ``.nii.gz`` only
that far; nibabel's own checks, which log to stderr, are not run), and refuses the file
with a `VolumeReadError` naming it and the problem when:

* the voxels are not one real number each (complex, RGB): `medseg_helpers.data.io` reads
  scalar images only;
* NaN or Inf is in the geometry ITK uses (voxel sizes ``pixdim[1:4]``; the qform or sform
  when its code is set): the voxels' positions would be unknown;
* the header declares more voxel bytes than the file holds (or decompresses to), or its
  ``dim`` or ``vox_offset`` is corrupt: decided from the header and the file's size before
  the voxels are read, so a small file whose header declares gigabytes is refused without
  memory being set aside for them.

Checking the size of a ``.nii.gz`` costs one more decompression, in a 1 MiB buffer; a file
declaring at most 64 MiB skips it (small files need no bound, and a truncated one fails
while its voxels are read).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg_helpers.data.file_checks import VolumeReadError

#: NIfTI datatype codes of scalar voxels: (u)int8/16/32/64, float32/64.
_NIFTI_SCALAR_CODES = frozenset({2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280})
_GZIP_CHUNK_BYTES = 2**20  # memory of the decompressed-size check of a .nii.gz
#: A .nii.gz declaring at most this many bytes is read without that check (a truncated one
#: fails while reading): the check costs one more decompression, small files need no bound.
_GZIP_UNCHECKED_BYTES = 64 * 2**20


def check_nifti_header(path: Path) -> None:
    """Refuse ``path`` unless its NIfTI-1 or NIfTI-2 header declares scalar voxels and a
    finite geometry, and the file holds the voxel bytes it declares.

    Raises:
        VolumeReadError: naming ``path`` and the problem.
    """
    header = _raw_nifti_header(path)
    code = int(header["datatype"])
    if code not in _NIFTI_SCALAR_CODES:
        label = nib.nifti1.data_type_codes.label.get(code, f"code {code}")
        raise VolumeReadError(f"cannot read {path}: voxel type {label} is not supported: a "
                              "scalar image is needed (one real number per voxel)")
    bad_field = _nonfinite_geometry_field(header)
    if bad_field:
        raise VolumeReadError(f"cannot read {path}: NaN or Inf in the NIfTI geometry "
                              f"({bad_field}): the voxels' positions are unknown; fix the header")
    _check_nifti_size(path, header)


def _raw_nifti_header(path: Path) -> nib.Nifti1Header:
    """The header as stored, unchecked and unfixed (nibabel's checks log to stderr)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as file:
            block = file.read(nib.Nifti2Header.sizeof_hdr)
    except (OSError, EOFError, zlib.error) as err:
        raise VolumeReadError(f"cannot read {path}: corrupt or truncated ({err})") from err
    for klass, magic in ((nib.Nifti2Header, b"n+2"), (nib.Nifti1Header, b"n+1")):
        if klass.may_contain_header(block):
            header = klass(block[: klass.sizeof_hdr], check=False)
            if header["magic"] == magic:
                return header
    raise VolumeReadError(f"cannot read {path}: not recognized as a NIFTI file (no "
                          "single-file NIfTI-1 or NIfTI-2 header)")


def _nonfinite_geometry_field(header: nib.Nifti1Header) -> str:
    """``"srow_x = [nan, 0.0, 0.0, 1.0]"`` for the first NaN/Inf field ITK would use for the
    geometry (voxel sizes ``pixdim[1:4]``; the qform or sform when its code is set), else
    ``""``."""
    fields = ["pixdim"]
    if header["qform_code"] > 0:
        fields += ["quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"]
    if header["sform_code"] > 0:
        fields += ["srow_x", "srow_y", "srow_z"]
    for name in fields:
        values = header[name][1:4] if name == "pixdim" else header[name]
        if not np.isfinite(values).all():
            return f"{name} = {values.tolist()}"
    return ""


def _check_nifti_size(path: Path, header: nib.Nifti1Header) -> None:
    """Refuse a header declaring more voxel bytes than the file holds, before allocating.

    For ``.nii`` the file size is compared. A ``.nii.gz`` declaring more than
    `_GZIP_UNCHECKED_BYTES` is decompressed once into a `_GZIP_CHUNK_BYTES` buffer, counting
    bytes up to the declared size: bounded memory, the time of one more decompression.
    """
    ndim = int(header["dim"][0])
    shape = tuple(int(n) for n in header["dim"][1 : ndim + 1])
    if not 1 <= ndim <= 7 or min(shape) < 0:
        raise VolumeReadError(f"cannot read {path}: corrupt header: dim = "
                              f"{header['dim'].tolist()}")
    if not 0 <= header["vox_offset"] < 2**63:  # also NaN
        raise VolumeReadError(f"cannot read {path}: corrupt header: vox_offset = "
                              f"{header['vox_offset']}")
    dtype = nib.nifti1.data_type_codes.dtype[int(header["datatype"])]
    offset = max(int(header["vox_offset"]), header.sizeof_hdr)
    needed = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    compressed = path.name.lower().endswith(".gz")
    if compressed and needed <= _GZIP_UNCHECKED_BYTES:
        return
    held = _decompressed_size(path, needed) if compressed else path.stat().st_size
    if held < needed:
        holds = "decompresses to only" if compressed else "holds only"
        raise VolumeReadError(
            f"cannot read {path}: truncated or corrupt header: it declares {shape} "
            f"{dtype.name} = {needed - offset} bytes of voxels from byte {offset}, but the "
            f"file {holds} {held} bytes"
        )


def _decompressed_size(path: Path, needed: int) -> int:
    """Bytes the gzip file ``path`` decompresses to, counted up to ``needed`` at most."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total < needed:
                block = stream.read(min(_GZIP_CHUNK_BYTES, needed - total))
                if not block:
                    break
                total += len(block)
    except (OSError, EOFError, zlib.error) as err:
        raise VolumeReadError(f"cannot read {path}: corrupt or truncated ({err})") from err
    return total
