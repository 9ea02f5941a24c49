"""Shared fixtures: tiny synthetic data written in ``tmp_path``, no downloads."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

# Tests run the tiny profile unless they choose one (`make test` sets it too); the
# default profile, ``full``, would train for minutes wherever a test leaves it unset.
os.environ.setdefault("MEDSEG_PROFILE", "smoke")

from medseg_helpers.data import dicom
from medseg_helpers.data.volume import Volume


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Decathlon folder of 4 synthetic MR cases of ``(8, 32, 32)`` (seed 0), per module."""
    from _decathlon_helpers import synthetic_mr_dir

    return synthetic_mr_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def axial_onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 2D ``UNet(1 -> 3 classes, base 4, depth 2)`` exported to ONNX with the
    course slice cache's preprocessing (z-score, no resampling, axial slices); shared by
    the service tests (an export costs seconds)."""
    import torch

    from medseg_helpers.deploy.export import export_onnx
    from medseg_helpers.deploy.preprocessing import Preprocessing
    from medseg_helpers.networks.unet import UNet

    torch.manual_seed(0)
    model = UNet(2, 1, 3, base_channels=4, depth=2).eval()
    return export_onnx(model, torch.randn(1, 1, 32, 32),
                       tmp_path_factory.mktemp("onnx") / "axial.onnx",
                       preprocessing=Preprocessing("zscore", {}, None, axis=0))


@pytest.fixture(scope="module")
def cases(dataset_dir: Path) -> list:
    """`decathlon.Case` list of `dataset_dir`."""
    from medseg_helpers.data.decathlon import read_decathlon

    return read_decathlon(dataset_dir)


@pytest.fixture
def write_dicom_series() -> Callable[..., Path]:
    """``write_dicom_series(volume, folder, series_uid=...) -> folder`` (`data.dicom`)."""
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


@contextmanager
def smoke_course_model(root: Path, **env: str) -> Iterator[tuple[object, object]]:
    """A smoke-trained course model (U-Net depth 2) with data and runs under ``root``.

    Yields ``(TrainedModel, TrainConfig)`` while ``MEDSEG_DATA_DIR``/``MEDSEG_RUN_DIR`` (and
    any ``env``) point into ``root``; they are restored afterwards.
    """
    from medseg_helpers.course.model import course_model_config, ensure_trained_model

    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"MEDSEG_DATA_DIR": str(root / "data"),
                            "MEDSEG_RUN_DIR": str(root / "runs"), **env}.items():
            mp.setenv(name, value)
        config = course_model_config("smoke", progress=False, tensorboard=False,
                                     model_kwargs={"depth": 2})
        yield ensure_trained_model(config, device="cpu"), config
