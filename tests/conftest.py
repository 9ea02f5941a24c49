"""Shared fixtures: tiny synthetic data written in ``tmp_path``, no downloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medseg_helpers import dicom
from medseg_helpers.volume import Volume


@pytest.fixture
def write_dicom_series() -> Callable[..., Path]:
    """``write_dicom_series(volume, folder, series_uid=...) -> folder`` (`medseg_helpers.dicom`)."""
    return dicom.write_dicom_series


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
