"""Tests for medseg_helpers.datasets: Decathlon reading, slice cache, datasets, loaders.

Data: a module-wide synthetic MR set (4 cases of (8, 32, 32), written once), plus tiny
hand-made Decathlon folders for geometry, channels and bad input.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from medseg_helpers import datasets as ds
from medseg_helpers import io
from medseg_helpers.augment import build_2d_augmentation
from medseg_helpers.io import GeometryMismatchError, read_volume, write_volume
from medseg_helpers.splits import split_patients
from medseg_helpers.synthetic import generate_dataset
from medseg_helpers.volume import Volume

SHAPE = (8, 32, 32)  # (Z, Y, X): 4 cases give 32 axial slices


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data") / "mr", "mr", 4, SHAPE, seed=0)


@pytest.fixture(scope="module")
def cases(dataset_dir) -> list[ds.Case]:
    return ds.read_decathlon(dataset_dir)


@pytest.fixture(scope="module")
def cache(cases, tmp_path_factory) -> ds.SliceCache:
    return ds.build_slice_cache(cases, tmp_path_factory.mktemp("cache"))


def _count_reads(monkeypatch, fail_at: int | None = None) -> list[str]:
    """Count `io.read_volume` calls (what load_image_label_pair uses); optionally raise
    KeyboardInterrupt on call number ``fail_at`` to simulate Ctrl-C mid-build."""
    calls: list[str] = []
    original = io.read_volume

    def counting(path, **kwargs):
        calls.append(str(path))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return original(path, **kwargs)

    monkeypatch.setattr(io, "read_volume", counting)
    return calls


def _write_decathlon(root: Path, pairs: dict[str, tuple[Volume, Volume]], labels=(0, 1)) -> Path:
    """A Decathlon folder (``./imagesTr/<name>.nii.gz`` entries) holding ``pairs``."""
    for name, (image, label) in pairs.items():
        write_volume(image, root / "imagesTr" / f"{name}.nii.gz")
        write_volume(label, root / "labelsTr" / f"{name}.nii.gz")
    meta = {
        "labels": {str(v): f"class {v}" for v in labels},
        "training": [
            {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in pairs
        ],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _pair(shape=(4, 16, 16), spacing=(2.0, 1.0, 1.0), channels: int = 0, seed: int = 0):
    """Random image and a label with a class-1 box in the middle of each slice."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 20, ((channels,) if channels else ()) + shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    z, y, x = shape
    label[:, y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] = 1
    return Volume(image, spacing, (5.0, -3.0, 7.0)), Volume(label, spacing, (5.0, -3.0, 7.0))


def _rows_as_items(cache: ds.SliceCache, rows) -> set[tuple[str, int]]:
    owner = {r: c for c in cache.cases.values() for r in range(c.start, c.stop)}
    return {(owner[r].patient_id, r - owner[r].start) for r in rows}


# --------------------------------------------------------------------------- read_decathlon


def test_read_decathlon_lists_cases_with_declared_labels(cases, dataset_dir):
    assert [c.patient_id for c in cases] == [f"phantom_mr_{i:03d}" for i in range(4)]
    assert cases[0].image_path == dataset_dir / "imagesTr" / "phantom_mr_000.nii.gz"
    assert cases[0].label_path == dataset_dir / "labelsTr" / "phantom_mr_000.nii.gz"
    assert all(c.label_values == (0, 1, 2) for c in cases)


def test_read_decathlon_skips_macos_metadata_entries(tmp_path):
    root = _write_decathlon(tmp_path, {"a_001": _pair()})
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/._a_001.nii.gz", "label": "./labelsTr/._a"})
    (root / "dataset.json").write_text(json.dumps(meta))
    assert [c.patient_id for c in ds.read_decathlon(root)] == ["a_001"]


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (None, FileNotFoundError, "no dataset.json"),
        ("{not json", ValueError, "not valid JSON"),
        ('{"labels": {"0": "bg"}}', ValueError, "'training' list"),
        ('{"labels": {"0": "bg"}, "training": [{"image": "x"}]}', ValueError, "entry 0"),
        (
            '{"labels": {"0": "bg"}, "training": [{"image": "./imagesTr/gone.nii.gz", '
            '"label": "./labelsTr/gone.nii.gz"}]}',
            FileNotFoundError,
            "missing.*gone.nii.gz",
        ),
    ],
)
def test_read_decathlon_rejects_bad_dataset_json(tmp_path, content, error, match):
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(error, match=match):
        ds.read_decathlon(tmp_path)


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
    reads = _count_reads(monkeypatch)
    first = ds.build_slice_cache(cases, tmp_path)
    assert len(reads) == 8  # 4 images + 4 labels
    second = ds.build_slice_cache(cases, tmp_path)
    assert len(reads) == 8 and second.path == first.path
    np.testing.assert_array_equal(second.images, first.images)


