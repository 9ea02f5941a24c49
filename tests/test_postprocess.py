"""Post-processing: keep_largest_component (hand-worked cases, connectivity, MONAI's
transform) and the small-component rule chosen on validation patients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg_helpers.data.volume import Volume
from medseg_helpers.transforms.postprocess import (
    SmallComponentFilter,
    choose_small_component_filter,
    keep_largest_component,
    largest_component_mask,
    smallest_components_mm3,
)


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


# ---------------------------------------------- small components, chosen on validation
def _volume(array: np.ndarray, spacing_mm=(1.0, 1.0, 1.0)) -> Volume:
    return Volume(np.asarray(array, dtype=np.uint8), spacing_mm=spacing_mm)


def _blobs(*placements: tuple[int, int, int]) -> np.ndarray:
    """(1, 8, 12) label map with a lesion (2) run of ``length`` voxels at ``(y, x)`` per
    placement ``(y, x, length)``, inside an organ (1) everywhere else on rows 0-5."""
    label = np.zeros((1, 8, 12), np.uint8)
    label[0, :6] = 1
    for y, x, length in placements:
        label[0, y, x:x + length] = 2
    return label


def test_filter_removes_components_under_a_volume_in_mm3_with_the_scans_spacing() -> None:
    label = _blobs((0, 0, 2), (3, 0, 4))  # lesion runs of 2 and 4 voxels
    rule = SmallComponentFilter({2: 3.0})
    cleaned = rule.apply(_volume(label)).array  # 1 mm voxels: 2 mm³ < 3 mm³ goes
    assert (cleaned == 2).sum() == 4 and cleaned[0, 0, 0] == 0
    thick = rule.apply(_volume(label, (2.0, 1.0, 1.0))).array  # 2 mm voxels: 4 mm³ stays
    assert (thick == 2).sum() == 6
    assert (cleaned == 1).sum() == (label == 1).sum()  # the organ is not touched
    assert np.array_equal(SmallComponentFilter().apply(_volume(label)).array, label)


def test_filter_round_trips_through_json_and_describes_itself() -> None:
    rule = SmallComponentFilter({2: 4.5})
    assert SmallComponentFilter.from_json(rule.to_json()) == rule
    assert rule.describe(["background", "organ", "lesion"]) == \
        "lesion components under 4.5 mm³ removed"
    assert SmallComponentFilter().describe(["background"]) == "none"
    with pytest.raises(ValueError, match="malformed post-processing rule"):
        SmallComponentFilter.from_json('{"min_volume": 3}')


def test_smallest_components_are_measured_in_mm3_over_all_labels() -> None:
    labels = [_volume(_blobs((0, 0, 3), (3, 0, 5))), _volume(_blobs((0, 0, 4)), (2, 1, 1))]
    # lesions: 3 and 5 voxels of 1 mm³, then 4 voxels of 2 mm³ = 8 mm³; smallest 3 mm³
    assert smallest_components_mm3(labels, classes=[2]) == {2: 3.0}
    assert smallest_components_mm3(labels, classes=[3]) == {}  # never present: left out


def test_choice_keeps_a_volume_only_if_it_raises_validation_dice() -> None:
    # case a: an 8-voxel lesion found exactly, plus one stray lesion voxel elsewhere;
    # case b: no lesion, one stray voxel. Raw lesion Dice: a 2*8/(9+8) = 0.941, b 0.
    truth_a, pred_a = _blobs((0, 0, 8)), _blobs((0, 0, 8), (4, 10, 1))
    truth_b, pred_b = _blobs(), _blobs((2, 3, 1))
    cases = [("a", _volume(pred_a), _volume(truth_a)), ("b", _volume(pred_b), _volume(truth_b))]
    # smallest training lesion 8 mm³: candidates 0, 1, 2 and 4 mm³; 1 mm³ removes nothing
    # (a 1 mm³ voxel is not < 1), 2 and 4 mm³ remove the strays: a scores 1, b has no
    # lesion left in prediction or truth (NaN, skipped): mean 1.0. Ties keep the smaller.
    rule, table = choose_small_component_filter(cases, 3, {2: 8.0})
    assert rule == SmallComponentFilter({2: 2.0})
    np.testing.assert_allclose(table["mean_dice"], [2 * 8 / 17 / 2, 2 * 8 / 17 / 2, 1.0, 1.0])
    assert table["chosen"].tolist() == [False, False, True, False]
    # without the strays nothing improves, so nothing is removed
    clean = [("a", _volume(truth_a), _volume(truth_a))]
    assert choose_small_component_filter(clean, 3, {2: 8.0})[0] == SmallComponentFilter()


def test_removing_the_only_false_alarms_on_validation_without_the_class_wins() -> None:
    # neither case has a lesion; one predicts a stray voxel: raw mean lesion Dice 0 (case
    # b; case a is NaN), and once it is removed no case has a lesion anywhere (NaN: ranked 1)
    cases = [("a", _volume(_blobs()), _volume(_blobs())),
             ("b", _volume(_blobs((2, 3, 1))), _volume(_blobs()))]
    rule, table = choose_small_component_filter(cases, 3, {2: 8.0})
    assert rule == SmallComponentFilter({2: 2.0})
    assert table["mean_dice"].iloc[0] == 0.0 and table["mean_dice"].iloc[2:].isna().all()
