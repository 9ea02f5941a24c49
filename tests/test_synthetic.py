"""Specification of `medseg_helpers.data.synthetic`: deterministic, learnable, Decathlon-shaped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_helpers.data import synthetic
from medseg_helpers.data.phantom import FLAVOURS, make_phantom
from medseg_helpers.data.synthetic import (
    default_spacing_mm,
    generate_dataset,
    make_case,
)
from medseg_helpers.data.volume import Volume

SMALL = (8, 32, 32)  # (Z, Y, X): fast, still shows every structure
MEDIUM = (12, 48, 48)
NUM_CASES = 8  # two blocks of four: exactly two lesion-free cases


@pytest.fixture(scope="module")
def cases() -> dict[str, list[tuple[np.ndarray, np.ndarray, Volume]]]:
    """``flavour -> [(image, label, image Volume)]`` for case indices 0..7, seed 0."""
    out = {}
    for flavour in FLAVOURS:
        out[flavour] = []
        for index in range(NUM_CASES):
            image, label = make_case(0, flavour, index, MEDIUM)
            out[flavour].append((image.array, label.array, image))
    return out


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


# --------------------------------------------------------------------- determinism


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_same_seed_and_index_give_identical_arrays_and_geometry(flavour):
    first = make_case(3, flavour, 5, SMALL)
    second = make_case(3, flavour, 5, SMALL)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.array, b.array)
        assert a.array.dtype == b.array.dtype
        assert a.same_geometry(b, atol=0)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_different_seeds_or_case_indices_give_different_phantoms(flavour):
    image, label = make_case(0, flavour, 1, SMALL)
    other_seed_image, other_seed_label = make_case(1, flavour, 1, SMALL)
    other_case_image, other_case_label = make_case(0, flavour, 2, SMALL)
    assert not np.array_equal(image.array, other_seed_image.array)
    assert not np.array_equal(label.array, other_seed_label.array)
    assert not np.array_equal(image.array, other_case_image.array)
    assert not np.array_equal(label.array, other_case_label.array)


def test_same_arguments_write_byte_identical_files(tmp_path):
    # SimpleITK's gzip header carries no timestamp, so even the .nii.gz bytes agree.
    kwargs = dict(flavour="ct", num_cases=3, shape=SMALL, seed=7, num_test=1)
    first = generate_dataset(tmp_path / "a", **kwargs)
    second = generate_dataset(tmp_path / "b", **kwargs)
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len(names) == 3 * 2 + 1 + 1  # images + labels, one test image, dataset.json
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_a_case_does_not_depend_on_num_cases(tmp_path):
    small = generate_dataset(tmp_path / "two", num_cases=2, shape=SMALL, num_test=1)
    large = generate_dataset(tmp_path / "three", num_cases=3, shape=SMALL, num_test=1)
    for name in (
        "imagesTr/phantom_mr_001",
        "labelsTr/phantom_mr_001",
        "imagesTs/phantom_mr_test_000",
    ):
        a, _ = _read(small / f"{name}.nii.gz")
        b, _ = _read(large / f"{name}.nii.gz")
        np.testing.assert_array_equal(a, b)


def test_the_same_case_at_another_shape_shows_the_same_anatomy():
    # Geometry is drawn in mm before any voxel noise, so only the sampling changes.
    centroids = []
    for shape in (SMALL, (16, 64, 64)):
        _, label = make_case(0, "mr", 0, shape)
        index_zyx = np.argwhere(label.array == 1).mean(axis=0)
        centroids.append((index_zyx - (np.array(shape) - 1) / 2) * label.spacing_mm)
    coarse_spacing = np.array(default_spacing_mm("mr", SMALL))
    assert np.all(np.abs(centroids[0] - centroids[1]) < coarse_spacing)


# --------------------------------------------------------------------- content


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_labels_are_uint8_in_background_organ_lesion(cases, flavour):
    for _, label, _ in cases[flavour]:
        assert label.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1, 2}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_both_foreground_classes_occur_and_every_case_has_an_organ(cases, flavour):
    labels = [label for _, label, _ in cases[flavour]]
    assert all((label == 1).any() for label in labels)
    assert any((label == 2).any() for label in labels)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_one_case_in_every_block_of_four_has_no_lesion(cases, flavour):
    has_lesion = [bool((label == 2).any()) for _, label, _ in cases[flavour]]
    assert has_lesion[:4].count(False) == 1 and has_lesion[4:].count(False) == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_organ_never_reaches_the_first_or_last_slice(cases, flavour):
    for _, label, _ in cases[flavour]:
        assert not label[0].any() and not label[-1].any()


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("num_slices", [4, 5, 6])
def test_even_in_the_thinnest_volumes_the_end_slices_stay_empty(flavour, num_slices):
    for index in range(8):
        _, label = make_case(1, flavour, index, (num_slices, 16, 16))
        assert (label.array == 1).any()
        assert not label.array[0].any() and not label.array[-1].any()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_lesion_sizes_span_an_order_of_magnitude(cases, flavour):
    sizes = [int((label == 2).sum()) for _, label, _ in cases[flavour]]
    sizes = [s for s in sizes if s]
    assert max(sizes) >= 10 * min(sizes), sizes


def test_make_phantom_honours_num_lesions_and_rejects_more_than_three():
    rng = np.random.default_rng(0)
    spacing = default_spacing_mm("mr", MEDIUM)
    _, label = make_phantom(rng, "mr", MEDIUM, spacing, num_lesions=0)
    assert not (label == 2).any() and (label == 1).any()
    with pytest.raises(ValueError, match="num_lesions must be 0 to 3; got 4"):
        make_phantom(rng, "mr", MEDIUM, spacing, num_lesions=4)


def test_mr_is_float32_non_negative_roughly_0_to_1000(cases):
    for image, _, _ in cases["mr"]:
        assert image.dtype == np.float32
        assert image.min() >= 0 and 500 < image.max() < 1500


def test_mr_organ_is_brighter_than_the_air_around_the_body(cases):
    for image, label, _ in cases["mr"]:
        assert np.median(image[label == 1]) > 5 * np.median(image[:, :2, :])


def test_mr_default_spacing_has_slices_thicker_than_pixels():
    sz, sy, sx = default_spacing_mm("mr", (32, 64, 64))
    assert (sz, sy, sx) == (13.125, 4.375, 4.375)  # 280 mm / 64 pixels, slices 3x thicker
    assert default_spacing_mm("mr", (32, 96, 96))[0] == pytest.approx(3 * 280 / 96)


def test_ct_is_int16_hounsfield_units_with_air_soft_tissue_and_bone(cases):
    for image, label, _ in cases["ct"]:
        assert image.dtype == np.int16
        corners = image[:, :3, :3]  # outside the body: air at -1000 HU plus noise
        assert abs(np.median(corners) + 1000) < 30
        assert image.min() >= -1024 and image.max() > 500  # spine and ribs
        assert 40 < np.median(image[label == 1]) < 100  # organ: liver-like soft tissue


def test_ct_lesions_are_darker_than_the_organ(cases):
    for image, label, _ in cases["ct"]:
        if (label == 2).sum() >= 20:
            assert np.median(image[label == 2]) < np.median(image[label == 1])


def test_some_ct_cases_hold_metal_that_breaks_divide_by_max(cases):
    maxima = [int(image.max()) for image, _, _ in cases["ct"]]
    assert max(maxima) >= 2500
    image, label, _ = next(c for c in cases["ct"] if c[0].max() >= 2500)
    scaled = image / image.max()  # the naive normalisation
    assert np.median(scaled[label == 1]) < 0.05  # organ squeezed into a few percent


def test_cases_have_identity_direction_and_a_plausible_origin(cases):
    for flavour in FLAVOURS:
        for _, _, volume in cases[flavour]:
            np.testing.assert_array_equal(volume.direction, np.eye(3))
            half_fov = np.array(volume.spatial_shape[::-1]) * volume.spacing_mm[::-1] / 2
            assert np.all(np.abs(np.array(volume.origin_mm[:2]) + half_fov[:2]) < 15)


# --------------------------------------------------------------------- dataset folder


def test_dataset_json_follows_the_decathlon_schema_and_lists_existing_files(tmp_path):
    folder = generate_dataset(tmp_path / "ds", flavour="ct", num_cases=3, shape=SMALL, num_test=2)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    for key in ("name", "description", "reference", "licence", "release"):
        assert isinstance(meta[key], str) and meta[key]
    assert meta["numTraining"] == len(meta["training"]) == 3
    assert meta["numTest"] == len(meta["test"]) == 2
    assert meta["training"][0] == {
        "image": "./imagesTr/phantom_ct_000.nii.gz",
        "label": "./labelsTr/phantom_ct_000.nii.gz",
    }
    for pair in meta["training"]:
        image, image_itk = _read(folder / pair["image"])
        label, label_itk = _read(folder / pair["label"])
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert image_itk.GetSpacing() == label_itk.GetSpacing()
        assert image_itk.GetOrigin() == label_itk.GetOrigin()
    assert all((folder / path).is_file() for path in meta["test"])
    assert not (folder / "labelsTs").exists()  # like the Decathlon: test images only


def test_dataset_json_records_settings_and_per_case_facts(tmp_path):
    folder = generate_dataset(tmp_path / "ds", num_cases=4, shape=SMALL, seed=2)
    extra = json.loads((folder / "dataset.json").read_text())["medseg_synthetic"]
    # the keys medseg_helpers.course.data compares to decide whether to regenerate
    assert {k: extra[k] for k in ("flavour", "num_cases", "shape", "seed")} == {
        "flavour": "mr",
        "num_cases": 4,
        "shape": list(SMALL),
        "seed": 2,
    }
    assert extra["generator_version"] == synthetic.GENERATOR_VERSION
    assert extra["spacing_mm"] == list(default_spacing_mm("mr", SMALL))
    for case in extra["cases"]:
        label, _ = _read(folder / "labelsTr" / f"{case['name']}.nii.gz")
        assert case["lesion_voxels"] == (label == 2).sum()
        assert case["organ_voxels"] == (label == 1).sum()
    assert sum(case["num_lesions"] == 0 for case in extra["cases"]) == 1


def test_written_spacing_is_the_anisotropic_default(tmp_path):
    folder = generate_dataset(tmp_path / "ds", num_cases=1, shape=SMALL)
    _, image = _read(folder / "imagesTr" / "phantom_mr_000.nii.gz")
    sx, sy, sz = image.GetSpacing()
    assert sz == pytest.approx(3 * sx) and sx == pytest.approx(sy)


def test_dataset_json_is_written_last(tmp_path, monkeypatch):
    written = []
    write_volume, write_text_atomic = synthetic.write_volume, synthetic.write_text_atomic

    def record_volume(volume, path):
        written.append(Path(path).name)
        return write_volume(volume, path)

    def record_text(path, text):
        written.append(Path(path).name)
        return write_text_atomic(path, text)

    monkeypatch.setattr(synthetic, "write_volume", record_volume)
    monkeypatch.setattr(synthetic, "write_text_atomic", record_text)
    generate_dataset(tmp_path / "ds", num_cases=2, shape=SMALL, num_test=1)
    assert len(written) == 2 * 2 + 1 + 1  # 2 images + 2 labels, 1 test image, dataset.json
    assert written[-1] == "dataset.json" and written.count("dataset.json") == 1


def test_a_failed_run_leaves_no_dataset_json_and_no_temporary_files(tmp_path, monkeypatch):
    folder = generate_dataset(tmp_path / "ds", num_cases=2, shape=SMALL)  # complete
    calls = []
    write_volume = synthetic.write_volume

    def fail_on_third_file(volume, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return write_volume(volume, path)

    monkeypatch.setattr(synthetic, "write_volume", fail_on_third_file)
    with pytest.raises(OSError, match="disk full"):
        generate_dataset(folder, num_cases=3, shape=SMALL)  # different settings: regenerate
    assert not (folder / "dataset.json").exists()  # the folder no longer claims completeness
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_rerunning_on_a_complete_folder_writes_nothing(tmp_path, monkeypatch):
    folder = generate_dataset(tmp_path / "ds", num_cases=2, shape=SMALL)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}

    def must_not_write(*_args):
        raise AssertionError("a complete folder was written again")

    monkeypatch.setattr(synthetic, "write_volume", must_not_write)
    monkeypatch.setattr(synthetic, "write_text_atomic", must_not_write)
    assert generate_dataset(folder, num_cases=2, shape=SMALL) == folder
    assert before == {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_regenerating_with_fewer_cases_removes_stale_phantoms(tmp_path):
    folder = generate_dataset(tmp_path / "ds", num_cases=3, shape=SMALL, num_test=1)
    generate_dataset(folder, num_cases=2, shape=SMALL)
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        "phantom_mr_000.nii.gz",
        "phantom_mr_001.nii.gz",
    ]
    assert not list((folder / "imagesTs").iterdir())


def test_refuses_to_overwrite_another_datasets_folder(tmp_path):
    folder = tmp_path / "Task04_Hippocampus"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({"name": "Hippocampus"}))
    with pytest.raises(FileExistsError, match="not written by medseg_helpers.data.synthetic"):
        generate_dataset(folder, num_cases=1, shape=SMALL)
    assert json.loads((folder / "dataset.json").read_text()) == {"name": "Hippocampus"}


# --------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"flavour": "pet"}, "flavour must be one of"),
        ({"shape": (2, 64, 64)}, r"shape must be \(Z, Y, X\) of at least"),
        ({"shape": (16, 64)}, r"shape must be \(Z, Y, X\)"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"num_cases": 0}, "need num_cases >= 1"),
        ({"num_test": -1}, "num_test >= 0"),
        ({"spacing_mm": (1.0, 0.0, 1.0)}, "spacing_mm must be 3 finite positive numbers in mm"),
    ],
)
def test_invalid_arguments_raise_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path / "ds", **{"num_cases": 1, "shape": SMALL, **kwargs})
    assert not (tmp_path / "ds").exists()


def test_make_case_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'; got 'val'"):
        make_case(0, "mr", 0, SMALL, split="val")
