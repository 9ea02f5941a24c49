"""Tests for medseg_helpers.data.decathlon: reading a Decathlon dataset.json into cases."""

from __future__ import annotations

import json

import pytest
from _decathlon_helpers import image_label_pair, write_decathlon

from medseg_helpers.data.decathlon import read_class_names, read_decathlon

# --------------------------------------------------------------------------- read_decathlon


def test_read_decathlon_lists_cases_with_declared_labels(cases, dataset_dir):
    assert [c.patient_id for c in cases] == [f"phantom_mr_{i:03d}" for i in range(4)]
    assert cases[0].image_path == dataset_dir / "imagesTr" / "phantom_mr_000.nii.gz"
    assert cases[0].label_path == dataset_dir / "labelsTr" / "phantom_mr_000.nii.gz"
    assert all(c.label_values == (0, 1, 2) for c in cases)


def test_read_decathlon_skips_macos_metadata_entries(tmp_path):
    root = write_decathlon(tmp_path, {"a_001": image_label_pair()})
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/._a_001.nii.gz", "label": "./labelsTr/._a"})
    (root / "dataset.json").write_text(json.dumps(meta))
    assert [c.patient_id for c in read_decathlon(root)] == ["a_001"]


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
        read_decathlon(tmp_path)


# ------------------------------------------------------------------------ read_class_names


def test_read_class_names_orders_names_by_label_value(tmp_path):
    labels = {"2": "lesion", "0": "background", "1": "organ"}  # any key order
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    assert read_class_names(tmp_path) == ["background", "organ", "lesion"]


def test_read_class_names_of_a_generated_dataset(dataset_dir):
    assert read_class_names(dataset_dir) == ["background", "organ", "lesion"]


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (None, FileNotFoundError, "no dataset.json"),
        ("[1, 2", ValueError, "not valid JSON"),
        ('{"training": []}', ValueError, "'labels' object"),
        ('{"labels": {"zero": "bg"}}', ValueError, "'labels' keys must be integers"),
        ('{"labels": {"0": "bg", "2": "lesion"}}', ValueError,
         r"labels \[0, 2\] are not 0..K-1; remap them"),
    ],
)
def test_read_class_names_rejects_what_cannot_name_classes(tmp_path, content, error, match):
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(error, match=match):
        read_class_names(tmp_path)
