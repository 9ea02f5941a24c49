"""DICOM series folders: find and read one series, and write one for teaching and tests.

A scanner or a PACS exports a series as a folder of files, one per slice; a folder may
hold several series. `list_dicom_series` gives their SeriesInstanceUIDs, and
`read_series_image` reads one with GDCM, slices sorted by ImagePositionPatient (not by
file name), warning about missing slices or uneven spacing. Read a series through
`medseg_helpers.data.io.read_dicom_series` (or ``io.read_volume(folder)``), which makes it
a `Volume` and checks its voxels.

Writing (`write_dicom_series`) is for teaching and testing: it lets a notebook or a test
build the kind of folder a PACS or a scanner exports, then read it back and check nothing
moved. The files are minimal secondary-capture-like CT slices, not a complete clinical
DICOM object (no patient module, no private tags); do not send them to a clinical system.
"""

from __future__ import annotations

import contextlib
import locale
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg_helpers.data.file_checks import VolumeReadError, check_regular_file
from medseg_helpers.data.itk_messages import itk_reason, native_stderr_captured
from medseg_helpers.data.volume import Volume

__all__ = ["DICOM_GAP_TOLERANCE_MM", "list_dicom_series", "read_series_image",
           "write_dicom_series"]

logger = logging.getLogger(__name__)

#: Slice gaps may differ by this much (mm) before a DICOM series is reported as uneven;
#: positions written with 10 significant digits differ by ~1e-7 mm.
DICOM_GAP_TOLERANCE_MM = 1e-3
#: Root of the UIDs we make up (the UUID-derived root 2.25 needs no registration).
_UID_ROOT = "2.25.3172"


