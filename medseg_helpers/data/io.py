"""Read and write volumes with their geometry: NIfTI, NRRD, MetaImage and DICOM series.

Readers return a `Volume` (``(Z, Y, X)`` or ``(C, Z, Y, X)``, LPS geometry; see
`medseg_helpers.data.volume`). SimpleITK reads and writes every format, so all share ITK's
geometry rules, except NIfTI voxels, which come from nibabel: SimpleITK's NIfTI reader
turns NaN/Inf into 0 and reads truncated files without complaint. A 4D NIfTI such as
Decathlon Task01 (``(X, Y, Z, C)`` on disk) is read as ``(C, Z, Y, X)`` with its 3D
geometry, and a channel-first `Volume` is written back in that layout
(`medseg_helpers.data.itk_images`).

Bad input is refused with one line naming the file and the problem (`VolumeReadError`),
before anything large is allocated: anything but a regular file (a FIFO, a device) is
refused before it is opened, and a detached header's data file is checked
(`medseg_helpers.data.file_checks`); a NIfTI header is checked (voxel type, finite
geometry, declared size against the bytes the file holds) before its voxels are read
(`medseg_helpers.data.nifti_header`); what the C++ readers print themselves (MetaIO,
niftilib, GDCM) is folded into the error, or logged as a warning when the read succeeds
(`medseg_helpers.data.itk_messages`). DICOM series are found and read by
`medseg_helpers.data.dicom`.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError

from medseg_helpers.data.dicom import DICOM_GAP_TOLERANCE_MM, list_dicom_series, read_series_image
from medseg_helpers.data.file_checks import (
    VolumeReadError,
    check_data_file,
    check_header_start,
    check_regular_file,
    check_writable_name,
    mixed_case_nifti,
)
from medseg_helpers.data.geometry import check_geometry_match
from medseg_helpers.data.itk_images import image_from_volume, volume_from_image, volume_from_parts
from medseg_helpers.data.itk_messages import itk_reason, native_stderr_captured
from medseg_helpers.data.nifti_header import check_nifti_header
from medseg_helpers.data.volume import Volume
from medseg_helpers.fileutil import atomic_path

__all__ = [
    "DICOM_GAP_TOLERANCE_MM", "IMAGE_IOS", "SUPPORTED_EXTENSIONS", "VolumeReadError",
    "check_finite", "convert_to_nifti", "detect_format", "ensure_integer_label",
    "list_dicom_series", "load_image_label_pair", "read_dicom_series", "read_volume",
    "write_volume",
]

#: File extension (lower case) -> the ITK ImageIO that reads and writes it.
IMAGE_IOS: dict[str, str] = {
    ".nii.gz": "NiftiImageIO",
    ".nii": "NiftiImageIO",
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(IMAGE_IOS)
_DETACHED_HEADERS = (".nhdr", ".mhd")  # header plus a separate data file
PathLike = str | os.PathLike
_FORMAT_NAMES = {"NiftiImageIO": "NIfTI", "NrrdImageIO": "NRRD", "MetaImageIO": "MetaImage"}


def detect_format(path: PathLike) -> str:
    """Return the supported extension ``path`` ends with (case-insensitive), e.g. ``".nii.gz"``.

    Raises:
        ValueError: naming ``path`` and listing the supported extensions.
    """
    name = Path(path).name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise ValueError(
        f"unsupported file type: {path}; supported extensions are "
        f"{', '.join(SUPPORTED_EXTENSIONS)} (or, for reading, a DICOM series folder)"
    )


def read_volume(path: PathLike, *, allow_nonfinite: bool = False) -> Volume:
    """Read a NIfTI/NRRD/MetaImage file, or a DICOM series folder, as a `Volume`.

    Args:
        path: a file with a supported extension (see `SUPPORTED_EXTENSIONS`) or a folder
            holding the slices of one DICOM series.
        allow_nonfinite: keep NaN/Inf voxels instead of raising.

    Returns:
        ``array`` ``(Z, Y, X)``, or ``(C, Z, Y, X)`` for a 4D file (4th file axis = channel),
        in the file's dtype; intensity scaling (DICOM rescale slope/intercept, NIfTI
        ``scl_slope``/``scl_inter``) is applied, so CT comes back in HU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported extension, or NaN/Inf voxels (see `check_finite`).
        VolumeReadError: not a regular file (a FIFO, a device; a folder named like a file),
            corrupt, truncated or non-3D/4D content, a NIfTI header declaring more voxel
            bytes than the file holds, non-scalar NIfTI voxels (complex, RGB), NaN/Inf in
            the NIfTI geometry (sform, qform, pixdim), an invalid spacing or origin, or a
            detached header whose data file is missing or not a regular file.

    Security:
        A detached header (``.mhd``, ``.nhdr``; also ``.mha``/``.nrrd`` with a data-file
        field) may name any file as its voxels, e.g. ``ElementDataFile = /etc/passwd``:
        the formats allow it, and that file is read as voxels. Do not read untrusted
        detached headers; a warning is logged when the data file lies outside the
        header's folder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        if path.name.lower().endswith(SUPPORTED_EXTENSIONS):
            raise VolumeReadError(
                f"cannot read {path}: it is a folder, not a {detect_format(path)} file"
            )
        return read_dicom_series(path, allow_nonfinite=allow_nonfinite)
    image_io = IMAGE_IOS[detect_format(path)]
    check_regular_file(path)
    volume = _read_nifti(path) if image_io == "NiftiImageIO" else _read_itk(path, image_io)
    if not allow_nonfinite:
        check_finite(volume, path)
    return volume


