"""Tests for medseg_helpers.data.patch_dataset: 3D patches, their sampling and their cache."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _decathlon_helpers import count_reads, image_label_pair, write_decathlon

from medseg_helpers.data.datasets import make_dataloader
from medseg_helpers.data.decathlon import Case, read_decathlon
from medseg_helpers.data.patch_dataset import PatchDataset3D
from medseg_helpers.data.volume import Volume


def test_patch_items_have_documented_shapes_and_dtypes(cases):
    dataset = PatchDataset3D(cases, (4, 16, 16), samples_per_case=3, preset="medium")
    assert len(dataset) == 12
    item = dataset[4]
    assert item["patient_id"] == cases[1].patient_id
    assert item["image"].shape == (1, 4, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 4, 16, 16) and item["label"].dtype == torch.int64
    assert set(item["label"].unique().tolist()) <= {0, 1, 2}


def _cube_case(tmp_path: Path) -> list[Case]:
    """(16, 32, 32) with a foreground cube [6:10, 12:20, 12:20]: every 4x8x8 patch centre
    on it, or on background shifted inwards from a border, keeps its class."""
    image = np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32)
    label = np.zeros((16, 32, 32), np.uint8)
    label[6:10, 12:20, 12:20] = 1
    pair = (Volume(image), Volume(label))
    return read_decathlon(write_decathlon(tmp_path / "cube", {"cube": pair}))


@pytest.mark.parametrize(
    ("pos", "neg", "low", "high"),
    [(1, 0, 1.0, 1.0), (0, 1, 0.0, 0.0), (1, 1, 0.4, 0.6), (3, 1, 0.67, 0.83)],
)
def test_patch_centres_follow_the_pos_neg_ratio(tmp_path, pos, neg, low, high):
    dataset = PatchDataset3D(
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
    image, label = image_label_pair((6, 20, 20))
    empty = label.with_array(np.zeros_like(label.array))
    cases = read_decathlon(write_decathlon(tmp_path / "data", {"empty": (image, empty)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = PatchDataset3D(cases, (4, 8, 8), samples_per_case=20, preset="heavy")
        items = [dataset[i] for i in range(len(dataset))]
    assert all(i["image"].shape == (1, 4, 8, 8) and not i["label"].any() for i in items)


def test_volume_smaller_than_the_patch_is_padded(tmp_path):
    small = image_label_pair((3, 6, 6))
    cases = read_decathlon(write_decathlon(tmp_path / "data", {"small": small}))
    item = PatchDataset3D(cases, (4, 8, 8), preset=None)[0]
    assert item["image"].shape == (1, 4, 8, 8) and item["label"].shape == (1, 4, 8, 8)


def test_patch_disk_cache_is_reused_and_works_with_workers(cases, tmp_path, monkeypatch):
    reads = count_reads(monkeypatch)
    first = PatchDataset3D(cases, (4, 16, 16), cache_dir=tmp_path, seed=5)
    second = PatchDataset3D(cases, (4, 16, 16), cache_dir=tmp_path, seed=5)
    assert len(reads) == 8
    torch.testing.assert_close(first[0]["image"], second[0]["image"])  # same seed, same patch
    loader = make_dataloader(second, batch_size=4, shuffle=True, num_workers=2)
    shapes = [tuple(b["image"].shape) for b in loader]
    assert shapes == [(4, 1, 4, 16, 16)] * 4
