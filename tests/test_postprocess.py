"""keep_largest_component: hand-worked cases, connectivity, and MONAI's transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg_helpers.transforms.postprocess import keep_largest_component, largest_component_mask


def test_hand_worked_removes_the_small_island() -> None:
    pred = np.array([[1, 1, 0, 1],
                     [1, 0, 0, 0],
                     [0, 0, 2, 2]])
    # class 1: components of sizes 3 (top left) and 1 (top right); class 2 untouched
    expected = np.array([[1, 1, 0, 0],
                         [1, 0, 0, 0],
                         [0, 0, 2, 2]])
    assert np.array_equal(keep_largest_component(pred, labels=[1]), expected)


def test_default_connectivity_joins_voxels_that_touch_at_a_corner() -> None:
    label = np.zeros((5, 5, 5), np.int64)
    label[0, 0, 0] = label[1, 1, 1] = label[2, 2, 2] = 1  # a diagonal through corners
    label[4, 4, 0] = label[4, 4, 1] = 1  # two face neighbours, apart from the diagonal
    # default (26-connectivity): the diagonal is one 3-voxel component and wins
    expected = np.zeros_like(label)
    expected[0, 0, 0] = expected[1, 1, 1] = expected[2, 2, 2] = 1
    assert np.array_equal(keep_largest_component(label), expected)
    # faces only: three components of 1 voxel and one of 2: the pair wins
    expected = np.zeros_like(label)
    expected[4, 4, 0] = expected[4, 4, 1] = 1
    assert np.array_equal(keep_largest_component(label, connectivity=1), expected)


def test_each_class_keeps_its_own_largest_blob() -> None:
    pred = np.zeros((6, 8, 8), np.uint8)
    pred[0:3, 0:3, 0:3] = 1  # 27 voxels: kept
    pred[4:6, 5:7, 5:7] = 1  # 8 voxels: removed
    pred[0, 7, 7] = 2  # 1 voxel: removed
    pred[5, 0, 0:2] = 2  # 2 voxels: kept
    out = keep_largest_component(pred)
    assert out.dtype == np.uint8
    assert {v: int((out == v).sum()) for v in (0, 1, 2)} == {0: 384 - 29, 1: 27, 2: 2}
    only_organ = keep_largest_component(pred, labels=[1])
    assert int((only_organ == 2).sum()) == 3


def test_connectivity_decides_whether_diagonals_touch() -> None:
    mask = np.array([[1, 0, 0],
                     [0, 1, 1]], bool)
    assert largest_component_mask(mask, connectivity=2).sum() == 3  # one diagonal blob
    assert largest_component_mask(mask, connectivity=1).sum() == 2
    with pytest.raises(ValueError, match="connectivity must be in"):
        largest_component_mask(mask, connectivity=3)


def test_empty_and_single_component_masks_are_unchanged() -> None:
    assert not largest_component_mask(np.zeros((3, 3))).any()
    pred = np.zeros((4, 4), np.uint8)
    pred[1:3, 1:3] = 2
    out = keep_largest_component(pred)
    assert np.array_equal(out, pred) and out.dtype == np.uint8 and out is not pred


def test_union_mode_keeps_a_lesion_inside_the_organ() -> None:
    pred = np.zeros((1, 7, 7), np.int64)
    pred[0, :4, :4] = 1
    pred[0, 1, 1] = 2  # a lesion inside the organ
    pred[0, 5:7, 6] = 2  # a stray 2-voxel lesion outside: the largest lesion component
    independent = keep_largest_component(pred, labels=[1, 2])
    assert independent[0, 1, 1] == 0 and independent[0, 6, 6] == 2  # lesion inside lost
    union = keep_largest_component(pred, labels=[1, 2], independent=False)
    assert union[0, 1, 1] == 2 and union[0, 6, 6] == 0  # stray blob removed instead


@pytest.mark.parametrize("independent", [True, False])
@pytest.mark.parametrize("connectivity", [None, 1])
def test_matches_monai_keep_largest_connected_component(independent, connectivity) -> None:
    from monai.transforms import KeepLargestConnectedComponent

    rng = np.random.default_rng(0)
    pred = (rng.random((6, 10, 10)) < 0.35).astype(np.int64) * rng.integers(1, 3, (6, 10, 10))
    reference = KeepLargestConnectedComponent(applied_labels=[1, 2], is_onehot=False,
                                              independent=independent,
                                              connectivity=connectivity)
    expected = reference(torch.from_numpy(pred)[None])[0].numpy()
    ours = keep_largest_component(pred, [1, 2], independent, connectivity)
    assert np.array_equal(ours, expected)


def test_float_maps_are_rejected() -> None:
    with pytest.raises(TypeError, match="integer label map"):
        keep_largest_component(np.zeros((2, 2)))