def write_volume(volume: Volume, path: PathLike, *, compress: bool = True) -> Path:
    """Write ``volume`` atomically; the format follows the extension.

    Parent folders are created. A reader never sees a partial file: single-file formats
    go through `atomic_path`; detached headers (``.nhdr``, ``.mhd``) are moved into place
    after their data file. ``(C, Z, Y, X)`` is written as a 4D image, channels last on
    disk (Decathlon layout). ``bool`` is stored as ``uint8``, ``float16`` as ``float32``.

    Args:
        compress: gzip NRRD/MetaImage voxels (for NIfTI the ``.gz`` suffix decides).

    Returns:
        ``path`` as a `Path`.

    The extension is matched case-insensitively (``CT.NII.GZ`` is written as named), but a
    NIfTI extension must be all lower or all upper case: niftilib (ITK) refuses ``.Nii``.

    Raises:
        ValueError: unsupported extension, or a mixed-case NIfTI one (nothing is created).
        IsADirectoryError: ``path`` is an existing folder (nothing is written).
        OSError: the writer failed; ``path`` is left as it was.
    """
    path = Path(path)
    ext = detect_format(path)
    check_writable_name(path, ext)
    image = image_from_volume(volume)
    try:
        if ext in _DETACHED_HEADERS:
            _write_detached(image, path, ext, compress)
        else:
            with atomic_path(path, suffix=ext) as tmp:  # ITK wants a lower-case extension
                _write_image(image, tmp, IMAGE_IOS[ext], compress)
    except RuntimeError as err:
        raise OSError(f"cannot write {path}: {itk_reason(err)}") from err
    return path


def check_finite(volume: Volume, source: PathLike | None = None) -> None:
    """Raise if any voxel is NaN or ±Inf (integer volumes always pass).

    Raises:
        ValueError: naming ``source`` and the counts of NaN and Inf voxels.
    """
    array = volume.array
    if not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all():
        return
    num_nan, num_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    raise ValueError(
        f"{source}: {num_nan} NaN and {num_inf} Inf voxels out of {array.size}; "
        "fix the file or read with allow_nonfinite=True"
    )