def list_dicom_series(folder: str | os.PathLike) -> tuple[str, ...]:
    """SeriesInstanceUIDs of the DICOM files directly in ``folder`` (sub-folders not searched)."""
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def read_series_image(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series of ``folder`` as an ITK image, slices sorted by
    ImagePositionPatient; missing slices or uneven spacing are logged as a warning (ITK
    uses the mean spacing).

    Args:
        folder: folder holding the slices (sub-folders are not searched).
        series_uid: SeriesInstanceUID to read; required when the folder holds several.

    Raises:
        FileNotFoundError, VolumeReadError: see `medseg_helpers.data.io.read_dicom_series`.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"no such DICOM folder: {folder}")
    uids = list_dicom_series(folder) if _has_regular_files(folder) else ()
    if not uids:
        raise VolumeReadError(f"no DICOM series in {folder} (sub-folders are not searched)")
    if series_uid is None and len(uids) > 1:
        raise VolumeReadError(
            f"{folder} holds {len(uids)} DICOM series; choose one with --series-uid "
            f"(series_uid= in Python): {_describe_dicom_series(folder, uids)}"
        )
    if series_uid is not None and series_uid not in uids:
        raise VolumeReadError(f"no series {series_uid} in {folder}; found: "
                              f"{_describe_dicom_series(folder, uids)}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_uid or uids[0]))
    reader.MetaDataDictionaryArrayUpdateOn()
    native: list[str] = []
    try:
        with native_stderr_captured(folder, native):
            image = reader.Execute()
    except RuntimeError as err:
        raise VolumeReadError(
            f"cannot read DICOM series in {folder}: {itk_reason(err, native)}"
        ) from err
    deviation = _slice_gap_deviation(reader, image)
    if deviation > DICOM_GAP_TOLERANCE_MM:
        logger.warning(
            "%s: missing slices or uneven slice spacing (gaps differ by up to %.3g mm; ITK "
            "uses the mean spacing, so positions drift)", folder, deviation
        )
    return image


def _has_regular_files(folder: Path) -> bool:
    """Whether ``folder`` holds files; refuses a FIFO, device or socket in it, which the
    DICOM scanner would open (and wait on forever)."""
    entries = list(folder.iterdir())
    for entry in entries:
        if not entry.is_dir():
            check_regular_file(entry)
    return any(entry.is_file() for entry in entries)


def _describe_dicom_series(folder: Path, uids: Sequence[str]) -> str:
    """``'UID ("SeriesDescription", N slices), ...'`` for these series of ``folder``."""
    parts = []
    for uid in uids:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        parts.append(f'{uid} ("{_series_description(files[0]) if files else ""}", '
                     f"{len(files)} slices)")
    return ", ".join(parts)


def _series_description(dicom_file: str) -> str:
    """SeriesDescription (0008,103E) of one DICOM file; ``""`` if absent or unreadable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(dicom_file)
    native: list[str] = []
    try:
        with native_stderr_captured(Path(dicom_file), native):
            reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""


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



def _decimal_string(values) -> str:
    """DICOM DS multi-value: backslash-separated numbers."""
    return "\\".join(f"{float(v):.10g}" for v in values)


@contextlib.contextmanager
def _process_locale_kept():
    """Restore the process locale afterwards: GDCM's DICOM writer sets ``LC_ALL`` to "C",
    which would make every later ``open()`` without ``encoding=`` in this process ASCII."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_dicom_series(volume: Volume, folder: str | os.PathLike,
                       series_uid: str = f"{_UID_ROOT}.1.1", modality: str = "CT",
                       series_description: str = "") -> Path:
    """Write a ``(Z, Y, X)`` volume as one DICOM file per z index.

    Each slice carries what a reader needs to rebuild the volume: ImagePositionPatient
    (LPS mm of its first voxel), ImageOrientationPatient (row and column directions),
    SliceThickness, Study/Series/SOP Instance UIDs and InstanceNumber. Voxels are stored
    as int16 (CT in HU: rescale slope 1, intercept 0). File names are zero-padded z
    indices, but readers must (and ours does) sort by position, not by name.

    Args:
        volume: ``(Z, Y, X)`` image; values are rounded to int16.
        folder: where to write; created; existing ``.dcm`` files of the same series are
            replaced. The files appear all at once (written in a temporary folder first).
        series_uid: SeriesInstanceUID (digits and dots); SOP UIDs append ``.<slice>``.
        modality: the Modality tag (``"CT"``, ``"MR"``).
        series_description: the SeriesDescription tag (e.g. ``"AX 3mm"``); omitted if empty.

    Returns:
        ``folder`` as a `Path`.

    Raises:
        ValueError: a 4D volume, or values outside the int16 range.
    """
    if volume.array.ndim != 3:
        raise ValueError(f"a DICOM series holds one (Z, Y, X) volume; got {volume.array.shape}")
    low, high = float(np.min(volume.array)), float(np.max(volume.array))
    if low < -32768 or high > 32767:
        raise ValueError(f"values {low}..{high} do not fit int16; window or rescale them first")
    image = volume.with_array(np.rint(volume.array).astype(np.int16)).to_sitk()
    direction = np.asarray(volume.direction)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with (tempfile.TemporaryDirectory(prefix=".dicom-", dir=folder) as tmp,
          _process_locale_kept()):
        for k in range(image.GetDepth()):
            tags = {
                "0008|0060": modality,
                "0008|0018": f"{series_uid}.{k + 1}",  # SOPInstanceUID
                "0020|000d": f"{_UID_ROOT}.1",  # StudyInstanceUID
                "0020|000e": series_uid,  # SeriesInstanceUID
                "0020|0013": str(k + 1),  # InstanceNumber
                "0020|0032": _decimal_string(image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0037": _decimal_string([*direction[:, 0], *direction[:, 1]]),
                "0018|0050": _decimal_string([volume.spacing_mm[0]]),  # SliceThickness
            }
            if series_description:
                tags["0008|103e"] = series_description
            slice_image = image[:, :, k]
            for tag, value in tags.items():
                slice_image.SetMetaData(tag, value)
            writer.SetFileName(str(Path(tmp) / f"{series_uid}_{k:03d}.dcm"))
            writer.Execute(slice_image)
        for old in folder.glob(f"{series_uid}_*.dcm"):
            old.unlink()
        for written in sorted(Path(tmp).iterdir()):
            shutil.move(written, folder / written.name)
    return folder