def test_changed_settings_build_a_second_cache(cases, tmp_path, monkeypatch):
    reads = _count_reads(monkeypatch)
    zscore = ds.build_slice_cache(cases, tmp_path)
    minmax = ds.build_slice_cache(cases, tmp_path, normalisation="minmax")
    assert len(reads) == 16 and minmax.path != zscore.path
    assert minmax.images.min() >= 0 and minmax.images.max() <= 1
    assert minmax.settings["normalisation"] == "minmax"


def test_changed_source_file_triggers_rebuild(dataset_dir, tmp_path, monkeypatch):
    data = shutil.copytree(dataset_dir, tmp_path / "data")
    cases = ds.read_decathlon(data)
    before = ds.build_slice_cache(cases, tmp_path / "cache")
    assert any(before.cases["phantom_mr_000"].has_foreground)
    label = read_volume(cases[0].label_path)
    write_volume(label.with_array(np.zeros_like(label.array)), cases[0].label_path)
    reads = _count_reads(monkeypatch)
    after = ds.build_slice_cache(cases, tmp_path / "cache")
    assert len(reads) == 8 and after.path == before.path  # same settings, same folder
    assert not any(after.cases["phantom_mr_000"].has_foreground)


def test_interrupted_build_leaves_no_cache_and_next_call_rebuilds(cases, tmp_path, monkeypatch):
    _count_reads(monkeypatch, fail_at=5)  # Ctrl-C while reading the third image
    with pytest.raises(KeyboardInterrupt):
        ds.build_slice_cache(cases, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary leftovers
    monkeypatch.undo()
    cache = ds.build_slice_cache(cases, tmp_path)
    assert len(cache) == 32


def test_cache_without_complete_index_is_not_trusted(cases, tmp_path, monkeypatch):
    cache = ds.build_slice_cache(cases, tmp_path)
    (cache.path / "index.json").write_text('{"key": "trunc')  # e.g. a crash while writing
    reads = _count_reads(monkeypatch)
    assert len(ds.build_slice_cache(cases, tmp_path)) == 32 and len(reads) == 8


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cached_slices_merge_back_to_the_source_volume(cases, tmp_path, axis):
    cache = ds.build_slice_cache(cases, tmp_path, axis=axis)
    for case in cases:
        entry = cache.cases[case.patient_id]
        merged = cache.merge_case(case.patient_id, cache.labels[entry.start : entry.stop])
        source = read_volume(case.label_path)
        assert merged.same_geometry(source)
        np.testing.assert_array_equal(merged.array, source.array)


def test_resampled_cache_merges_back_onto_the_source_grid(cases, tmp_path):
    cache = ds.build_slice_cache(cases, tmp_path, spacing_mm=(8.0, 6.0, 6.0))
    entry = cache.cases["phantom_mr_001"]
    assert entry.slice_info.spacing_mm == (8.0, 6.0, 6.0)
    merged = cache.merge_case("phantom_mr_001", cache.labels[entry.start : entry.stop])
    source = read_volume(cases[1].label_path)
    assert merged.same_geometry(source) and merged.array.dtype == np.uint8
    assert (merged.array == source.array).mean() > 0.95  # nearest down- and up-sampling


def test_different_in_plane_shapes_are_centred_and_padded_to_the_largest(tmp_path):
    tall, wide = _pair((3, 24, 12), seed=1), _pair((3, 10, 20), seed=2)
    cases = ds.read_decathlon(_write_decathlon(tmp_path / "data", {"tall": tall, "wide": wide}))
    cache = ds.build_slice_cache(cases, tmp_path / "cache")
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
    image, label = _pair((3, 16, 16))
    cases = ds.read_decathlon(_write_decathlon(tmp_path / "data", {"c": (image, label)}))
    cache = ds.build_slice_cache(cases, tmp_path / "cache", slice_shape=(8, 12))
    assert cache.images.shape == (3, 1, 8, 12) and cache.cases["c"].offset_hw == (-4, -2)
    merged = cache.merge_case("c", np.ones((3, 8, 12), np.uint8))
    assert merged.same_geometry(label)
    assert merged.array.sum() == 3 * 8 * 12 and merged.array[:, 4:12, 2:14].all()


def test_multichannel_images_are_cached_channel_first(tmp_path):
    cases = ds.read_decathlon(_write_decathlon(tmp_path / "data", {"mm": _pair(channels=2)}))
    cache = ds.build_slice_cache(cases, tmp_path / "cache")
    assert cache.images.shape == (4, 2, 16, 16) and cache.num_channels == 2
    item = ds.SliceDataset(cache, transform=A.Compose([A.HorizontalFlip(p=1)]))[0]
    assert item["image"].shape == (2, 16, 16)
    np.testing.assert_array_equal(item["image"].numpy(), cache.images[0][..., ::-1])


# ------------------------------------------------------------------------------ bad input


def _bad_case(tmp_path: Path, kind: str) -> list[ds.Case]:
    image, label = _pair()
    if kind == "nan":
        array = image.array.copy()
        array[1, 2, 3] = np.nan
        image = image.with_array(array)
    elif kind == "shifted":
        label = Volume(label.array, label.spacing_mm, (0.0, 0.0, 0.0))
    elif kind == "undeclared":
        array = label.array.copy()
        array[0, :2, :2] = 5
        label = label.with_array(array)
    return ds.read_decathlon(_write_decathlon(tmp_path / "data", {kind: (image, label)}))


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        ("nan", ValueError, r"case 'nan'.*1 NaN"),
        ("shifted", GeometryMismatchError, r"case 'shifted'.*origin"),
        ("undeclared", ValueError, r"case 'undeclared'.*outside the allowed set.*5: 4 voxel"),
    ],
)
def test_bad_cases_raise_naming_the_case_and_leave_nothing(tmp_path, kind, error, match):
    cases = _bad_case(tmp_path, kind)
    with pytest.raises(error, match=match):
        ds.build_slice_cache(cases, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(error, match=match):
        ds.PatchDataset3D(cases, (2, 8, 8))


def test_source_deleted_after_listing_is_reported(tmp_path):
    cases = ds.read_decathlon(_write_decathlon(tmp_path / "data", {"gone": _pair()}))
    cases[0].label_path.unlink()
    with pytest.raises(FileNotFoundError, match="source file missing.*gone.nii.gz"):
        ds.build_slice_cache(cases, tmp_path / "cache")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"normalisation": "max"}, "unknown normalisation"), ({"axis": 3}, "axis")],
)
def test_bad_cache_settings_are_rejected(cases, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ds.build_slice_cache(cases, tmp_path, **kwargs)


# --------------------------------------------------------------------------- SliceDataset


def test_slice_items_have_documented_shapes_and_dtypes(cache):
    dataset = ds.SliceDataset(cache)
    item = dataset[3]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 32, 32) and item["label"].dtype == torch.int64
    row = cache.cases[item["patient_id"]].start + item["slice_index"]
    np.testing.assert_array_equal(item["image"].numpy(), cache.images[row])
    np.testing.assert_array_equal(item["label"][0].numpy(), cache.labels[row])
    batch = next(iter(ds.make_dataloader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["label"].shape == (4, 1, 32, 32)


def test_dataset_serves_only_the_requested_patients(cache):
    split = split_patients(list(cache.cases), val_fraction=0.5, seed=0)
    train = ds.SliceDataset(cache, split.train)
    served = {train[i]["patient_id"] for i in range(len(train))}
    assert served == set(split.train) and not served & set(split.val)
    with pytest.raises(ValueError, match=r"not in the cache.*'nobody'"):
        ds.SliceDataset(cache, ["nobody"])


def test_empty_slice_fraction_keeps_all_foreground_and_a_share_of_empty(cache):
    num_fg = int(cache.has_foreground.sum())
    num_empty = len(cache) - num_fg
    assert num_fg > 0 and num_empty > 0
    none = ds.SliceDataset(cache, empty_slice_fraction=0.0)
    assert len(none) == num_fg
    assert all(none[i]["label"].any() for i in range(len(none)))
    assert len(ds.SliceDataset(cache, empty_slice_fraction=1.0)) == len(cache)
    half = ds.SliceDataset(cache, empty_slice_fraction=0.5, seed=3)
    assert len(half) == num_fg + round(0.5 * num_empty)
    assert sum(not half[i]["label"].any() for i in range(len(half))) == round(0.5 * num_empty)


def test_empty_slices_are_redrawn_per_epoch_and_reproducible(cache):
    dataset = ds.SliceDataset(cache, empty_slice_fraction=0.5, seed=3)
    epochs = [dataset.epoch_rows(e).tolist() for e in range(3)]
    assert len({tuple(rows) for rows in epochs}) > 1
    again = ds.SliceDataset(cache, empty_slice_fraction=0.5, seed=3)
    assert [again.epoch_rows(e).tolist() for e in range(3)] == epochs
    dataset.set_epoch(2)
    assert dataset.epoch_rows().tolist() == epochs[2]


def test_transform_moves_image_and_label_together(cache):
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    plain, flipped = ds.SliceDataset(cache)[5], ds.SliceDataset(cache, transform=flip)[5]
    assert plain["label"].any()
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1))
    torch.testing.assert_close(flipped["label"], plain["label"].flip(-1))


