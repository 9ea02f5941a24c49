"""Specification of `medseg_helpers.data.io`: formats, geometry, and every bad input."""

from __future__ import annotations

import logging
import os
import re

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from medseg_helpers.data import geometry, io
from medseg_helpers.data.geometry import GeometryMismatchError
from medseg_helpers.data.io import VolumeReadError
from medseg_helpers.data.volume import Volume

# Geometry made of numbers that float32 stores exactly (NIfTI keeps geometry as float32),
# with a direction that is not the identity: index x points to anterior (-y in LPS).
SPACING = (2.5, 0.75, 0.5)  # (sz, sy, sx) mm
ORIGIN = (-10.5, 20.25, -30.0)  # LPS (x, y, z) mm
DIRECTION = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
FILE_EXTENSIONS = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"]


def make_ct(shape=(4, 5, 6)) -> Volume:
    """Tiny CT-like int16 volume (HU from -1000 upwards), every voxel distinct."""
    array = (np.arange(np.prod(shape)).reshape(shape) - 1000).astype(np.int16)
    return Volume(array, SPACING, ORIGIN, DIRECTION)


def assert_same_volume(actual: Volume, expected: Volume, atol: float = 1e-6) -> None:
    np.testing.assert_array_equal(actual.array, expected.array)
    assert actual.array.dtype == expected.array.dtype
    np.testing.assert_allclose(actual.spacing_mm, expected.spacing_mm, atol=atol, rtol=0)
    np.testing.assert_allclose(actual.origin_mm, expected.origin_mm, atol=atol, rtol=0)
    np.testing.assert_allclose(actual.direction, expected.direction, atol=atol, rtol=0)


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("ext", FILE_EXTENSIONS)
def test_round_trip_keeps_voxels_dtype_and_geometry(tmp_path, ext):
    volume = make_ct()
    path = io.write_volume(volume, tmp_path / f"ct{ext}")
    assert_same_volume(io.read_volume(path), volume, atol=1e-6)


@pytest.mark.parametrize("ext", FILE_EXTENSIONS)
def test_write_leaves_only_the_final_files(tmp_path, ext):
    io.write_volume(make_ct(), tmp_path / f"ct{ext}")
    names = sorted(p.name for p in tmp_path.iterdir())
    data_file = {".nhdr": ["ct.raw.gz"], ".mhd": ["ct.zraw"]}.get(ext, [])
    assert names == sorted([f"ct{ext}", *data_file])


@pytest.mark.parametrize(("ext", "atol"), [(".nii.gz", 1e-5), (".nrrd", 1e-9), (".mha", 1e-9)])
def test_oblique_geometry_holds_to_the_format_precision(tmp_path, ext, atol):
    # NIfTI stores the affine as float32: relative error ~6e-8, i.e. ~1e-5 mm at 123 mm.
    direction = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    volume = Volume(make_ct().array, (3.3, 0.9, 0.7), (-123.456, 78.9, -30.1), direction)
    assert_same_volume(io.read_volume(io.write_volume(volume, tmp_path / f"ct{ext}")), volume, atol)


