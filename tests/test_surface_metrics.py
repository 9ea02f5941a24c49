"""HD95, average surface distance and surface Dice: hand-worked cases, conventions, MONAI."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from medseg_helpers.metrics.surface import (
    average_surface_distance,
    boundary_metrics,
    hausdorff_distance,
    mask_surface,
    surface_dice,
    surface_distances,
)


def _onehot(mask: np.ndarray) -> torch.Tensor:
    """(1, 2, *spatial) float one-hot of a binary mask, as MONAI's metrics want."""
    mask = np.asarray(mask, bool)
    return torch.from_numpy(np.stack([~mask, mask])[None]).float()


def _monai(name: str, pred: np.ndarray, truth: np.ndarray, spacing, **kwargs) -> float:
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    functions = {"hd": compute_hausdorff_distance, "asd": compute_average_surface_distance,
                 "nsd": compute_surface_dice}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks
        return functions[name](_onehot(pred), _onehot(truth), spacing=spacing, **kwargs).item()


def _blobs(seed: int, shape=(12, 20, 18)) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping irregular 3D masks (ellipsoids with random bumps)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = np.array(shape) / 2

    def blob(shift, radii):
        terms = zip(grid, centre, shift, radii, strict=True)
        d = sum(((g - c - s) / r) ** 2 for g, c, s, r in terms)
        return d + 0.3 * rng.random(shape) < 1.0

    truth = blob((0, 0, 0), (4, 6, 5))
    pred = blob(rng.normal(0, 1, 3), (4, 5 + rng.random() * 2, 5))
    pred[1, 1, 1] = True  # a far-away false-positive voxel: HD100 >> HD95
    return pred, truth


def test_surface_of_a_filled_square_is_its_ring() -> None:
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    expected = mask.copy()
    expected[2, 2] = False  # only the centre has all four face neighbours inside
    assert np.array_equal(mask_surface(mask), expected)
    assert mask_surface(np.ones((3, 3), bool)).sum() == 8  # image border counts as outside


def test_hand_worked_distances_with_anisotropic_spacing() -> None:
    pred, truth = np.zeros((3, 1, 5), bool), np.zeros((3, 1, 5), bool)
    truth[0, 0, 0] = True
    pred[2, 0, 0] = True  # 2 slices away along z at 5 mm
    spacing = (5.0, 1.0, 0.5)
    assert hausdorff_distance(pred, truth, spacing) == pytest.approx(10.0)
    pred[2, 0, 0], pred[0, 0, 4] = False, True  # 4 columns away along x at 0.5 mm
    assert hausdorff_distance(pred, truth, spacing) == pytest.approx(2.0)
    # both masks: {(0,0,0)} and {(0,0,3), (0,0,4)}: pred->truth (1.5, 2.0), truth->pred (1.5,)
    pred[0, 0, 3] = True
    distances = surface_distances(pred, truth, spacing)
    assert sorted(distances.pred_to_truth) == pytest.approx([1.5, 2.0])
    assert average_surface_distance(pred, truth, spacing) == pytest.approx(5.0 / 3)
    assert average_surface_distance(pred, truth, spacing, symmetric=False) == pytest.approx(1.75)
    # NSD at 1.5 mm: 1 of 2 pred voxels + 1 of 1 truth voxel within: 2 / 3
    assert surface_dice(pred, truth, 1.5, spacing) == pytest.approx(2 / 3)


def test_identical_masks_have_zero_distance_and_nsd_one() -> None:
    _, truth = _blobs(0)
    metrics = boundary_metrics(truth, truth, (3.0, 1.0, 1.0), tolerance_mm=0.0)
    assert metrics == {"hd95_mm": 0.0, "asd_mm": 0.0, "nsd": 1.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (5.0, 0.8, 1.2)])
def test_matches_monai_on_random_blobs(seed: int, spacing: tuple) -> None:
    pred, truth = _blobs(seed)
    assert hausdorff_distance(pred, truth, spacing) == pytest.approx(
        _monai("hd", pred, truth, spacing, percentile=95), rel=1e-5)
    assert hausdorff_distance(pred, truth, spacing, percentile=100) == pytest.approx(
        _monai("hd", pred, truth, spacing), rel=1e-5)
    for symmetric in (False, True):
        assert average_surface_distance(pred, truth, spacing, symmetric) == pytest.approx(
            _monai("asd", pred, truth, spacing, symmetric=symmetric), rel=1e-5)
    for tolerance in (0.0, 1.0, 2.5):
        assert surface_dice(pred, truth, tolerance, spacing) == pytest.approx(
            _monai("nsd", pred, truth, spacing, class_thresholds=[tolerance]), rel=1e-5)