def test_augmented_labels_stay_in_the_label_set(cache):
    dataset = ds.SliceDataset(cache, transform=_heavy(None))
    values = torch.cat([dataset[i]["label"].unique() for i in range(len(dataset))])
    assert set(values.tolist()) <= {0, 1, 2}


# ----------------------------------------------------------------------------- DataLoader


def _heavy(seed: int | None = 0):
    """Heavy 2D augmentation for the z-scored cache."""
    return build_2d_augmentation("heavy", image_range="zscore", seed=seed)


def _served(loader) -> list[tuple[str, int]]:
    """``(patient_id, slice_index)`` of every item of one epoch, in order."""
    return [
        (p, int(s))
        for batch in loader
        for p, s in zip(batch["patient_id"], batch["slice_index"], strict=True)
    ]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_covers_each_slice_once_and_terminates(cache, num_workers):
    dataset = ds.SliceDataset(cache)
    loader = ds.make_dataloader(dataset, batch_size=5, shuffle=True, num_workers=num_workers)
    assert loader.persistent_workers == (num_workers > 0) and not loader.pin_memory
    for _ in range(2):  # persistent workers serve a second epoch, then shut down
        seen = _served(loader)
        assert len(seen) == len(set(seen)) == len(cache)
    del loader


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_gives_same_augmented_batches(cache, num_workers):
    def batches(seed):
        dataset = ds.SliceDataset(cache, transform=_heavy())
        loader = ds.make_dataloader(dataset, 8, shuffle=True, num_workers=num_workers, seed=seed)
        return [b["image"] for b in loader]

    first, again, other = batches(0), batches(0), batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_workers_augment_differently(tmp_path):
    """Identical slices, one per worker: only per-worker seeds make their outputs differ
    (each worker holds a copy of the same seeded pipeline)."""
    image, label = _pair((2, 16, 16))
    image = image.with_array(np.repeat(image.array[:1], 2, axis=0))
    cases = ds.read_decathlon(_write_decathlon(tmp_path / "data", {"twin": (image, label)}))
    dataset = ds.SliceDataset(ds.build_slice_cache(cases, tmp_path / "cache"), transform=_heavy())
    first, second = ds.make_dataloader(dataset, batch_size=1, num_workers=2)  # worker 0, 1
    assert not torch.equal(first["image"], second["image"])


