"""Tests for transforms.cropping: crop to the foreground and pad, geometry kept, undone."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from medseg_helpers.data.volume import Volume
from medseg_helpers.transforms import cropping


def _physical(volume: Volume, index_zyx) -> np.ndarray:
    index_xyz = [int(i) for i in index_zyx[::-1]]
    return np.array(volume.to_sitk().TransformIndexToPhysicalPoint(index_xyz))


def test_crop_keeps_physical_positions_and_undoes(ct_volume):
    label = ct_volume.with_array((ct_volume.array > 0).astype(np.uint8))
    image, cropped_label, box = cropping.crop_to_foreground(
        ct_volume, label, margin=1, mask=ct_volume.array > -500
    )
    # box of the soft-tissue block [2:8, 5:15, 8:22] plus one voxel each side
    assert box.start == (1, 4, 7) and box.stop == (9, 16, 23)
    assert image.spatial_shape == cropped_label.spatial_shape == (8, 12, 16)
    for index in [(0, 0, 0), (3, 5, 7), (7, 11, 15)]:
        source_index = np.add(index, box.start)
        np.testing.assert_allclose(_physical(image, index), _physical(ct_volume, source_index))
        assert image.array[index] == ct_volume.array[tuple(source_index)]
    restored = cropping.undo_crop(image, box, fill_value=-1000)
    assert restored.same_geometry(ct_volume, atol=1e-9)
    np.testing.assert_array_equal(restored.array, ct_volume.array)


def test_crop_default_mask_is_nonzero_voxels():
    array = np.zeros((5, 6, 7), dtype=np.float32)
    array[1, 2, 3] = 1.0
    image, label, box = cropping.crop_to_foreground(Volume(array))
    assert label is None and image.spatial_shape == (1, 1, 1) and box.start == (1, 2, 3)


def test_crop_errors(ct_volume):
    with pytest.raises(ValueError, match="no foreground"):
        cropping.crop_to_foreground(ct_volume, mask=np.zeros(ct_volume.spatial_shape))
    other = Volume(np.zeros((10, 20, 29)))
    with pytest.raises(ValueError, match=r"\(10, 20, 30\) vs \(10, 20, 29\)"):
        cropping.crop_to_foreground(ct_volume, other)


def test_pad_to_multiple_keeps_physical_positions_and_undoes(ct_volume):
    label = ct_volume.with_array((ct_volume.array > 0).astype(np.uint8))
    image, padded_label, pad = cropping.pad_to_multiple(ct_volume, label, multiple=8)
    # (10, 20, 30) -> (16, 24, 32); missing (6, 4, 2) split before/after as (3, 2, 1)
    assert image.spatial_shape == padded_label.spatial_shape == (16, 24, 32)
    assert pad.before == (3, 2, 1) and pad.after == (3, 2, 1)
    np.testing.assert_allclose(_physical(image, pad.before), _physical(ct_volume, (0, 0, 0)))
    assert image.array[0, 0, 0] == -1000  # default fill: image minimum (air)
    assert padded_label.array[0, 0, 0] == 0
    restored = cropping.undo_pad(image, pad)
    assert restored.same_geometry(ct_volume, atol=1e-9)
    np.testing.assert_array_equal(restored.array, ct_volume.array)
    np.testing.assert_array_equal(cropping.undo_pad(padded_label, pad).array, label.array)


def test_pad_to_shape_never_crops_and_handles_channels():
    volume = Volume(np.ones((2, 4, 9, 5), dtype=np.float32))
    image, _, pad = cropping.pad_to_shape(volume, shape=(5, 6, 5), image_fill=0.0)
    assert image.array.shape == (2, 5, 9, 5)
    assert pad.before == (0, 0, 0) and pad.after == (1, 0, 0)


def test_crop_box_and_pad_widths_survive_json(ct_volume):
    _, _, box = cropping.crop_to_foreground(ct_volume, mask=ct_volume.array > -500)
    _, _, pad = cropping.pad_to_multiple(ct_volume, multiple=16)
    assert cropping.CropBox(**json.loads(json.dumps(asdict(box)))) == box
    assert cropping.PadWidths(**json.loads(json.dumps(asdict(pad)))) == pad
