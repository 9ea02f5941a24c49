"""Tests for medseg_helpers.data.splits: patient-level, stratified, reproducible splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg_helpers.data import splits as sp


def _cohort(n: int, n_positive: int, seed: int = 0) -> tuple[list[str], list[bool]]:
    ids = [f"case_{i:03d}" for i in range(n)]
    flags = np.zeros(n, dtype=bool)
    flags[np.random.default_rng(seed).choice(n, n_positive, replace=False)] = True
    return ids, flags.tolist()


def _positives(group, ids, flags) -> int:
    lookup = dict(zip(ids, flags, strict=True))
    return sum(lookup[p] for p in group)


@pytest.mark.parametrize(
    ("filename", "strip_channel", "expected"),
    [
        ("hippocampus_001.nii.gz", False, "hippocampus_001"),
        ("/data/Task04_Hippocampus/imagesTr/hippocampus_367.nii.gz", False, "hippocampus_367"),
        ("spleen_2.nii", False, "spleen_2"),
        ("BRATS_001_0000.nii.gz", True, "BRATS_001"),
        ("BRATS_001_0000.nii.gz", False, "BRATS_001_0000"),
        ("case_07.nrrd", False, "case_07"),
    ],
)
def test_extract_patient_id(filename, strip_channel, expected):
    assert sp.extract_patient_id(filename, strip_channel=strip_channel) == expected


def test_extract_patient_id_rejects_macos_metadata_files():
    with pytest.raises(ValueError, match="macOS"):
        sp.extract_patient_id("imagesTr/._hippocampus_001.nii.gz")


@pytest.mark.parametrize(
    ("n", "n_positive", "val", "test"),
    [
        (20, 7, 0.2, 0.2),
        (31, 5, 0.15, 0.15),
        (10, 9, 0.3, 0.0),
        (7, 1, 0.3, 0.3),
        (50, 25, 0.1, 0.2),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_is_disjoint_complete_and_stratified(n, n_positive, val, test, seed):
    ids, flags = _cohort(n, n_positive, seed)
    split = sp.split_patients(ids, flags, val_fraction=val, test_fraction=test, seed=seed)
    groups = {"train": split.train, "val": split.val, "test": split.test}
    sp.check_no_overlap(groups)
    assert sorted(split.train + split.val + split.test) == sorted(ids)
    # sizes are round(fraction * n), train gets the rest
    assert len(split.val) == int(np.floor(val * n + 0.5))
    assert len(split.test) == int(np.floor(test * n + 0.5))
    for group in groups.values():
        expected = len(group) * n_positive / n
        assert abs(_positives(group, ids, flags) - expected) < 1


def test_split_is_deterministic_and_order_independent():
    ids, flags = _cohort(30, 10)
    first = sp.split_patients(ids, flags, val_fraction=0.2, test_fraction=0.2, seed=7)
    again = sp.split_patients(ids[::-1], flags[::-1], val_fraction=0.2, test_fraction=0.2, seed=7)
    other = sp.split_patients(ids, flags, val_fraction=0.2, test_fraction=0.2, seed=8)
    assert first == again
    assert first != other


def test_split_without_stratification():
    split = sp.split_patients([f"p{i}" for i in range(10)], val_fraction=0.3)
    assert (len(split.train), len(split.val), len(split.test)) == (7, 3, 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patient_ids": ["a", "b", "a"]}, "'a' in patient_ids and patient_ids"),
        ({"patient_ids": ["a", "b"], "has_lesion": [True]}, "has_lesion has shape"),
        ({"patient_ids": ["a", "b"], "val_fraction": 1.0}, r"\[0, 1\)"),
        ({"patient_ids": ["a", "b"], "val_fraction": 0.5, "test_fraction": 0.5}, "no patients"),
    ],
)
def test_split_bad_inputs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sp.split_patients(**kwargs)


@pytest.mark.parametrize(("n", "n_positive", "n_folds"), [(20, 7, 5), (23, 4, 5), (9, 9, 3)])
def test_kfold_covers_each_patient_once_and_is_stratified(n, n_positive, n_folds):
    ids, flags = _cohort(n, n_positive)
    folds = sp.kfold_patients(ids, flags, n_folds=n_folds, seed=3)
    assert len(folds) == n_folds
    all_val = [p for fold in folds for p in fold.val]
    assert sorted(all_val) == sorted(ids)  # every patient validated exactly once
    sizes = [len(fold.val) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    for fold in folds:
        assert sorted(fold.train + fold.val) == sorted(ids)
        assert abs(_positives(fold.val, ids, flags) - n_positive / n_folds) < 1
    assert folds == sp.kfold_patients(ids[::-1], flags[::-1], n_folds=n_folds, seed=3)


def test_kfold_bad_fold_count_raises():
    with pytest.raises(ValueError, match="n_folds"):
        sp.kfold_patients(["a", "b"], n_folds=3)


def test_check_no_overlap_names_the_leaked_patients():
    slice_files = {
        "train": ["hippocampus_001.nii.gz", "hippocampus_002.nii.gz"],
        "val": ["hippocampus_002.nii.gz", "hippocampus_003.nii.gz"],
    }
    groups = {k: [sp.extract_patient_id(f) for f in v] for k, v in slice_files.items()}
    with pytest.raises(ValueError, match="1 patient.*'hippocampus_002' in train and val"):
        sp.check_no_overlap(groups)


def test_patient_split_refuses_overlap():
    with pytest.raises(ValueError, match="'b' in train and test"):
        sp.PatientSplit(train=("a", "b"), val=("c",), test=("b",))


def test_save_and_load_round_trip(tmp_path):
    ids, flags = _cohort(12, 4)
    folds = sp.kfold_patients(ids, flags, n_folds=3)
    path = sp.save_splits(folds, tmp_path / "splits" / "splits.json")
    assert sp.load_splits(path) == folds
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temp file left
    single = sp.split_patients(ids, flags, test_fraction=0.25)
    assert sp.load_splits(sp.save_splits(single, tmp_path / "one.json")) == [single]


def test_load_nnunet_style_splits_and_reject_bad_files(tmp_path):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": ["b", "a"], "val": ["c"]}]))
    assert sp.load_splits(path) == [sp.PatientSplit(("a", "b"), ("c",))]
    path.write_text(json.dumps({"train": ["a"]}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        sp.load_splits(path)
    path.write_text(json.dumps([{"train": ["a"], "val": ["a"]}]))
    with pytest.raises(ValueError, match="'a' in train and val"):
        sp.load_splits(path)
