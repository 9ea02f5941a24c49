"""Read and write volumes with their geometry: NIfTI, NRRD, MetaImage and DICOM series.

Readers return a `Volume` (``(Z, Y, X)`` or ``(C, Z, Y, X)``, LPS geometry; see
`medseg_helpers.data.volume`). SimpleITK reads and writes every format, so all share ITK's
geometry rules, except NIfTI voxels, which come from nibabel: SimpleITK's NIfTI reader
turns NaN/Inf into 0 and reads truncated files without complaint. A 4D NIfTI such as
Decathlon Task01 (``(X, Y, Z, C)`` on disk) is read as ``(C, Z, Y, X)`` with its 3D
geometry, and a channel-first `Volume` is written back in that layout.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError

from medseg_helpers.data.geometry import check_geometry_match
from medseg_helpers.data.volume import Volume
from medseg_helpers.fileutil import atomic_path

logger = logging.getLogger(__name__)

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
#: Slice gaps may differ by this much (mm) before a DICOM series is reported as uneven;
#: positions written with 10 significant digits differ by ~1e-7 mm.
DICOM_GAP_TOLERANCE_MM = 1e-3
PathLike = str | os.PathLike


class VolumeReadError(ValueError):
    """A file or DICOM folder exists but holds no readable volume (message names it)."""


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
        VolumeReadError: corrupt, truncated or non-3D/4D content.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        return read_dicom_series(path, allow_nonfinite=allow_nonfinite)
    image_io = IMAGE_IOS[detect_format(path)]
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

    Raises:
        ValueError: unsupported extension (nothing is created).
        OSError: the writer failed; ``path`` is left as it was.
    """
    path = Path(path)
    image_io = IMAGE_IOS[detect_format(path)]
    image = _image_from_volume(volume)
    try:
        if path.name.lower().endswith(_DETACHED_HEADERS):
            _write_detached(image, path, image_io, compress)
        else:
            with atomic_path(path) as tmp:
                _write_image(image, tmp, image_io, compress)
    except RuntimeError as err:
        raise OSError(f"cannot write {path}: {_itk_reason(err)}") from err
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


def _slice_gap_deviation(reader: sitk.ImageSeriesReader, image: sitk.Image) -> float:
    """Largest difference (mm) between a gap of consecutive slices and the median gap,
    measured along the slice normal from each file's ImagePositionPatient."""
    count = len(reader.GetFileNames())
    if count < 3 or not all(reader.HasMetaDataKey(i, "0020|0032") for i in range(count)):
        return 0.0
    positions = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
                          for i in range(count)])
    normal = np.reshape(image.GetDirection(), (3, 3))[:, 2]
    gaps = np.diff(positions @ normal)
    return float(np.max(np.abs(gaps - np.median(gaps))))


