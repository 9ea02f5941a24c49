"""Tests for medseg_helpers.transforms.preprocess: intensity normalisation and resampling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_helpers.data import geometry
from medseg_helpers.data.volume import Volume
from medseg_helpers.transforms import preprocess as pp

CT_VALUES = np.array([-1000, -160, 0, 40, 240, 1000], dtype=np.int16)


# ---------------------------------------------------------------------- intensity


@pytest.mark.parametrize(
    ("preset", "values", "expected"),
    [
        # soft tissue W400/L40: window [-160, 240]; 0 HU -> 160/400 = 0.4, 40 -> 0.5
        ("soft_tissue", [-1000, -160, 0, 40, 240, 1000], [0, 0, 0.4, 0.5, 1, 1]),
        # lung W1500/L-600: window [-1350, 150]; -1000 -> 350/1500, 0 -> 1350/1500 = 0.9
        ("lung", [-2000, -1000, -600, 0, 150], [0, 350 / 1500, 0.5, 0.9, 1]),
        # bone W1800/L400: window [-500, 1300]; 700 -> 1200/1800
        ("bone", [-500, 400, 700, 3000], [0, 0.5, 1200 / 1800, 1]),
        # brain W80/L40: window [0, 80]; 20 -> 0.25
        ("brain", [-10, 0, 20, 40, 100], [0, 0, 0.25, 0.5, 1]),
    ],
)
def test_window_presets_by_hand(preset, values, expected):
    out = pp.apply_ct_window(np.array(values, dtype=np.int16), preset)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_window_explicit_width_level_matches_preset():
    by_preset = pp.apply_ct_window(CT_VALUES, "soft_tissue")
    by_numbers = pp.apply_ct_window(CT_VALUES, width_hu=400, level_hu=40)
    np.testing.assert_array_equal(by_preset, by_numbers)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "liver"}, "unknown window preset"),
        ({"preset": "lung", "width_hu": 10}, "not both"),
        ({"width_hu": 400}, "both width_hu and level_hu"),
        ({"width_hu": 0, "level_hu": 40}, "width_hu must be > 0"),
    ],
)
def test_window_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pp.apply_ct_window(CT_VALUES, **kwargs)


def test_zscore_by_hand():
    # [1, 2, 3, 4]: mean 2.5, std sqrt(1.25) = 1.1180 -> [-1.342, -0.447, 0.447, 1.342]
    out = pp.normalise_zscore(np.array([1, 2, 3, 4], dtype=np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.array([-1.5, -0.5, 0.5, 1.5]) / np.sqrt(1.25), rtol=1e-6)


def test_zscore_in_mask_has_zero_mean_unit_std(ct_volume):
    rng = np.random.default_rng(0)
    ct = ct_volume.array + rng.normal(0, 20, ct_volume.array.shape)
    body = ct > -500
    out = pp.normalise_zscore(ct, mask=body)
    assert abs(out[body].mean()) < 1e-4
    assert abs(out[body].std() - 1) < 1e-4
    # air is far below the body mean, in the body's std units
    assert out[~body].mean() < -5


@pytest.mark.parametrize(
    "normalise",
    [pp.normalise_zscore, pp.normalise_minmax, lambda x: pp.normalise_minmax(x, 0, 100)],
)
def test_constant_image_gives_zeros_without_warning(normalise):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalise(np.full((4, 5, 6), 7, dtype=np.int32))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, 0)


def test_minmax_by_hand():
    # plain min-max: (x - 0) / (10 - 0)
    out = pp.normalise_minmax(np.array([0, 5, 10]), 0, 100)
    np.testing.assert_allclose(out, [0, 0.5, 1])


def test_robust_minmax_ignores_one_metal_voxel():
    ct = np.full(10_000, 40.0)
    ct[:5000] = -1000.0
    ct[0] = 3000.0  # metal: plain min-max would squeeze soft tissue to 1040/4000 = 0.26
    assert pp.normalise_minmax(ct, 0, 100)[-1] == pytest.approx(0.26)
    assert pp.normalise_minmax(ct)[-1] == pytest.approx(1.0)


def test_clip_percentiles_by_hand():
    # percentiles of 0..100 are the values themselves
    out = pp.clip_percentiles(np.arange(101), lower=10, upper=90)
    assert out.min() == 10 and out.max() == 90 and out.dtype == np.float32


def test_clip_percentiles_within_mask():
    image = np.array([-1000, -1000, 0, 10, 20, 30, 40])
    out = pp.clip_percentiles(image, 0, 100, mask=image > -500)
    np.testing.assert_array_equal(out, [0, 0, 0, 10, 20, 30, 40])


@pytest.mark.parametrize(
    "normalise",
    [
        lambda x: pp.apply_ct_window(x, "lung"),
        pp.normalise_zscore,
        pp.normalise_minmax,
        pp.clip_percentiles,
    ],
)
def test_nan_raises_with_count(normalise):
    image = np.zeros((3, 4), dtype=np.float32)
    image[0, :2] = np.nan
    with pytest.raises(ValueError, match="2 NaN"):
        normalise(image)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: pp.normalise_zscore(x, mask=np.zeros(x.shape, bool)), "no voxels"),
        (lambda x: pp.normalise_zscore(x, mask=np.ones((2, 2), bool)), "mask shape"),
        (lambda x: pp.clip_percentiles(x, 60, 40), "lower < upper"),
        (lambda x: pp.normalise_zscore(np.array([1.0, np.inf])), "infinite"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.ones((3, 4)))


def test_naive_max_normalise_fails_as_documented(ct_volume):
    out = pp.naive_max_normalise(ct_volume.array)
    # max is the bone voxel (700): air maps to -1000/700 < -1, soft tissue to 40/700
    assert out.min() == pytest.approx(-1000 / 700)
    assert np.sort(np.unique(out))[1] == pytest.approx(40 / 700)
    with pytest.warns(RuntimeWarning):
        empty = pp.naive_max_normalise(np.zeros((4, 4)))
    assert np.isnan(empty).all()


# ---------------------------------------------------------------------- resampling


def test_resample_geometry(ct_volume):
    out = pp.resample_to_spacing(ct_volume, (1.5, 2.0, 2.0))
    # new size = round(old_size * old_spacing / new_spacing): 10*3/1.5, 20*1/2, 30*0.8/2
    assert out.spatial_shape == (20, 10, 12)
    assert out.spacing_mm == (1.5, 2.0, 2.0)
    np.testing.assert_allclose(out.direction, ct_volume.direction)
    # same extent, so the centres of the two grids coincide and so do the outer edges
    centre_old = geometry.index_to_physical(ct_volume, (np.array(ct_volume.spatial_shape) - 1) / 2)
    centre_new = geometry.index_to_physical(out, (np.array(out.spatial_shape) - 1) / 2)
    np.testing.assert_allclose(centre_new, centre_old, atol=1e-9)
    edge_old = geometry.index_to_physical(ct_volume, [-0.5, -0.5, -0.5])
    edge_new = geometry.index_to_physical(out, [-0.5, -0.5, -0.5])
    np.testing.assert_allclose(edge_new, edge_old, atol=1e-9)
    assert out.array.dtype == np.float32


def test_linear_resampling_of_a_ramp_is_exact():
    # value = z position in mm of slice centres 0, 4, ..., 28 (edges -2 and 30). At 1 mm the
    # 32 new centres are -1.5, -0.5, ..., 29.5: exact inside [0, 28], clamped beyond it.
    z_mm = np.arange(8, dtype=np.float32) * 4.0
    volume = Volume(np.broadcast_to(z_mm[:, None, None], (8, 3, 3)).copy(), (4.0, 1.0, 1.0))
    out = pp.resample_to_spacing(volume, (1.0, 1.0, 1.0))
    assert out.spatial_shape == (32, 3, 3)
    assert out.origin_mm[2] == -1.5
    np.testing.assert_allclose(out.array[2:30, 1, 1], np.arange(2, 30) - 1.5, atol=1e-4)
    np.testing.assert_allclose(out.array[[0, 1, 30, 31], 1, 1], [0, 0, 28, 28], atol=1e-4)


def test_resampling_there_and_back_restores_the_grid(ct_volume):
    there = pp.resample_to_spacing(ct_volume, (1.5, 0.5, 0.4))
    back = pp.resample_to_spacing(there, ct_volume.spacing_mm)
    assert back.same_geometry(ct_volume)


def test_label_resampling_keeps_values_and_dtype(ct_volume):
    label = np.zeros(ct_volume.spatial_shape, dtype=np.uint8)
    label[2:8, 5:15, 8:22] = 1
    label[4:6, 8:12, 10:14] = 2
    out = pp.resample_to_spacing(ct_volume.with_array(label), (1.1, 0.7, 0.9), is_label=True)
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) == {0, 1, 2}


def test_resample_multichannel_resamples_each_channel_alone():
    volume = Volume(np.random.default_rng(0).random((2, 6, 8, 8)).astype(np.float32))
    out = pp.resample_to_spacing(volume, (0.5, 2.0, 2.0), interpolator="bspline")
    assert out.array.shape == (2, 12, 4, 4)
    for channel in range(2):
        alone = pp.resample_to_spacing(volume.with_array(volume.array[channel]),
                                       (0.5, 2.0, 2.0), interpolator="bspline")
        np.testing.assert_array_equal(out.array[channel], alone.array)
        assert out.same_geometry(alone)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing_mm": (1.0, 0.0, 1.0)}, "positive"),
        ({"spacing_mm": (1.0, 1.0, 1.0), "interpolator": "cubic"}, "interpolator"),
    ],
)
def test_resample_bad_arguments_raise(ct_volume, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pp.resample_to_spacing(ct_volume, **kwargs)


def test_resampled_volume_roundtrips_through_sitk(ct_volume):
    out = pp.resample_to_spacing(ct_volume, (2.0, 2.0, 2.0))
    again = Volume.from_sitk(out.to_sitk())
    assert again.same_geometry(out)
    assert isinstance(out.to_sitk(), sitk.Image)
