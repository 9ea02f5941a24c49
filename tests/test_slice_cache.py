"""Tests for medseg_helpers.data.slice_cache: building, reusing and merging back the slice cache.

Data: a module-wide synthetic MR set (4 cases of (8, 32, 32), written once), plus tiny
hand-made Decathlon folders for geometry and channels.
"""

from __future__ import annotations

import shutil

import albumentations as A
import numpy as np
import pytest
from _decathlon_helpers import count_reads, image_label_pair, write_decathlon

from medseg_helpers.data.datasets import SliceDataset
from medseg_helpers.data.decathlon import read_decathlon
from medseg_helpers.data.io import read_volume, write_volume
from medseg_helpers.data.slice_cache import SliceCache, build_slice_cache


@pytest.fixture(scope="module")
def cache(cases, tmp_path_factory) -> SliceCache:
    return build_slice_cache(cases, tmp_path_factory.mktemp("cache"))


# ------------------------------------------------------------------------------ the cache


def test_cache_arrays_have_documented_shapes_dtypes_and_index(cache):
    assert cache.images.shape == (32, 1, 32, 32) and cache.images.dtype == np.float32
    assert cache.labels.shape == (32, 32, 32) and cache.labels.dtype == np.uint8
    assert isinstance(cache.images, np.memmap) and not cache.images.flags.writeable
    assert list(cache.cases) == [f"phantom_mr_{i:03d}" for i in range(4)]
    assert cache.has_foreground.tolist() == cache.labels.reshape(32, -1).any(axis=1).tolist()
    for case in cache.cases.values():  # z-score over each whole volume
        volume = cache.images[case.start : case.stop]
        assert abs(volume.mean()) < 1e-4 and abs(volume.std() - 1) < 1e-3


def test_cache_is_built_once_then_reused_without_reading_sources(cases, tmp_path, monkeypatch):
    reads = count_reads(monkeypatch)
    first = build_slice_cache(cases, tmp_path)
    assert len(reads) == 8  # 4 images + 4 labels
    second = build_slice_cache(cases, tmp_path)
    assert len(reads) == 8 and second.path == first.path
    np.testing.assert_array_equal(second.images, first.images)


def test_changed_settings_build_a_second_cache(cases, tmp_path, monkeypatch):
    reads = count_reads(monkeypatch)
    zscore = build_slice_cache(cases, tmp_path)
    minmax = build_slice_cache(cases, tmp_path, normalisation="minmax")
    assert len(reads) == 16 and minmax.path != zscore.path
    assert minmax.images.min() >= 0 and minmax.images.max() <= 1
    assert minmax.settings["normalisation"] == "minmax"


def test_changed_source_file_triggers_rebuild(dataset_dir, tmp_path, monkeypatch):
    data = shutil.copytree(dataset_dir, tmp_path / "data")
    cases = read_decathlon(data)
    before = build_slice_cache(cases, tmp_path / "cache")
    assert any(before.cases["phantom_mr_000"].has_foreground)
    label = read_volume(cases[0].label_path)
    write_volume(label.with_array(np.zeros_like(label.array)), cases[0].label_path)
    reads = count_reads(monkeypatch)
    after = build_slice_cache(cases, tmp_path / "cache")
    assert len(reads) == 8 and after.path == before.path  # same settings, same folder
    assert not any(after.cases["phantom_mr_000"].has_foreground)


def test_interrupted_build_leaves_no_cache_and_next_call_rebuilds(cases, tmp_path, monkeypatch):
    count_reads(monkeypatch, fail_at=5)  # Ctrl-C while reading the third image
    with pytest.raises(KeyboardInterrupt):
        build_slice_cache(cases, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary leftovers
    monkeypatch.undo()
    cache = build_slice_cache(cases, tmp_path)
    assert len(cache) == 32


def test_cache_without_complete_index_is_not_trusted(cases, tmp_path, monkeypatch):
    cache = build_slice_cache(cases, tmp_path)
    (cache.path / "index.json").write_text('{"key": "trunc')  # e.g. a crash while writing
    reads = count_reads(monkeypatch)
    assert len(build_slice_cache(cases, tmp_path)) == 32 and len(reads) == 8


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cached_slices_merge_back_to_the_source_volume(cases, tmp_path, axis):
    cache = build_slice_cache(cases, tmp_path, axis=axis)
    for case in cases:
        entry = cache.cases[case.patient_id]
        merged = cache.merge_case(case.patient_id, cache.labels[entry.start : entry.stop])
        source = read_volume(case.label_path)
        assert merged.same_geometry(source)
        np.testing.assert_array_equal(merged.array, source.array)


def test_resampled_cache_merges_back_onto_the_source_grid(cases, tmp_path):
    cache = build_slice_cache(cases, tmp_path, spacing_mm=(8.0, 6.0, 6.0))
    entry = cache.cases["phantom_mr_001"]
    assert entry.slice_info.spacing_mm == (8.0, 6.0, 6.0)
    merged = cache.merge_case("phantom_mr_001", cache.labels[entry.start : entry.stop])
    source = read_volume(cases[1].label_path)
    assert merged.same_geometry(source) and merged.array.dtype == np.uint8
    assert (merged.array == source.array).mean() > 0.95  # nearest down- and up-sampling


def test_different_in_plane_shapes_are_centred_and_padded_to_the_largest(tmp_path):
    tall, wide = image_label_pair((3, 24, 12), seed=1), image_label_pair((3, 10, 20), seed=2)
    cases = read_decathlon(write_decathlon(tmp_path / "data", {"tall": tall, "wide": wide}))
    cache = build_slice_cache(cases, tmp_path / "cache")
    assert cache.slice_shape == (24, 20) and cache.images.shape == (6, 1, 24, 20)
    # wide (10 x 20) sits at rows 7..16 (offset (24 - 10) // 2 = 7), padded with its minimum
    entry = cache.cases["wide"]
    assert entry.offset_hw == (7, 0)
    padding = cache.images[entry.start : entry.stop, 0, :7]
    np.testing.assert_array_equal(padding, cache.images[entry.start : entry.stop].min())
    for name, (_, label) in {"tall": tall, "wide": wide}.items():
        entry = cache.cases[name]
        merged = cache.merge_case(name, cache.labels[entry.start : entry.stop])
        np.testing.assert_array_equal(merged.array, label.array)


def test_fixed_slice_shape_crops_centrally_and_merge_fills_zero(tmp_path):
    image, label = image_label_pair((3, 16, 16))
    cases = read_decathlon(write_decathlon(tmp_path / "data", {"c": (image, label)}))
    cache = build_slice_cache(cases, tmp_path / "cache", slice_shape=(8, 12))
    assert cache.images.shape == (3, 1, 8, 12) and cache.cases["c"].offset_hw == (-4, -2)
    merged = cache.merge_case("c", np.ones((3, 8, 12), np.uint8))
    assert merged.same_geometry(label)
    assert merged.array.sum() == 3 * 8 * 12 and merged.array[:, 4:12, 2:14].all()


def test_multichannel_images_are_cached_channel_first(tmp_path):
    cases = read_decathlon(write_decathlon(tmp_path / "data", {"mm": image_label_pair(channels=2)}))
    cache = build_slice_cache(cases, tmp_path / "cache")
    assert cache.images.shape == (4, 2, 16, 16) and cache.num_channels == 2
    item = SliceDataset(cache, transform=A.Compose([A.HorizontalFlip(p=1)]))[0]
    assert item["image"].shape == (2, 16, 16)
    np.testing.assert_array_equal(item["image"].numpy(), cache.images[0][..., ::-1])
