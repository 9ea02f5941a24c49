"""Tests for medseg_helpers.data.slicing: 3D -> 2D slices -> 3D with the source geometry."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_helpers.data.slicing import SliceInfo, merge_slices, slice_volume
from medseg_helpers.data.volume import Volume

# an oblique, anisotropic geometry so that any axis mix-up changes the numbers
DIRECTION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(params=[3, 4], ids=["3d", "channels"])
def volume(request) -> Volume:
    shape = (5, 6, 7) if request.param == 3 else (2, 5, 6, 7)
    array = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    return Volume(array, (3.0, 0.9, 0.7), (10.5, -20.25, 33.0), DIRECTION)


def _assert_identical(a: Volume, b: Volume) -> None:
    assert a.array.dtype == b.array.dtype
    np.testing.assert_array_equal(a.array, b.array)
    assert a.spacing_mm == b.spacing_mm and a.origin_mm == b.origin_mm
    np.testing.assert_array_equal(a.direction, b.direction)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_round_trip_is_exact_along_any_axis(volume, axis):
    slices, info = slice_volume(volume, axis=axis)
    _assert_identical(merge_slices(slices, info), volume)
    _assert_identical(merge_slices(list(slices), info), volume)


@pytest.mark.parametrize(("axis", "expected"), [(0, (5, 6, 7)), (1, (6, 5, 7)), (2, (7, 5, 6))])
def test_slice_shapes_and_content(axis, expected):
    array = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    slices, info = slice_volume(Volume(array, (3.0, 2.0, 1.0)), axis=axis)
    assert slices.shape == expected
    assert info.num_slices == expected[0] and info.slice_shape == expected[1:]
    np.testing.assert_array_equal(slices[4], np.take(array, 4, axis=axis))
    assert info.in_plane_spacing_mm == tuple(s for i, s in enumerate((3.0, 2.0, 1.0)) if i != axis)


def test_channel_slices_are_channel_first():
    slices, _ = slice_volume(Volume(np.zeros((2, 5, 6, 7))), axis=1)
    assert slices.shape == (6, 2, 5, 7)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_merging_predictions_of_another_dtype(axis):
    image = Volume(np.random.default_rng(0).random((5, 6, 7)), (2.5, 1.0, 1.0), (1.0, 2.0, 3.0))
    slices, info = slice_volume(image, axis=axis)
    pred = [(s > 0.5).astype(np.int64) for s in slices]  # a per-slice "model"
    merged = merge_slices(pred, info)
    assert merged.array.dtype == np.int64
    assert merged.same_geometry(image, atol=0)
    np.testing.assert_array_equal(merged.array, (image.array > 0.5).astype(np.int64))
    probs = np.stack([np.stack([1 - s, s]) for s in slices]).astype(np.float32)  # (N, 2, H, W)
    merged_probs = merge_slices(probs, info)
    assert merged_probs.array.shape == (2, 5, 6, 7) and merged_probs.array.dtype == np.float32


def test_merged_prediction_saves_aligned_with_the_input(tmp_path, volume):
    slices, info = slice_volume(volume, axis=2)
    path = str(tmp_path / "pred.nii.gz")
    sitk.WriteImage(merge_slices(slices, info).to_sitk(), path)
    assert Volume.from_sitk(sitk.ReadImage(path)).same_geometry(volume)


def test_wrong_slice_count_or_shape_names_both_shapes():
    _, info = slice_volume(Volume(np.zeros((5, 6, 7))), axis=1)
    with pytest.raises(ValueError, match=r"\(5, 5, 7\).*expected \(6, 5, 7\)"):
        merge_slices(np.zeros((5, 5, 7)), info)
    with pytest.raises(ValueError, match=r"\(6, 5, 6\).*expected \(6, 5, 7\)"):
        merge_slices(np.zeros((6, 5, 6)), info)
    with pytest.raises(ValueError, match="got shape"):
        merge_slices(np.zeros((6, 5)), info)


def test_slice_info_survives_json(volume):
    slices, info = slice_volume(volume, axis=1)
    restored = SliceInfo(**json.loads(json.dumps(asdict(info))))
    assert restored == info
    _assert_identical(merge_slices(slices, restored), volume)


def test_bad_axis_raises():
    with pytest.raises(ValueError, match="axis must be"):
        slice_volume(Volume(np.zeros((2, 2, 2))), axis=3)