def test_nifti_written_by_nibabel_reads_with_the_same_affine(tmp_path):
    array_xyz = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    affine = np.array([[0, -0.75, 0, 10.5], [0.5, 0, 0, -20.25], [0, 0, 2.5, -30], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(array_xyz, affine), tmp_path / "nib.nii.gz")
    volume = io.read_volume(tmp_path / "nib.nii.gz")
    np.testing.assert_array_equal(volume.array, array_xyz.transpose(2, 1, 0))
    np.testing.assert_allclose(volume.affine_ras, affine, atol=1e-6)


def test_scaled_nifti_reads_like_simpleitk(tmp_path):
    # CT stored as int16 with scl_slope/scl_inter: HU = 0.5 * stored - 1024.
    stored_xyz = np.arange(-60, 60, dtype=np.int16).reshape(6, 5, 4)
    image = nib.Nifti1Image(stored_xyz, np.diag([0.5, 0.75, 2.5, 1.0]))
    image.header.set_slope_inter(0.5, -1024.0)
    nib.save(image, tmp_path / "ct.nii.gz")
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ct.nii.gz")))
    volume = io.read_volume(tmp_path / "ct.nii.gz")
    assert volume.array.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(volume.array, expected)
    assert volume.array[0, 0, 0] == 0.5 * -60 - 1024


def test_big_endian_nifti_reads_as_native_dtype(tmp_path):
    data_xyz = np.arange(120, dtype=">i2").reshape(6, 5, 4)
    nib.save(nib.Nifti1Image(data_xyz, np.eye(4)), tmp_path / "be.nii")
    array = io.read_volume(tmp_path / "be.nii").array
    assert array.dtype == np.dtype("=i2")
    np.testing.assert_array_equal(array, data_xyz.T)


def test_vector_nifti_from_simpleitk_reads_channel_first(tmp_path):
    # SimpleITK writes vector pixels as a 5D NIfTI (X, Y, Z, 1, C).
    channels = [make_ct().to_sitk(), sitk.Abs(make_ct().to_sitk())]
    sitk.WriteImage(sitk.Compose(channels), str(tmp_path / "vec.nii.gz"))
    volume = io.read_volume(tmp_path / "vec.nii.gz")
    assert volume.array.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(volume.array[1], np.abs(make_ct().array))
    assert volume.same_geometry(make_ct(), atol=1e-6)


def test_nifti_with_a_singleton_4th_axis_reads_as_3d(tmp_path):
    # Some tools save a 3D label as (X, Y, Z, 1); SimpleITK reads it as 3D, and so do we.
    data_xyz1 = np.arange(120, dtype=np.uint8).reshape(6, 5, 4, 1)  # every voxel distinct
    nib.save(nib.Nifti1Image(data_xyz1, np.eye(4)), tmp_path / "lab.nii")
    np.testing.assert_array_equal(io.read_volume(tmp_path / "lab.nii").array, data_xyz1[..., 0].T)


def test_4d_nifti_reads_channel_first_with_its_3d_geometry(tmp_path):
    # Decathlon Task01 layout: (X, Y, Z, C) on disk, one channel per MR sequence.
    data_xyzc = np.random.default_rng(0).random((6, 5, 4, 3)).astype(np.float32)
    affine = np.array([[-0.5, 0, 0, 1.5], [0, -0.75, 0, 2.0], [0, 0, 2.5, -3.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data_xyzc, affine), tmp_path / "brats.nii.gz")
    volume = io.read_volume(tmp_path / "brats.nii.gz")
    assert volume.array.shape == (3, 4, 5, 6)
    for channel in range(3):
        np.testing.assert_array_equal(volume.array[channel], data_xyzc[..., channel].T)
    np.testing.assert_allclose(volume.affine_ras, affine, atol=1e-6)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_channel_first_volume_round_trips(tmp_path, ext):
    channels = np.stack([make_ct().array, -make_ct().array])
    volume = make_ct().with_array(channels)
    assert_same_volume(io.read_volume(io.write_volume(volume, tmp_path / f"mr{ext}")), volume)


def test_channel_first_volume_is_written_in_decathlon_layout(tmp_path):
    array = np.arange(240, dtype=np.float32).reshape(2, 4, 5, 6)  # (C, Z, Y, X), distinct
    io.write_volume(make_ct().with_array(array), tmp_path / "mr.nii.gz")
    on_disk = np.asarray(nib.load(tmp_path / "mr.nii.gz").dataobj)
    np.testing.assert_array_equal(on_disk, array.transpose(3, 2, 1, 0))  # (X, Y, Z, C)


def test_bool_array_is_written_as_uint8(tmp_path):
    volume = make_ct().with_array(make_ct().array > -950)  # 70 of 120 voxels True
    read = io.read_volume(io.write_volume(volume, tmp_path / "mask.nrrd"))
    assert read.array.dtype == np.uint8
    np.testing.assert_array_equal(read.array, volume.array)


def test_write_creates_parent_folders(tmp_path):
    path = io.write_volume(make_ct(), tmp_path / "a" / "b" / "ct.nii.gz")
    assert path.is_file()


# --- DICOM ------------------------------------------------------------------------------


def test_dicom_series_round_trip_keeps_voxels_and_geometry(tmp_path, write_dicom_series):
    volume = make_ct()
    folder = write_dicom_series(volume, tmp_path / "dicom")
    assert_same_volume(io.read_volume(folder), volume, atol=1e-6)


def test_dicom_slices_are_sorted_by_position_not_by_file_name(tmp_path, write_dicom_series):
    volume = make_ct()
    folder = write_dicom_series(volume, tmp_path / "dicom")
    files = sorted(folder.iterdir())
    for index, path in enumerate(files):  # the last slice gets the first name
        path.rename(folder / f"tmp_{len(files) - 1 - index:03d}.dcm")
    assert_same_volume(io.read_dicom_series(folder), volume)


def test_dicom_reads_like_plain_simpleitk(tmp_path, write_dicom_series):
    folder = write_dicom_series(make_ct(), tmp_path / "dicom")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    assert_same_volume(io.read_dicom_series(folder), Volume.from_sitk(reader.Execute()))


def test_empty_dicom_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeReadError, match=r"no DICOM series in .*empty"):
        io.read_volume(tmp_path / "empty")


def test_folder_without_dicom_files_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a slice")
    with pytest.raises(VolumeReadError, match="no DICOM series in"):
        io.read_dicom_series(tmp_path)


def test_mixed_series_must_be_chosen_by_uid(tmp_path, write_dicom_series):
    write_dicom_series(make_ct(), tmp_path, series_uid="1.2.3.1", series_description="AX CT")
    write_dicom_series(make_ct((2, 5, 6)), tmp_path, series_uid="1.2.3.2",
                       series_description="Scout")
    listing = r'1\.2\.3\.1 \("AX CT", 4 slices\), 1\.2\.3\.2 \("Scout", 2 slices\)$'
    with pytest.raises(VolumeReadError, match=r"holds 2 DICOM series; choose one with "
                       rf"--series-uid \(series_uid= in Python\): {listing}"):
        io.read_dicom_series(tmp_path)
    assert io.read_dicom_series(tmp_path, series_uid="1.2.3.2").spatial_shape == (2, 5, 6)
    with pytest.raises(VolumeReadError, match=rf"no series 9\.9 in .*; found: {listing}"):
        io.read_dicom_series(tmp_path, series_uid="9.9")


def test_missing_dicom_slice_is_logged(tmp_path, write_dicom_series, caplog):
    folder = write_dicom_series(make_ct((5, 5, 6)), tmp_path / "dicom")
    sorted(folder.iterdir())[2].unlink()
    with caplog.at_level(logging.WARNING, logger="medseg_helpers.data.dicom"):
        io.read_dicom_series(folder)
    assert "missing slices or uneven slice spacing" in caplog.text


# --- bad files --------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such file or folder: .*nope\.nii\.gz"):
        io.read_volume(tmp_path / "nope.nii.gz")


def test_missing_dicom_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such DICOM folder: .*series_7"):
        io.read_dicom_series(tmp_path / "series_7")


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"unsupported file type: .*scan\.png.*\.nii\.gz.*\.mhd"):
        io.read_volume(tmp_path / "scan.png")