def read_dicom_series(
    folder: PathLike, series_uid: str | None = None, *, allow_nonfinite: bool = False
) -> Volume:
    """Read one DICOM series, slices sorted by ImagePositionPatient (not by file name).

    Missing slices or uneven spacing are logged as a warning (ITK uses the mean spacing).

    Args:
        folder: folder holding the slices (sub-folders are not searched).
        series_uid: SeriesInstanceUID to read; required when the folder holds several.
        allow_nonfinite: keep NaN/Inf voxels instead of raising.

    Returns:
        ``array`` ``(Z, Y, X)``, rescale slope/intercept applied (CT in HU).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        VolumeReadError: no DICOM files, several series and no ``series_uid`` or an unknown
            one (each series is listed: UID, SeriesDescription, slice count), a FIFO or
            device in the folder, or unreadable slices.
    """
    folder = Path(folder)
    volume = volume_from_image(read_series_image(folder, series_uid), folder)
    if not allow_nonfinite:
        check_finite(volume, folder)
    return volume


def ensure_integer_label(label: Volume, source: PathLike | None = None) -> Volume:
    """Return ``label`` with an integer dtype; whole-number floats are cast losslessly.

    Args:
        label: ``(Z, Y, X)`` class indices. Integer dtypes are returned unchanged, ``bool``
            becomes ``uint8``, floats become the smallest integer dtype holding their range.
        source: file named in error messages.

    Raises:
        ValueError: a channel axis, or any voxel that is not a finite whole number.
    """
    array = label.array
    if array.ndim != 3:
        raise ValueError(
            f"{source}: a label must be (Z, Y, X); got shape {array.shape} (a multi-layer "
            "segmentation, e.g. a 3D Slicer .seg.nrrd with overlapping segments, must be "
            "exported as a label map first)"
        )
    if np.issubdtype(array.dtype, np.integer):
        return label
    if array.dtype == np.bool_:
        return label.with_array(array.astype(np.uint8))
    bad = ~np.isfinite(array) | (array != np.round(array))
    if bad.any():
        raise ValueError(
            f"{source}: a label must hold whole numbers; {int(bad.sum())} voxels do not "
            f"(e.g. {array[bad].flat[0]!r})"
        )
    low, high = int(array.min()), int(array.max())
    dtype = np.result_type(np.min_scalar_type(low), np.min_scalar_type(high))
    return label.with_array(array.astype(dtype))


def load_image_label_pair(
    image_path: PathLike, label_path: PathLike, *, atol: float = 1e-4
) -> tuple[Volume, Volume]:
    """Read an image and its label map, check they match, return ``(image, label)``.

    The label is made integer (see `ensure_integer_label`); the geometry check is
    `check_geometry_match` with tolerance ``atol`` (mm).

    Raises:
        FileNotFoundError, VolumeReadError, ValueError: see `read_volume`.
        GeometryMismatchError: shape, spacing, origin or direction differ.
    """
    image = read_volume(image_path)
    label = ensure_integer_label(read_volume(label_path), label_path)
    check_geometry_match(image, label, image_path, label_path, atol=atol)
    return image, label


def convert_to_nifti(
    src: PathLike, dst: PathLike, *, is_label: bool = False, series_uid: str | None = None
) -> Path:
    """Convert any readable volume (DICOM folder, NRRD, MetaImage, NIfTI) to NIfTI.

    Geometry is kept to NIfTI's float32 precision. With ``is_label`` (e.g. a 3D Slicer
    ``.seg.nrrd`` label map or an ITK-SNAP export) voxels are stored as ``uint8`` when
    they fit, else ``uint16``.

    Args:
        src: file or DICOM series folder.
        dst: destination ending in ``.nii`` or ``.nii.gz`` (any case); written atomically.
        series_uid: the SeriesInstanceUID to read when ``src`` is a folder of several series.

    Returns:
        ``dst`` as a `Path`.

    Raises:
        ValueError: ``dst`` is not NIfTI, ``series_uid`` with a file ``src``, or a label is
            negative, fractional or > 65535.
        IsADirectoryError: ``dst`` is an existing folder (checked before reading ``src``).
        FileNotFoundError, VolumeReadError: see `read_volume`.
    """
    dst, src = Path(dst), Path(src)
    if detect_format(dst) not in (".nii", ".nii.gz"):
        raise ValueError(f"destination must end in .nii or .nii.gz; got {dst}")
    check_writable_name(dst, detect_format(dst))
    if series_uid is not None and not src.is_dir():
        raise ValueError(f"{src}: a series UID picks a series in a DICOM folder; this is a file")
    volume = read_dicom_series(src, series_uid) if src.is_dir() else read_volume(src)
    if is_label:
        label = ensure_integer_label(volume, src)
        low, high = int(label.array.min()), int(label.array.max())
        if low < 0 or high > np.iinfo(np.uint16).max:
            raise ValueError(f"{src}: label values [{low}, {high}] do not fit uint8/uint16")
        volume = label.with_array(label.array.astype(np.uint8 if high <= 255 else np.uint16))
    return write_volume(volume, dst)