def test_set_epoch_reaches_persistent_workers(cache):
    dataset = ds.SliceDataset(cache, empty_slice_fraction=0.5, seed=1)
    loader = ds.make_dataloader(dataset, batch_size=4, num_workers=2)
    for epoch in (0, 1, 2):
        dataset.set_epoch(epoch)
        seen = set(_served(loader))
        assert seen == _rows_as_items(cache, dataset.epoch_rows(epoch))


# --------------------------------------------------------------------------- NaiveVolumeDataset


def test_naive_dataset_reproduces_the_outline(cases):
    images, labels = [c.image_path for c in cases], [c.label_path for c in cases]
    slices, label_slices = ds.NaiveVolumeDataset(images, labels)[0]
    assert len(slices) == len(label_slices) == SHAPE[0] and slices[0].shape == SHAPE[1:]
    assert max(s.max() for s in slices) == 1.0  # image / max(image)
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    flipped, same = ds.NaiveVolumeDataset(images, labels, flip)[0]
    np.testing.assert_array_equal(flipped[3], slices[3][:, ::-1])
    np.testing.assert_array_equal(same[3], label_slices[3])  # the bug: label not flipped
    per_slice = ds.NaiveVolumeDataset(images, labels, per_slice=True)
    assert len(per_slice) == 4 * SHAPE[0]
    np.testing.assert_array_equal(
        per_slice[SHAPE[0] + 2][0], ds.NaiveVolumeDataset(images, labels)[1][0][2]
    )