def test_write_refuses_unknown_extension_and_creates_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported file type: .*ct\.tif"):
        io.write_volume(make_ct(), tmp_path / "new" / "ct.tif")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_truncated_nifti_is_an_error(tmp_path, ext):
    # SimpleITK alone reads these without complaint and returns garbage voxels.
    path = io.write_volume(make_ct((8, 9, 10)), tmp_path / f"ct{ext}")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VolumeReadError, match=rf"cannot read .*ct{re.escape(ext)}: .*truncated"):
        io.read_volume(path)


def test_corrupt_gzip_stream_is_an_error(tmp_path):
    path = io.write_volume(make_ct((8, 9, 10)), tmp_path / "ct.nii.gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeReadError, match=r"cannot read .*ct\.nii\.gz"):
        io.read_volume(path)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_truncated_nrrd_or_metaimage_is_an_error(tmp_path, ext):
    path = io.write_volume(make_ct((8, 9, 10)), tmp_path / f"ct{ext}")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VolumeReadError, match=rf"cannot read .*ct{re.escape(ext)}"):
        io.read_volume(path)


def test_garbage_bytes_with_nifti_extension_is_an_error(tmp_path):
    (tmp_path / "scan.nii").write_bytes(b"not a NIfTI file at all " * 20)
    with pytest.raises(
        VolumeReadError, match=r"cannot read .*scan\.nii: .*not recognized as a NIFTI"
    ):
        io.read_volume(tmp_path / "scan.nii")


