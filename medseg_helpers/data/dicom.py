"""Write a volume as a DICOM series, one file per slice, with the tags that carry geometry.

Reading DICOM is `medseg_helpers.data.io.read_dicom_series` (or ``io.read_volume(folder)``).
Writing is for teaching and testing: it lets a notebook or a test build the kind of folder
a PACS or a scanner exports, then read it back and check nothing moved. The files are
minimal secondary-capture-like CT slices, not a complete clinical DICOM object (no patient
module, no private tags); do not send them to a clinical system.
"""

from __future__ import annotations

import contextlib
import locale
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg_helpers.data.volume import Volume

__all__ = ["write_dicom_series"]

#: Root of the UIDs we make up (the UUID-derived root 2.25 needs no registration).
_UID_ROOT = "2.25.3172"


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
                       series_uid: str = f"{_UID_ROOT}.1.1", modality: str = "CT") -> Path:
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
