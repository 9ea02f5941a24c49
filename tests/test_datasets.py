"""Tests for medseg_helpers.data.datasets: SliceDataset, the naive dataset and DataLoaders.

Data: a module-wide synthetic MR set (4 cases of (8, 32, 32), written once, cached as
slices), plus a tiny hand-made Decathlon folder for per-worker augmentation.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from _decathlon_helpers import SHAPE, image_label_pair, write_decathlon

from medseg_helpers.data.datasets import NaiveVolumeDataset, SliceDataset, make_dataloader
from medseg_helpers.data.decathlon import read_decathlon
from medseg_helpers.data.slice_cache import SliceCache, build_slice_cache
from medseg_helpers.data.splits import split_patients
from medseg_helpers.transforms.augment import build_2d_augmentation


@pytest.fixture(scope="module")
def cache(cases, tmp_path_factory) -> SliceCache:
    return build_slice_cache(cases, tmp_path_factory.mktemp("cache"))


def _rows_as_items(cache: SliceCache, rows) -> set[tuple[str, int]]:
    owner = {r: c for c in cache.cases.values() for r in range(c.start, c.stop)}
    return {(owner[r].patient_id, r - owner[r].start) for r in rows}


# --------------------------------------------------------------------------- SliceDataset


def test_slice_items_have_documented_shapes_and_dtypes(cache):
    dataset = SliceDataset(cache)
    item = dataset[3]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 32, 32) and item["label"].dtype == torch.int64
    row = cache.cases[item["patient_id"]].start + item["slice_index"]
    np.testing.assert_array_equal(item["image"].numpy(), cache.images[row])
    np.testing.assert_array_equal(item["label"][0].numpy(), cache.labels[row])
    batch = next(iter(make_dataloader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["label"].shape == (4, 1, 32, 32)


def test_dataset_serves_only_the_requested_patients(cache):
    split = split_patients(list(cache.cases), val_fraction=0.5, seed=0)
    train = SliceDataset(cache, split.train)
    served = {train[i]["patient_id"] for i in range(len(train))}
    assert served == set(split.train) and not served & set(split.val)
    with pytest.raises(ValueError, match=r"not in the cache.*'nobody'"):
        SliceDataset(cache, ["nobody"])


def test_empty_slice_fraction_keeps_all_foreground_and_a_share_of_empty(cache):
    num_fg = int(cache.has_foreground.sum())
    num_empty = len(cache) - num_fg
    assert num_fg > 0 and num_empty > 0
    none = SliceDataset(cache, empty_slice_fraction=0.0)
    assert len(none) == num_fg
    assert all(none[i]["label"].any() for i in range(len(none)))
    assert len(SliceDataset(cache, empty_slice_fraction=1.0)) == len(cache)
    half = SliceDataset(cache, empty_slice_fraction=0.5, seed=3)
    assert len(half) == num_fg + round(0.5 * num_empty)
    assert sum(not half[i]["label"].any() for i in range(len(half))) == round(0.5 * num_empty)


def test_empty_slices_are_redrawn_per_epoch_and_reproducible(cache):
    dataset = SliceDataset(cache, empty_slice_fraction=0.5, seed=3)
    epochs = [dataset.epoch_rows(e).tolist() for e in range(3)]
    assert len({tuple(rows) for rows in epochs}) > 1
    again = SliceDataset(cache, empty_slice_fraction=0.5, seed=3)
    assert [again.epoch_rows(e).tolist() for e in range(3)] == epochs
    dataset.set_epoch(2)
    assert dataset.epoch_rows().tolist() == epochs[2]


def test_transform_moves_image_and_label_together(cache):
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    plain, flipped = SliceDataset(cache)[5], SliceDataset(cache, transform=flip)[5]
    assert plain["label"].any()
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1))
    torch.testing.assert_close(flipped["label"], plain["label"].flip(-1))


def test_augmented_labels_stay_in_the_label_set(cache):
    dataset = SliceDataset(cache, transform=_heavy(None))
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
    dataset = SliceDataset(cache)
    loader = make_dataloader(dataset, batch_size=5, shuffle=True, num_workers=num_workers)
    assert loader.persistent_workers == (num_workers > 0) and not loader.pin_memory
    for _ in range(2):  # persistent workers serve a second epoch, then shut down
        seen = _served(loader)
        assert len(seen) == len(set(seen)) == len(cache)
    del loader


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_gives_same_augmented_batches(cache, num_workers):
    def batches(seed):
        dataset = SliceDataset(cache, transform=_heavy())
        loader = make_dataloader(dataset, 8, shuffle=True, num_workers=num_workers, seed=seed)
        return [b["image"] for b in loader]

    first, again, other = batches(0), batches(0), batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_workers_augment_differently(tmp_path):
    """Identical slices, one per worker: only per-worker seeds make their outputs differ
    (each worker holds a copy of the same seeded pipeline)."""
    image, label = image_label_pair((2, 16, 16))
    image = image.with_array(np.repeat(image.array[:1], 2, axis=0))
    cases = read_decathlon(write_decathlon(tmp_path / "data", {"twin": (image, label)}))
    dataset = SliceDataset(build_slice_cache(cases, tmp_path / "cache"), transform=_heavy())
    first, second = make_dataloader(dataset, batch_size=1, num_workers=2)  # worker 0, 1
    assert not torch.equal(first["image"], second["image"])


def test_set_epoch_reaches_persistent_workers(cache):
    dataset = SliceDataset(cache, empty_slice_fraction=0.5, seed=1)
    loader = make_dataloader(dataset, batch_size=4, num_workers=2)
    for epoch in (0, 1, 2):
        dataset.set_epoch(epoch)
        seen = set(_served(loader))
        assert seen == _rows_as_items(cache, dataset.epoch_rows(epoch))


# --------------------------------------------------------------------------- NaiveVolumeDataset


def test_naive_dataset_reproduces_the_outline(cases):
    images, labels = [c.image_path for c in cases], [c.label_path for c in cases]
    slices, label_slices = NaiveVolumeDataset(images, labels)[0]
    assert len(slices) == len(label_slices) == SHAPE[0] and slices[0].shape == SHAPE[1:]
    assert max(s.max() for s in slices) == 1.0  # image / max(image)
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    flipped, same = NaiveVolumeDataset(images, labels, flip)[0]
    np.testing.assert_array_equal(flipped[3], slices[3][:, ::-1])
    np.testing.assert_array_equal(same[3], label_slices[3])  # the bug: label not flipped
    per_slice = NaiveVolumeDataset(images, labels, per_slice=True)
    assert len(per_slice) == 4 * SHAPE[0]
    np.testing.assert_array_equal(
        per_slice[SHAPE[0] + 2][0], NaiveVolumeDataset(images, labels)[1][0][2]
    )