def test_detached_header_without_its_data_file_is_an_error(tmp_path):
    io.write_volume(make_ct(), tmp_path / "ct.mhd")
    (tmp_path / "ct.zraw").unlink()
    with pytest.raises(VolumeReadError, match=r"cannot read .*ct\.mhd"):
        io.read_volume(tmp_path / "ct.mhd")


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_nan_and_inf_voxels_are_counted_and_refused(tmp_path, ext):
    # For NIfTI this needs nibabel: SimpleITK's NIfTI reader silently turns NaN/Inf into 0.
    array = np.zeros((4, 5, 6), np.float32)
    array[0, 0, :2] = np.nan
    array[1, 1, 1] = -np.inf
    path = io.write_volume(make_ct().with_array(array), tmp_path / f"mr{ext}")
    with pytest.raises(ValueError, match=rf"mr{re.escape(ext)}: 2 NaN and 1 Inf voxels out of 120"):
        io.read_volume(path)
    assert np.isnan(io.read_volume(path, allow_nonfinite=True).array).sum() == 2


def test_2d_image_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((5, 6), np.float32), np.eye(4)), tmp_path / "xray.nii")
    with pytest.raises(VolumeReadError, match=r"xray\.nii: expected a 3D image .* got a 2D image"):
        io.read_volume(tmp_path / "xray.nii")


# --- atomic writes ----------------------------------------------------------------------


def _fail_after_partial_write(image, path, image_io, compress):
    path.write_bytes(b"half a file")
    raise RuntimeError("Exception thrown in SimpleITK\nITK ERROR: disk full")


