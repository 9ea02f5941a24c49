"""`slice_split_leakage`: one training on a slice-level split, scored on its leaky
validation slices and on patients it never saw."""

from __future__ import annotations

import math

import pytest

from medseg_helpers.course.data import ensure_synthetic_dataset
from medseg_helpers.data.decathlon import read_decathlon
from medseg_helpers.data.slice_cache import build_slice_cache
from medseg_helpers.training.leakage import slice_split_leakage


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("leakage")
    cases = read_decathlon(ensure_synthetic_dataset("smoke", data_dir=root / "data"))
    return build_slice_cache(cases, root / "cache", normalisation="zscore"), cases


def test_patients_are_held_out_whole_and_slices_split_at_random(cache):
    slices, cases = cache
    ids = [c.patient_id for c in cases]  # 8 patients of 16 slices under smoke
    result = slice_split_leakage(slices, ids, ["organ", "lesion"], steps=2, batch_size=4)
    assert (result["seen_patients"], result["unseen_patients"]) == (6, 2)  # a quarter held out
    assert result["train_slices"] + result["leaky_val_slices"] == 6 * 16
    assert result["leaky_val_slices"] == round(0.2 * 6 * 16)
    for key in ("leaky_val_dice", "unseen_dice", "leaky_val_dice_organ", "unseen_dice_lesion"):
        assert math.isnan(result[key]) or 0.0 <= result[key] <= 1.0
    again = slice_split_leakage(slices, ids, ["organ", "lesion"], steps=2, batch_size=4)
    assert again == pytest.approx(result, nan_ok=True)  # same seed, same numbers


@pytest.mark.parametrize("kwargs, message", [
    ({"patient_ids": ["a"]}, "at least two patients"),
    ({"unseen_fraction": 1.0}, r"unseen_fraction must lie in \(0, 1\)"),
    ({"val_fraction": 0.0}, r"val_fraction must lie in \(0, 1\)"),
])
def test_bad_arguments_are_named(cache, kwargs, message):
    slices, cases = cache
    arguments = {"patient_ids": [c.patient_id for c in cases], **kwargs}
    with pytest.raises(ValueError, match=message):
        slice_split_leakage(slices, class_names=["organ", "lesion"], **arguments)