def _read_itk(path: Path, image_io: str) -> Volume:
    """Read a NRRD or MetaImage file with ITK, after checking its start and its data file."""
    check_header_start(path, image_io)
    check_data_file(path, image_io)
    native: list[str] = []
    try:
        with native_stderr_captured(path, native):
            image = sitk.ReadImage(str(path), imageIO=image_io)
    except RuntimeError as err:
        raise VolumeReadError(f"cannot read {path}: not a readable {_FORMAT_NAMES[image_io]} "
                              f"file: {itk_reason(err, native)}") from err
    return volume_from_image(image, path)


def _read_nifti(path: Path) -> Volume:
    """Geometry from ITK (as for every format), voxels from nibabel (see module docstring),
    once the header's voxel type, geometry and size have been checked."""
    mixed_case = mixed_case_nifti(path, detect_format(path))
    if mixed_case:
        raise VolumeReadError(f"cannot read {path}: {mixed_case}")
    check_nifti_header(path)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(path))
    native: list[str] = []
    try:
        with native_stderr_captured(path, native):
            reader.ReadImageInformation()
        # nibabel (X, Y, Z[, T][, 1, C]) -> ITK's layout, channel first: (C, Z, Y, X) for a
        # vector image, (T, Z, Y, X) for 4D; trailing singleton axes dropped as ITK does.
        components = reader.GetNumberOfComponents()
        shape = ((components,) if components > 1 else ()) + reader.GetSize()[::-1]
        array = _read_nifti_voxels(path).T.reshape(shape)
    except RuntimeError as err:
        raise VolumeReadError(f"cannot read {path}: {itk_reason(err, native)}") from err
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as err:
        raise VolumeReadError(f"cannot read {path}: corrupt or truncated ({err})") from err
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    geometry = (reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    return volume_from_parts(array, reader.GetDimension(), *geometry, path)


def _read_nifti_voxels(path: Path) -> np.ndarray:
    """nibabel-order voxels; scaled files (scl_slope/scl_inter) become float32 as in ITK."""
    image = nib.load(path, mmap=False)  # no memory map: the file can be replaced later
    proxy = image.dataobj
    if proxy.slope == 1 and proxy.inter == 0:
        return np.asanyarray(proxy)
    return image.get_fdata(dtype=np.promote_types(proxy.dtype, np.float32))


def _write_image(image: sitk.Image, path: Path, image_io: str, compress: bool) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetImageIO(image_io)
    writer.SetFileName(str(path))
    writer.SetUseCompression(compress)
    writer.Execute(image)


def _write_detached(image: sitk.Image, path: Path, ext: str, compress: bool) -> None:
    """Write header + data file in a temporary folder beside ``path``; move data, then header.

    The header is written with the lower-case ``ext`` (ITK's writers want it) and renamed to
    ``path``'s name; the data file keeps ``path``'s stem, which is what the header names.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        tmp_header = Path(tmp) / f"{path.name[: -len(ext)]}{ext}"
        _write_image(image, tmp_header, IMAGE_IOS[ext], compress)
        for written in Path(tmp).iterdir():
            if written != tmp_header:
                os.replace(written, path.parent / written.name)
        os.replace(tmp_header, path)
