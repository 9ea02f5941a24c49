"""Tests for medseg_helpers.transforms.labels: checks, remapping, one-hot, connected components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg_helpers.transforms import labels as lb


@pytest.fixture
def two_blobs() -> np.ndarray:
    """(6, 8, 8) label: class 1 as a 27-voxel cube and an 8-voxel cube; class 2 as 1 + 2 voxels."""
    label = np.zeros((6, 8, 8), dtype=np.uint8)
    label[0:3, 0:3, 0:3] = 1  # 27 voxels
    label[4:6, 5:7, 5:7] = 1  # 8 voxels
    label[0, 7, 7] = 2  # 1 voxel
    label[5, 0, 0:2] = 2  # 2 voxels
    return label


def test_count_label_values(two_blobs):
    assert lb.count_label_values(two_blobs) == {0: 384 - 38, 1: 35, 2: 3}
    assert lb.count_label_values(np.array([0.0, 0.5, 1.0])) == {0: 1, 0.5: 1, 1: 1}


def test_check_label_values_passes_and_lists_unexpected(two_blobs):
    lb.check_label_values(two_blobs, range(3))
    label = two_blobs.copy()
    label[0, 0, 0] = 255
    label[1, 1, 1] = 7
    with pytest.raises(ValueError, match=r"7: 1 voxel\(s\), 255: 1 voxel\(s\)"):
        lb.check_label_values(label, [0, 1, 2])


def test_check_label_values_catches_interpolated_labels():
    with pytest.raises(ValueError, match=r"0\.5: 1 voxel"):
        lb.check_label_values(np.array([0.0, 0.5, 1.0]), [0, 1])


def test_remap_labels():
    label = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(lb.remap_labels(label, {255: 1}), [[0, 1], [1, 0]])
    merged = lb.remap_labels(np.array([0, 1, 2, 3]), {2: 1})
    np.testing.assert_array_equal(merged, [0, 1, 1, 3])  # unmapped values kept
    wide = lb.remap_labels(np.array([0, 1], dtype=np.uint8), {1: 300})
    assert wide.dtype == np.uint16 and wide[1] == 300


def test_remap_rejects_fractional_labels():
    with pytest.raises(ValueError, match="non-integer"):
        lb.remap_labels(np.array([0.0, 0.4]), {1: 2})


def test_one_hot_by_hand_and_round_trip():
    label = np.array([[0, 2], [1, 2]])
    one_hot = lb.encode_one_hot(label, num_classes=3)
    assert one_hot.shape == (3, 2, 2) and one_hot.dtype == np.float32
    np.testing.assert_array_equal(one_hot[2], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(lb.decode_one_hot(one_hot), label)


def test_one_hot_matches_monai(two_blobs):
    from monai.networks.utils import one_hot

    reference = one_hot(torch.from_numpy(two_blobs[None, None].astype(np.int64)), num_classes=3)
    np.testing.assert_array_equal(lb.encode_one_hot(two_blobs, 3), reference[0].numpy())


def test_one_hot_out_of_range_raises():
    with pytest.raises(ValueError, match=r"3: 1 voxel"):
        lb.encode_one_hot(np.array([0, 1, 3]), num_classes=3)


def test_decode_one_hot_of_probs_takes_argmax():
    probs = np.array([[0.7, 0.2], [0.2, 0.1], [0.1, 0.7]])  # (C=3, N=2)
    np.testing.assert_array_equal(lb.decode_one_hot(probs), [0, 2])


def test_remove_small_components_by_voxels(two_blobs):
    out = lb.remove_small_components(two_blobs, min_voxels=2)
    assert lb.count_label_values(out) == {0: 384 - 37, 1: 35, 2: 2}
    assert lb.remove_small_components(two_blobs, min_voxels=9).sum() == 27


def test_remove_small_components_by_volume(two_blobs):
    # spacing (2, 1, 1) mm: 8-voxel cube = 16 mm3, 2-voxel pair = 4 mm3, 1 voxel = 2 mm3
    spacing = (2.0, 1.0, 1.0)
    keep_16 = lb.remove_small_components(two_blobs, min_volume_mm3=16, spacing_mm=spacing)
    assert lb.count_label_values(keep_16) == {0: 384 - 35, 1: 35}
    keep_4 = lb.remove_small_components(two_blobs, min_volume_mm3=3, spacing_mm=spacing)
    assert lb.count_label_values(keep_4)[2] == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"min_voxels": 2, "min_volume_mm3": 3.0}, "exactly one"),
        ({"min_volume_mm3": 3.0}, "spacing_mm"),
        ({"min_volume_mm3": 3.0, "spacing_mm": (1.0, 1.0)}, "spacing_mm must be 3 finite positive"),
    ],
)
def test_remove_small_components_bad_arguments(two_blobs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lb.remove_small_components(two_blobs, **kwargs)


def test_remove_small_components_connects_diagonals_by_default():
    label = np.array([[1, 0, 1, 1], [0, 1, 0, 1]])
    # default (ndim = 2, 8-connectivity): (0,0)-(1,1)-(0,2) touch diagonally: one blob of 5
    assert lb.remove_small_components(label, min_voxels=4).sum() == 5
    # faces only (4-connectivity): {(0,0)}, {(1,1)}, {(0,2),(0,3),(1,3)}; only the 3 stays
    np.testing.assert_array_equal(lb.remove_small_components(label, min_voxels=2, connectivity=1),
                                  [[0, 0, 1, 1], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="connectivity"):
        lb.remove_small_components(label, min_voxels=2, connectivity=3)


def test_connectivity_structure_is_faces_up_to_corners():
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    assert np.array_equal(lb.connectivity_structure(2, 1), cross)  # 4 neighbours
    assert lb.connectivity_structure(2, None).all()  # 8 neighbours, MONAI's default
    assert lb.connectivity_structure(3, 1).sum() == 7  # centre + 6 faces
    with pytest.raises(ValueError, match="connectivity must be in"):
        lb.connectivity_structure(2, 3)
