"""Shared fixtures: tiny synthetic data written in ``tmp_path``, no downloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_helpers.volume import Volume


def _decimal_string(values) -> str:
    """DICOM DS multi-value: backslash-separated numbers."""
    return "\\".join(f"{float(v):.10g}" for v in values)


def _write_dicom_series(
    volume: Volume, folder: Path, series_uid: str = "1.2.826.0.1.3680043.10.1.1"
) -> Path:
    """Write a ``(Z, Y, X)`` int16 volume as one DICOM file per z index (CT-like).

    Follows SimpleITK's "DICOM series from array" example: each 2D slice carries the
    tags GDCM needs to restore order and geometry (position, orientation, UIDs).
    Returns ``folder``.
    """
    image = volume.with_array(volume.array.astype(np.int16)).to_sitk()
    direction = volume.direction
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        tags = {
            "0008|0060": "CT",
            "0008|0018": f"{series_uid}.{k + 1}",  # SOPInstanceUID
            "0020|000d": "1.2.826.0.1.3680043.10.1",  # StudyInstanceUID
            "0020|000e": series_uid,  # SeriesInstanceUID
            "0020|0013": str(k + 1),  # InstanceNumber
            "0020|0032": _decimal_string(image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": _decimal_string([*direction[:, 0], *direction[:, 1]]),
            "0018|0050": _decimal_string([volume.spacing_mm[0]]),  # SliceThickness
        }
        slice_image = image[:, :, k]
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}_{k:03d}.dcm"))
        writer.Execute(slice_image)
    return folder


@pytest.fixture
def write_dicom_series() -> Callable[..., Path]:
    """``write_dicom_series(volume, folder, series_uid=...) -> folder`` (see above)."""
    return _write_dicom_series


def _rotation_z(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture
def ct_volume() -> Volume:
    """(10, 20, 30) CT-like volume: air, a soft-tissue box, a bone voxel; oblique geometry."""
    array = np.full((10, 20, 30), -1000, dtype=np.int16)
    array[2:8, 5:15, 8:22] = 40
    array[4, 10, 12] = 700
    return Volume(array, (3.0, 1.0, 0.8), (-12.5, 30.0, 7.0), _rotation_z(30))