def list_dicom_series(folder: PathLike) -> tuple[str, ...]:
    """SeriesInstanceUIDs of the DICOM files directly in ``folder`` (sub-folders not searched)."""
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


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
        VolumeReadError: no DICOM files, several series and no ``series_uid`` (the UIDs
            are listed), an unknown ``series_uid``, or unreadable slices.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such DICOM folder: {folder}")
    uids = list_dicom_series(folder) if any(p.is_file() for p in folder.iterdir()) else ()
    if not uids:
        raise VolumeReadError(f"no DICOM series in {folder} (sub-folders are not searched)")
    if series_uid is None and len(uids) > 1:
        raise VolumeReadError(
            f"{folder} holds {len(uids)} DICOM series; pass series_uid=, one of: {', '.join(uids)}"
        )
    if series_uid is not None and series_uid not in uids:
        raise VolumeReadError(f"no series {series_uid} in {folder}; found: {', '.join(uids)}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_uid or uids[0]))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise VolumeReadError(f"cannot read DICOM series in {folder}: {_itk_reason(err)}") from err
    deviation = _slice_gap_deviation(reader, image)
    if deviation > DICOM_GAP_TOLERANCE_MM:
        logger.warning(
            "%s: missing slices or uneven slice spacing (gaps differ by up to %.3g mm; ITK "
            "uses the mean spacing, so positions drift)", folder, deviation
        )
    volume = _volume_from_image(image, folder)
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
        src: file or DICOM series folder (``series_uid`` picks one of several series).
        dst: destination ending in ``.nii`` or ``.nii.gz``.

    Returns:
        ``dst`` as a `Path`.

    Raises:
        ValueError: ``dst`` is not NIfTI, or a label is negative, fractional or > 65535.
        FileNotFoundError, VolumeReadError: see `read_volume`.
    """
    dst, src = Path(dst), Path(src)
    if detect_format(dst) not in (".nii", ".nii.gz"):
        raise ValueError(f"destination must end in .nii or .nii.gz; got {dst}")
    volume = read_dicom_series(src, series_uid) if src.is_dir() else read_volume(src)
    if is_label:
        label = ensure_integer_label(volume, src)
        low, high = int(label.array.min()), int(label.array.max())
        if low < 0 or high > np.iinfo(np.uint16).max:
            raise ValueError(f"{src}: label values [{low}, {high}] do not fit uint8/uint16")
        volume = label.with_array(label.array.astype(np.uint8 if high <= 255 else np.uint16))
    return write_volume(volume, dst)


def _read_itk(path: Path, image_io: str) -> Volume:
    try:
        image = sitk.ReadImage(str(path), imageIO=image_io)
    except RuntimeError as err:
        raise VolumeReadError(f"cannot read {path}: {_itk_reason(err)}") from err
    return _volume_from_image(image, path)


def _read_nifti(path: Path) -> Volume:
    """Geometry from ITK (as for every format), voxels from nibabel (see module docstring)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        # nibabel (X, Y, Z[, T][, 1, C]) -> ITK's layout, channel first: (C, Z, Y, X) for a
        # vector image, (T, Z, Y, X) for 4D; trailing singleton axes dropped as ITK does.
        components = reader.GetNumberOfComponents()
        shape = ((components,) if components > 1 else ()) + reader.GetSize()[::-1]
        array = _read_nifti_voxels(path).T.reshape(shape)
    except RuntimeError as err:
        raise VolumeReadError(f"cannot read {path}: {_itk_reason(err)}") from err
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as err:
        raise VolumeReadError(f"cannot read {path}: corrupt or truncated ({err})") from err
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    geometry = (reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    return _volume_from_parts(array, reader.GetDimension(), *geometry, path)


def _read_nifti_voxels(path: Path) -> np.ndarray:
    """nibabel-order voxels; scaled files (scl_slope/scl_inter) become float32 as in ITK."""
    image = nib.load(path, mmap=False)  # no memory map: the file can be replaced later
    proxy = image.dataobj
    if proxy.slope == 1 and proxy.inter == 0:
        return np.asanyarray(proxy)
    return image.get_fdata(dtype=np.promote_types(proxy.dtype, np.float32))


def _volume_from_image(image: sitk.Image, source: Path) -> Volume:
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    geometry = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return _volume_from_parts(array, image.GetDimension(), *geometry, source)


def _volume_from_parts(array, dimension, spacing, origin, direction, source) -> Volume:
    """(Z, Y, X) or channel-first voxels + ITK geometry of a 3D image or a 4D image whose
    4th axis is the channel (Decathlon) -> `Volume` with the 3D geometry."""
    direction = np.reshape(direction, (dimension, dimension))
    cross_terms = [*direction[3, :3], *direction[:3, 3]] if dimension == 4 else [0.0]
    mixed = np.abs(cross_terms).max() > 1e-6  # 4th axis tilted into space: not a channel
    if dimension not in (3, 4) or array.ndim not in (3, 4) or array.ndim < dimension or mixed:
        raise VolumeReadError(
            f"cannot read {source}: expected a 3D image or a 4D image with channels as its "
            f"4th axis; got a {dimension}D image with voxel array {array.shape}"
        )
    return Volume(array, spacing[2::-1], origin[:3], direction[:3, :3])


def _image_from_volume(volume: Volume) -> sitk.Image:
    """`Volume` -> 3D image, or a 4D image (channel = 4th index axis) for ``(C, Z, Y, X)``."""
    array = volume.array
    if array.dtype == np.bool_ or array.dtype == np.float16:
        array = array.astype(np.uint8 if array.dtype == np.bool_ else np.float32)
    if array.ndim == 3:
        return volume.with_array(array).to_sitk()
    geometry = (volume.spacing_mm, volume.origin_mm, volume.direction)
    return sitk.JoinSeries([Volume(channel, *geometry).to_sitk() for channel in array])


def _write_image(image: sitk.Image, path: Path, image_io: str, compress: bool) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetImageIO(image_io)
    writer.SetFileName(str(path))
    writer.SetUseCompression(compress)
    writer.Execute(image)


def _write_detached(image: sitk.Image, path: Path, image_io: str, compress: bool) -> None:
    """Write header + data file in a temporary folder beside ``path``; move data, then header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        tmp_header = Path(tmp) / path.name
        _write_image(image, tmp_header, image_io, compress)
        for written in Path(tmp).iterdir():
            if written != tmp_header:
                os.replace(written, path.parent / written.name)
        os.replace(tmp_header, path)


def _itk_reason(err: RuntimeError) -> str:
    """The useful part of a SimpleITK exception (drops the C++ source location)."""
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    reason = " ".join(lines) or str(err)
    return re.sub(r"(ITK|sitk::)\s?ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", reason)