def test_matches_monai_in_2d() -> None:
    pred, truth = (m[6] for m in _blobs(4))
    assert hausdorff_distance(pred, truth, (0.7, 1.3)) == pytest.approx(
        _monai("hd", pred, truth, (0.7, 1.3), percentile=95), rel=1e-5)


def test_a_one_slice_shift_costs_the_slice_thickness() -> None:
    _, truth = _blobs(5)
    pred = np.roll(truth, 1, axis=0)  # shifted by one slice along z
    assert hausdorff_distance(pred, truth, (1.0, 1.0, 1.0), percentile=100) == 1.0
    assert hausdorff_distance(pred, truth, (5.0, 1.0, 1.0), percentile=100) > 1.0
    assert hausdorff_distance(pred, truth, (5.0, 1.0, 1.0), percentile=100) == pytest.approx(
        _monai("hd", pred, truth, (5.0, 1.0, 1.0)), rel=1e-5)


def test_hd95_ignores_an_outlier_that_hd100_reports() -> None:
    pred, truth = _blobs(0)
    assert hausdorff_distance(pred, truth, percentile=100) > 2 * hausdorff_distance(pred, truth)


def test_both_empty_gives_nan_like_monai() -> None:
    empty = np.zeros((4, 5, 6), bool)
    metrics = boundary_metrics(empty, empty, None, tolerance_mm=1.0)
    assert all(math.isnan(v) for v in metrics.values())
    assert math.isnan(_monai("hd", empty, empty, None, percentile=95))
    assert math.isnan(_monai("nsd", empty, empty, None, class_thresholds=[1.0]))


@pytest.mark.parametrize("which", ["pred", "truth"])
def test_one_empty_gives_inf_or_the_penalty_and_nsd_zero(which: str) -> None:
    mask, empty = _blobs(1)[1], np.zeros((12, 20, 18), bool)
    pred, truth = (empty, mask) if which == "pred" else (mask, empty)
    assert hausdorff_distance(pred, truth) == math.inf
    assert average_surface_distance(pred, truth, symmetric=False) == math.inf
    assert hausdorff_distance(pred, truth, empty_distance_mm=373.0) == 373.0
    assert surface_dice(pred, truth, 2.0) == 0.0
    # MONAI agrees on HD100, ASD and NSD, but its percentile HD is NaN (inf - inf in
    # torch.quantile): a missed structure would silently drop out of a mean of HD95
    assert _monai("hd", pred, truth, None) == math.inf
    assert _monai("asd", pred, truth, None) == math.inf
    assert _monai("nsd", pred, truth, None, class_thresholds=[2.0]) == 0.0
    assert math.isnan(_monai("hd", pred, truth, None, percentile=95))


def test_crop_does_not_change_distances_at_the_image_border() -> None:
    pred, truth = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    pred[:, :3], truth[:, :4] = True, True  # both touch three image borders
    assert hausdorff_distance(pred, truth, percentile=100) == _monai("hd", pred, truth, None)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: hausdorff_distance(np.zeros((2, 3)), np.zeros((2, 4))),
     r"pred \(2, 3\) and truth \(2, 4\)"),
    (lambda: hausdorff_distance(np.zeros(3), np.zeros(3)), "2D"),
    (lambda: hausdorff_distance(np.zeros((2, 3)), np.zeros((2, 3)), (1.0,)), "spacing_mm"),
    (lambda: hausdorff_distance(np.zeros((2, 3)), np.zeros((2, 3)), (1.0, -1.0)), "positive"),
    (lambda: hausdorff_distance(np.zeros((2, 3)), np.zeros((2, 3)), percentile=101),
     "percentile"),
    (lambda: surface_dice(np.zeros((2, 3)), np.zeros((2, 3)), -1.0), "tolerance_mm"),
])
def test_bad_inputs_raise_clear_errors(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()
