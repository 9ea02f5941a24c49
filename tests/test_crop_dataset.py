"""SliceCropDataset: crops of the cached slices, centred on each class in the chosen shares.

Data: the module-wide synthetic MR set of conftest (4 cases of (8, 32, 32)), cached as
slices once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg_helpers.data.crop_dataset import SliceCropDataset
from medseg_helpers.data.datasets import make_dataloader
from medseg_helpers.data.slice_cache import SliceCache, build_slice_cache


@pytest.fixture(scope="module")
def cache(cases, tmp_path_factory) -> SliceCache:
    return build_slice_cache(cases, tmp_path_factory.mktemp("cache"))


def _centre_class(dataset: SliceCropDataset, cache: SliceCache, index: int) -> int:
    row, y0, x0 = dataset.crop_origin(index)
    h, w = dataset.crop_size
    return int(cache.labels[row, y0 + h // 2, x0 + w // 2])


def test_a_crop_is_the_cached_slice_at_its_origin(cache):
    dataset = SliceCropDataset(cache, crop_size=(16, 12), samples_per_epoch=5)
    item = dataset[3]
    row, y0, x0 = dataset.crop_origin(3)
    assert item["image"].shape == (1, 16, 12) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 16, 12) and item["label"].dtype == torch.int64
    np.testing.assert_array_equal(item["image"].numpy(), cache.images[row, :, y0:y0 + 16,
                                                                      x0:x0 + 12])
    np.testing.assert_array_equal(item["label"][0].numpy(), cache.labels[row, y0:y0 + 16,
                                                                         x0:x0 + 12])
    case = cache.cases[item["patient_id"]]
    assert case.start + item["slice_index"] == row
    assert len(dataset) == 5
    batch = next(iter(make_dataloader(dataset, batch_size=5)))
    assert batch["image"].shape == (5, 1, 16, 12)


def test_centres_follow_the_ratios(cache):
    lesion_only = SliceCropDataset(cache, crop_size=(8, 8), centre_ratios=(0, 0, 1),
                                   samples_per_epoch=50)
    np.testing.assert_allclose(lesion_only.centre_probabilities, [0, 0, 1])
    # a crop is shifted inside the slice near a border, so its centre pixel may differ
    # from the drawn one; away from borders every centre is a lesion pixel
    centres = [_centre_class(lesion_only, cache, i) for i in range(50)]
    assert centres.count(2) >= 45
    organ = SliceCropDataset(cache, crop_size=(8, 8), centre_ratios=(0, 1), samples_per_epoch=50)
    assert [_centre_class(organ, cache, i) for i in range(50)].count(1) >= 45
    mixed = SliceCropDataset(cache, centre_ratios=(1, 1, 2), crop_size=(8, 8))
    np.testing.assert_allclose(mixed.centre_probabilities, [0.25, 0.25, 0.5])


def test_draws_are_fixed_by_seed_epoch_and_index(cache):
    a = SliceCropDataset(cache, crop_size=(8, 8), seed=1)
    b = SliceCropDataset(cache, crop_size=(8, 8), seed=1)
    assert [a.crop_origin(i) for i in range(20)] == [b.crop_origin(i) for i in range(20)]
    a.set_epoch(1)
    assert [a.crop_origin(i) for i in range(20)] != [b.crop_origin(i) for i in range(20)]
    assert [a.crop_origin(i) for i in range(20)] == [b.crop_origin(i, epoch=1)
                                                    for i in range(20)]


def test_a_class_missing_from_the_patients_gets_no_share(cache):
    lesion_free = [p for p, c in cache.cases.items()
                   if not (np.asarray(cache.labels[c.start:c.stop]) == 2).any()]
    if not lesion_free:
        pytest.skip("every synthetic case has a lesion")
    dataset = SliceCropDataset(cache, lesion_free, centre_ratios=(1, 1, 2), crop_size=(8, 8))
    np.testing.assert_allclose(dataset.centre_probabilities, [0.5, 0.5, 0.0])


def test_bad_settings_are_refused_with_the_reason(cache):
    with pytest.raises(ValueError, match="crop_size"):
        SliceCropDataset(cache, crop_size=(64, 8))
    with pytest.raises(ValueError, match="not in the cache"):
        SliceCropDataset(cache, ["nobody"], crop_size=(8, 8))
    with pytest.raises(ValueError, match=">= 0"):
        SliceCropDataset(cache, centre_ratios=(1, -1), crop_size=(8, 8))
    with pytest.raises(ValueError, match="no class"):
        SliceCropDataset(cache, centre_ratios=(0, 0, 0), crop_size=(8, 8))