# ----------------------------------------------------------------------------- 3D patches


def test_patch_items_have_documented_shapes_and_dtypes(cases):
    dataset = ds.PatchDataset3D(cases, (4, 16, 16), samples_per_case=3, preset="medium")
    assert len(dataset) == 12
    item = dataset[4]
    assert item["patient_id"] == cases[1].patient_id
    assert item["image"].shape == (1, 4, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 4, 16, 16) and item["label"].dtype == torch.int64
    assert set(item["label"].unique().tolist()) <= {0, 1, 2}


def _cube_case(tmp_path: Path) -> list[ds.Case]:
    """(16, 32, 32) with a foreground cube [6:10, 12:20, 12:20]: every 4x8x8 patch centre
    on it, or on background shifted inwards from a border, keeps its class."""
    image = np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32)
    label = np.zeros((16, 32, 32), np.uint8)
    label[6:10, 12:20, 12:20] = 1
    pair = (Volume(image), Volume(label))
    return ds.read_decathlon(_write_decathlon(tmp_path / "cube", {"cube": pair}))


@pytest.mark.parametrize(
    ("pos", "neg", "low", "high"),
    [(1, 0, 1.0, 1.0), (0, 1, 0.0, 0.0), (1, 1, 0.4, 0.6), (3, 1, 0.67, 0.83)],
)
def test_patch_centres_follow_the_pos_neg_ratio(tmp_path, pos, neg, low, high):
    dataset = ds.PatchDataset3D(
        _cube_case(tmp_path),
        (4, 8, 8),
        samples_per_case=300,
        pos=pos,
        neg=neg,
        preset=None,
        normalisation="none",
    )
    centres = [int(dataset[i]["label"][0, 2, 4, 4]) for i in range(len(dataset))]
    assert low <= np.mean(centres) <= high


def test_empty_label_case_gives_background_patches_without_warnings(tmp_path):
    image, label = _pair((6, 20, 20))
    empty = label.with_array(np.zeros_like(label.array))
    cases = ds.read_decathlon(_write_decathlon(tmp_path / "data", {"empty": (image, empty)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = ds.PatchDataset3D(cases, (4, 8, 8), samples_per_case=20, preset="heavy")
        items = [dataset[i] for i in range(len(dataset))]
    assert all(i["image"].shape == (1, 4, 8, 8) and not i["label"].any() for i in items)


def test_volume_smaller_than_the_patch_is_padded(tmp_path):
    cases = ds.read_decathlon(_write_decathlon(tmp_path / "data", {"small": _pair((3, 6, 6))}))
    item = ds.PatchDataset3D(cases, (4, 8, 8), preset=None)[0]
    assert item["image"].shape == (1, 4, 8, 8) and item["label"].shape == (1, 4, 8, 8)


def test_patch_disk_cache_is_reused_and_works_with_workers(cases, tmp_path, monkeypatch):
    reads = _count_reads(monkeypatch)
    first = ds.PatchDataset3D(cases, (4, 16, 16), cache_dir=tmp_path, seed=5)
    second = ds.PatchDataset3D(cases, (4, 16, 16), cache_dir=tmp_path, seed=5)
    assert len(reads) == 8
    torch.testing.assert_close(first[0]["image"], second[0]["image"])  # same seed, same patch
    loader = ds.make_dataloader(second, batch_size=4, shuffle=True, num_workers=2)
    shapes = [tuple(b["image"].shape) for b in loader]
    assert shapes == [(4, 1, 4, 16, 16)] * 4
