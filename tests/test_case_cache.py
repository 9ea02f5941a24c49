"""Tests for medseg_helpers.data.case_cache: bad input is reported, naming the case, by both
the slice cache and the patch dataset, and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _decathlon_helpers import image_label_pair, write_decathlon

from medseg_helpers.data.decathlon import Case, read_decathlon
from medseg_helpers.data.geometry import GeometryMismatchError
from medseg_helpers.data.patch_dataset import PatchDataset3D
from medseg_helpers.data.slice_cache import build_slice_cache
from medseg_helpers.data.volume import Volume


def _bad_case(tmp_path: Path, kind: str) -> list[Case]:
    image, label = image_label_pair()
    if kind == "nan":
        array = image.array.copy()
        array[1, 2, 3] = np.nan
        image = image.with_array(array)
    elif kind == "shifted":
        label = Volume(label.array, label.spacing_mm, (0.0, 0.0, 0.0))
    elif kind == "undeclared":
        array = label.array.copy()
        array[0, :2, :2] = 5
        label = label.with_array(array)
    return read_decathlon(write_decathlon(tmp_path / "data", {kind: (image, label)}))


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        ("nan", ValueError, r"case 'nan'.*1 NaN"),
        ("shifted", GeometryMismatchError, r"case 'shifted'.*origin"),
        ("undeclared", ValueError, r"case 'undeclared'.*outside the allowed set.*5: 4 voxel"),
    ],
)
def test_bad_cases_raise_naming_the_case_and_leave_nothing(tmp_path, kind, error, match):
    cases = _bad_case(tmp_path, kind)
    with pytest.raises(error, match=match):
        build_slice_cache(cases, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(error, match=match):
        PatchDataset3D(cases, (2, 8, 8))


def test_source_deleted_after_listing_is_reported(tmp_path):
    cases = read_decathlon(write_decathlon(tmp_path / "data", {"gone": image_label_pair()}))
    cases[0].label_path.unlink()
    with pytest.raises(FileNotFoundError, match="source file missing.*gone.nii.gz"):
        build_slice_cache(cases, tmp_path / "cache")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"normalisation": "max"}, "unknown normalisation"), ({"axis": 3}, "axis")],
)
def test_bad_cache_settings_are_rejected(cases, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_slice_cache(cases, tmp_path, **kwargs)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o077, 0o700)])
def test_atomically_built_folder_is_readable_as_the_umask_says(tmp_path, umask, mode):
    from medseg_helpers.data.case_cache import build_atomically

    old = os.umask(umask)
    try:
        build_atomically(tmp_path / "cache", lambda tmp: (tmp / "index.json").write_text("{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "cache").stat().st_mode & 0o777 == mode  # as mkdir would have made it
    assert (tmp_path / "cache" / "index.json").read_text() == "{}"
