"""`Volume` keeps array order (Z, Y, X) and converts geometry exactly to ITK and nibabel."""

import math
import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg_helpers.data.phantom import make_phantom
from medseg_helpers.data.volume import Volume, check_spacing
from medseg_helpers.metrics.surface import hausdorff_distance
from medseg_helpers.transforms.label_noise import perturb_boundary
from medseg_helpers.transforms.labels import remove_small_components
from medseg_helpers.transforms.preprocess import resample_to_spacing


def _rotation(seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q


@pytest.fixture
def oblique() -> Volume:
    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    return Volume(array, spacing_mm=(2.5, 0.75, 0.5), origin_mm=(10.0, -20.0, 30.0),
                  direction=_rotation())


def test_sitk_round_trip_keeps_array_and_geometry(oblique):
    back = Volume.from_sitk(oblique.to_sitk())
    np.testing.assert_array_equal(back.array, oblique.array)
    assert back.same_geometry(oblique, atol=1e-12)


def test_sitk_sizes_are_the_reversed_array_shape(oblique):
    image = oblique.to_sitk()
    assert image.GetSize() == (7, 6, 5)
    assert image.GetSpacing() == (0.5, 0.75, 2.5)


def test_affine_ras_maps_voxels_like_sitk_after_lps_to_ras_flip(oblique):
    image = oblique.to_sitk()
    index_xyz = (3, 2, 4)
    lps = np.array(image.TransformIndexToPhysicalPoint(index_xyz))
    ras = oblique.affine_ras @ np.array([*index_xyz, 1.0])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)


def test_nibabel_round_trip_through_a_nifti_file(oblique, tmp_path):
    path = tmp_path / "x.nii.gz"
    sitk.WriteImage(oblique.to_sitk(), str(path))
    loaded = nib.load(path)
    back = Volume.from_affine_ras(np.asarray(loaded.dataobj), loaded.affine)
    np.testing.assert_array_equal(back.array, oblique.array)
    assert back.same_geometry(oblique, atol=1e-5)  # NIfTI stores geometry as float32


def test_channel_first_volume_becomes_a_vector_image():
    array = np.random.default_rng(0).random((4, 3, 5, 6)).astype(np.float32)
    volume = Volume(array)
    image = volume.to_sitk()
    assert image.GetNumberOfComponentsPerPixel() == 4 and image.GetSize() == (6, 5, 3)
    np.testing.assert_array_equal(Volume.from_sitk(image).array, array)
    assert volume.spatial_shape == (3, 5, 6) and volume.num_channels == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"array": np.zeros((4, 4))}, "must be \\(Z, Y, X\\)"),
        ({"array": np.zeros((2, 2, 2)), "spacing_mm": (1, 0, 1)}, "spacing_mm must be 3 finite"),
        ({"array": np.zeros((2, 2, 2)), "spacing_mm": (1, 1)}, "spacing_mm must be 3 finite"),
        ({"array": np.zeros((2, 2, 2)), "origin_mm": (0, np.nan, 0)}, "origin_mm must be"),
    ],
)
def test_invalid_geometry_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Volume(**kwargs)


def test_with_array_keeps_geometry_and_checks_shape(oblique):
    pred = oblique.with_array(np.zeros(oblique.spatial_shape, np.uint8))
    assert pred.same_geometry(oblique) and pred.array.dtype == np.uint8
    with pytest.raises(ValueError, match=r"\(5, 6, 8\) != volume spatial shape \(5, 6, 7\)"):
        oblique.with_array(np.zeros((5, 6, 8)))


def test_sheared_affine_is_rejected():
    affine = np.eye(4)
    affine[0, 1] = 0.5
    with pytest.raises(ValueError, match="shear"):
        Volume.from_affine_ras(np.zeros((2, 2, 2)), affine)


@pytest.mark.parametrize(
    ("spacing", "ndim", "expected"),
    [
        ((2, 1, 0.5), 3, (2.0, 1.0, 0.5)),
        ([0.7, 0.7], 2, (0.7, 0.7)),
        (np.array([3.0, 1.0, 1.0], np.float32), 3, (3.0, 1.0, 1.0)),
    ],
)
def test_check_spacing_returns_one_float_per_axis(spacing, ndim, expected):
    checked = check_spacing(spacing, ndim)
    assert checked == expected and all(type(s) is float for s in checked)


@pytest.mark.parametrize(
    "spacing",
    [(1, 0, 1), (1, -1, 1), (1, math.nan, 1), (1, math.inf, 1), (1, 1), (1, 1, 1, 1), 2.0,
     "abc", None],
)
def test_check_spacing_rejects_what_is_not_a_voxel_size(spacing):
    message = ("spacing_mm must be 3 finite positive numbers in mm, one per array axis; "
               f"got {spacing!r}")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_spacing(spacing)


def test_every_spacing_check_in_the_package_reads_the_same():
    bad = (1.0, 0.0, 1.0)
    label = np.zeros((4, 16, 16), np.uint8)
    calls = [
        lambda: Volume(np.zeros((2, 2, 2)), spacing_mm=bad),
        lambda: resample_to_spacing(Volume(np.zeros((2, 2, 2))), bad),
        lambda: make_phantom(np.random.default_rng(0), "mr", (4, 16, 16), bad),
        lambda: perturb_boundary(label, bad, 1.0),
        lambda: hausdorff_distance(label, label, bad),
        lambda: remove_small_components(label, min_volume_mm3=1.0, spacing_mm=bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=re.escape(f"spacing_mm must be 3 finite positive "
                                                       f"numbers in mm, one per array axis; "
                                                       f"got {bad!r}")):
            call()