@pytest.mark.parametrize("ext", [".nii.gz", ".mhd"])
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, ext):
    monkeypatch.setattr(io, "_write_image", _fail_after_partial_write)
    with pytest.raises(OSError, match=rf"cannot write .*ct{re.escape(ext)}: disk full"):
        io.write_volume(make_ct(), tmp_path / f"ct{ext}")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    path = io.write_volume(make_ct(), tmp_path / "ct.nrrd")
    before = path.read_bytes()
    monkeypatch.setattr(io, "_write_image", _fail_after_partial_write)
    with pytest.raises(OSError, match="disk full"):
        io.write_volume(make_ct().with_array(np.zeros((4, 5, 6), np.int16)), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ct.nrrd"]


# --- labels and image/label pairs --------------------------------------------------------


def test_whole_number_float_label_becomes_smallest_integer_dtype():
    label = make_ct().with_array(np.full((4, 5, 6), 2.0, np.float32))
    assert io.ensure_integer_label(label).array.dtype == np.uint8
    assert io.ensure_integer_label(label.with_array(label.array * 200)).array.dtype == np.uint16
    assert io.ensure_integer_label(label.with_array(-label.array)).array.dtype == np.int8
    assert io.ensure_integer_label(label.with_array(label.array > 1)).array.dtype == np.uint8


def test_non_integer_label_is_refused():
    array = np.zeros((4, 5, 6), np.float32)
    array[0, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"lab\.nii: a label must hold whole numbers; 1 voxels"):
        io.ensure_integer_label(make_ct().with_array(array), "lab.nii")


def test_label_with_channels_is_refused():
    with pytest.raises(ValueError, match=r"a label must be \(Z, Y, X\); got shape \(2, 4, 5, 6\)"):
        io.ensure_integer_label(make_ct().with_array(np.zeros((2, 4, 5, 6), np.uint8)))


def test_matching_pair_loads_with_integer_label(tmp_path):
    image_path = io.write_volume(make_ct(), tmp_path / "img.nii.gz")
    label = make_ct().with_array((make_ct().array > -950).astype(np.float32))
    label_path = io.write_volume(label, tmp_path / "lab.nii.gz")
    image, read_label = io.load_image_label_pair(image_path, label_path)
    assert read_label.array.dtype == np.uint8
    np.testing.assert_array_equal(read_label.array, label.array)
    assert image.same_geometry(read_label)


MISMATCHES = {  # label change -> (property, image value, label value) in the message
    "shape": (dict(array=np.zeros((4, 5, 7))), "shape (Z, Y, X)", "[4, 5, 6]", "[4, 5, 7]"),
    "spacing": (
        dict(spacing_mm=(2.5, 0.75, 0.6)),
        "spacing_mm (Z, Y, X)",
        "[2.5, 0.75, 0.5]",
        "[2.5, 0.75, 0.6]",
    ),
    "origin": (
        dict(origin_mm=(-10.5, 20.25, -29.0)),
        "origin_mm (LPS x, y, z)",
        "[-10.5, 20.25, -30.0]",
        "[-10.5, 20.25, -29.0]",
    ),
    "direction": (
        dict(direction=np.eye(3)),
        "direction",
        "[[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]",
        "[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]",
    ),
}


@pytest.mark.parametrize("case", MISMATCHES.values(), ids=MISMATCHES.keys())
def test_geometry_mismatch_names_both_files_and_values(tmp_path, case):
    change, name, image_value, label_value = case
    image_path = io.write_volume(make_ct(), tmp_path / "img.nii.gz")
    label = Volume(**{**vars(make_ct().with_array(np.zeros((4, 5, 6)))), **change})
    label_path = io.write_volume(label, tmp_path / "lab.nii.gz")
    message = (
        f"{re.escape(name)} differs: image .*img\\.nii\\.gz has {re.escape(image_value)}, "
        f"label .*lab\\.nii\\.gz has {re.escape(label_value)}$"
    )
    with pytest.raises(GeometryMismatchError, match=message):
        io.load_image_label_pair(image_path, label_path)


def test_geometry_mismatch_is_a_value_error():
    assert issubclass(GeometryMismatchError, ValueError)
    assert issubclass(VolumeReadError, ValueError)


def test_float32_rounding_of_geometry_is_not_a_mismatch(tmp_path):
    image = Volume(make_ct().array, SPACING, (-123.456, 78.9, -30.1), DIRECTION)
    image_path = io.write_volume(image, tmp_path / "img.mha")  # float64 geometry
    label_path = io.write_volume(
        image.with_array(np.zeros((4, 5, 6), np.uint8)), tmp_path / "l.nii"
    )
    io.load_image_label_pair(image_path, label_path)  # NIfTI: float32 geometry


# --- orientation ------------------------------------------------------------------------


def test_orientation_codes_name_where_index_axes_point_to():
    assert geometry.get_orientation(Volume(np.zeros((2, 2, 2)))) == "LPS"  # identity direction
    assert geometry.get_orientation(make_ct()) == "ALS"  # x -> -y = Anterior, y -> +x = Left


@pytest.mark.parametrize("code", ["RAS", "LPS", "LAS", "PIR", "ras"])
def test_reorient_keeps_each_voxel_at_its_physical_point(code):
    volume = make_ct()
    marked = (1, 2, 3)  # (z, y, x)
    reoriented = geometry.reorient_to(volume, code)
    new_index = np.argwhere(reoriented.array == volume.array[marked])[0]
    np.testing.assert_allclose(
        geometry.index_to_physical(reoriented, new_index),
        geometry.index_to_physical(volume, marked),
        atol=1e-9,
    )
    assert geometry.get_orientation(reoriented) == code.upper()
    assert "".join(nib.aff2axcodes(reoriented.affine_ras)) == code.upper()  # nibabel agrees


def test_reorient_keeps_channels_together():
    volume = make_ct().with_array(np.stack([make_ct().array, -make_ct().array]))
    reoriented = geometry.reorient_to(volume, "RAS")
    assert reoriented.array.shape == (2, 4, 6, 5)  # x and y swap places
    np.testing.assert_array_equal(reoriented.array[1], -reoriented.array[0])


@pytest.mark.parametrize("code", ["RAX", "RRS", "RA", "LPSI"])
def test_invalid_orientation_code_is_refused(code):
    with pytest.raises(ValueError, match="one letter from each of L/R, P/A, I/S"):
        geometry.reorient_to(make_ct(), code)


def test_index_to_physical_agrees_with_simpleitk():
    volume = Volume(
        make_ct().array,
        (3.3, 0.9, 0.7),
        (-12.5, 7.0, 3.0),
        Rotation.from_euler("z", 30, degrees=True).as_matrix(),
    )
    expected = volume.to_sitk().TransformContinuousIndexToPhysicalPoint((3.0, 2.0, 1.5))
    np.testing.assert_allclose(geometry.index_to_physical(volume, (1.5, 2.0, 3.0)), expected)


# --- conversion to NIfTI ----------------------------------------------------------------


def test_convert_dicom_folder_to_nifti(tmp_path, write_dicom_series):
    volume = make_ct()
    folder = write_dicom_series(volume, tmp_path / "dicom")
    dst = io.convert_to_nifti(folder, tmp_path / "out" / "ct.nii.gz")
    assert_same_volume(io.read_volume(dst), volume)
    np.testing.assert_allclose(nib.load(dst).affine, volume.affine_ras, atol=1e-6)


def test_convert_slicer_label_nrrd_to_uint8_nifti(tmp_path):
    # A 3D Slicer-style .seg.nrrd written by pynrrd, in RAS space, (x, y, z) order.
    labels_xyz = np.zeros((6, 5, 4), np.int16)
    labels_xyz[3, 2, 1] = 7
    header = {
        "space": "right-anterior-superior",
        "space directions": np.diag([0.5, 0.75, 2.5]),
        "space origin": np.array([10.0, -20.0, 30.0]),
        "kinds": ["domain"] * 3,
        "Segment0_LabelValue": "7",
    }
    nrrd.write(str(tmp_path / "case.seg.nrrd"), labels_xyz, header)
    dst = io.convert_to_nifti(tmp_path / "case.seg.nrrd", tmp_path / "case.nii.gz", is_label=True)
    nifti = nib.load(dst)
    assert nifti.get_data_dtype() == np.uint8
    ijk = np.argwhere(np.asanyarray(nifti.dataobj) == 7)[0]
    # RAS position by hand from the NRRD header: origin + diag(spacing) @ (3, 2, 1).
    expected_ras = [10.0 + 0.5 * 3, -20.0 + 0.75 * 2, 30.0 + 2.5 * 1]
    np.testing.assert_allclose(nib.affines.apply_affine(nifti.affine, ijk), expected_ras)


def test_convert_label_above_255_uses_uint16(tmp_path):
    label = make_ct().with_array(np.full((4, 5, 6), 300, np.int32))
    src = io.write_volume(label, tmp_path / "lab.mha")
    dst = io.convert_to_nifti(src, tmp_path / "lab.nii", is_label=True)
    assert io.read_volume(dst).array.dtype == np.uint16


def test_convert_refuses_negative_label(tmp_path):
    src = io.write_volume(make_ct(), tmp_path / "ct.mha")
    with pytest.raises(ValueError, match=r"ct\.mha: label values \[-1000, -881\] do not fit"):
        io.convert_to_nifti(src, tmp_path / "ct.nii.gz", is_label=True)


def test_convert_refuses_non_nifti_destination(tmp_path):
    src = io.write_volume(make_ct(), tmp_path / "ct.mha")
    with pytest.raises(ValueError, match=r"destination must end in \.nii or \.nii\.gz"):
        io.convert_to_nifti(src, tmp_path / "ct.nrrd")
