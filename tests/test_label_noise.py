"""Simulated label noise: hand-worked boundary moves, seeded randomness, labels stay in set."""

import numpy as np
import pytest

from medseg_helpers.transforms.label_noise import (
    NOISE_KINDS,
    LabelNoise,
    corrupt_slices,
    drop_components,
    perturb_boundary,
)


def box_label(shape=(5, 9, 9)):
    """Organ (1) box z 1..3, y/x 2..6 with a single lesion (2) voxel at its centre."""
    label = np.zeros(shape, dtype=np.uint8)
    label[1:4, 2:7, 2:7] = 1
    label[2, 4, 4] = 2
    return label


def test_dilation_by_one_spacing_adds_the_six_neighbours():
    label = np.zeros((3, 3, 3), dtype=np.int16)
    label[1, 1, 1] = 1
    out = perturb_boundary(label, (1.0, 1.0, 1.0), 1.0)
    # a voxel and its 6 face neighbours are within 1 mm; edge neighbours are sqrt(2) away
    assert out.sum() == 7 and out[1, 1, 2] == 1 and out[1, 2, 2] == 0


def test_dilation_follows_anisotropic_spacing_in_mm():
    label = np.zeros((5, 5, 5), dtype=np.int16)
    label[2, 2, 2] = 1
    out = perturb_boundary(label, (3.0, 1.0, 1.0), 2.0)  # 3 mm slices: no growth along z
    assert out[1, 2, 2] == 0 and out[3, 2, 2] == 0
    assert out[2, 2, 4] == 1 and out[2, 2, 0] == 1  # 2 voxels of 1 mm in-plane


def test_erosion_gives_removed_lesion_voxels_the_surrounding_organ():
    label = box_label()
    out = perturb_boundary(label, (1.0, 1.0, 1.0), -1.0, classes=[2])
    assert (out == 2).sum() == 0 and out[2, 4, 4] == 1  # lesion became organ, not background


def test_erosion_of_the_organ_by_one_voxel_peels_one_layer():
    label = box_label()
    out = perturb_boundary(label, (1.0, 1.0, 1.0), -1.0, classes=[1])
    # 3x5x5 box minus its surface leaves 1x3x3 = 9 voxels, one of them is the lesion
    assert (out > 0).sum() == 9 and out[2, 4, 4] == 2


def test_growing_the_organ_never_overwrites_its_lesion():
    label = box_label()
    label[2, 4, 6] = 2  # a lesion on the organ's edge
    out = perturb_boundary(label, (1.0, 1.0, 1.0), 2.0, classes=[1])
    assert (out == 2).sum() == 2 and out[2, 4, 8] == 1  # organ grew 2 voxels past x = 6


def test_zero_distance_is_a_copy_and_absent_classes_are_skipped():
    label = box_label()
    out = perturb_boundary(label, (1, 1, 1), 0)
    assert np.array_equal(out, label) and out is not label
    assert np.array_equal(perturb_boundary(label, (1, 1, 1), 2.0, classes=[5]), label)


def test_drop_components_with_probability_one_and_zero():
    label = box_label()
    label[2, 2, 2] = 2  # a second lesion, on the organ edge
    dropped, count = drop_components(label, 2, 1.0)
    assert count == 2 and not (dropped == 2).any() and dropped[2, 4, 4] == 1
    kept, count = drop_components(label, 2, 0.0)
    assert count == 0 and np.array_equal(kept, label)


def test_drop_components_is_seeded():
    label = np.zeros((1, 1, 40), dtype=np.int32)
    label[0, 0, ::2] = 2  # 20 separate one-voxel "lesions"
    a, na = drop_components(label, 2, 0.5, seed=3)
    b, nb = drop_components(label, 2, 0.5, seed=3)
    assert np.array_equal(a, b) and na == nb and 0 < na < 20


@pytest.mark.parametrize("mode", ["flip", "shift", "empty"])
def test_corrupt_slices_spoils_the_requested_share_of_foreground_slices(mode):
    label = np.zeros((10, 8, 8), dtype=np.uint8)
    label[2:8, 1:4, 1:3] = 1  # 6 foreground slices, asymmetric so a flip changes them
    out, chosen = corrupt_slices(label, 0.5, mode=mode, seed=1)
    assert len(chosen) == 3 and set(chosen) <= set(range(2, 8))
    changed = [z for z in range(10) if not np.array_equal(out[z], label[z])]
    assert changed == chosen
    assert set(np.unique(out)) <= {0, 1}


def test_flip_mirrors_along_x():
    label = np.zeros((1, 2, 3), dtype=np.uint8)
    label[0, 0, 0] = 1
    out, _ = corrupt_slices(label, 1.0, "flip")
    assert out[0, 0, 2] == 1 and out.sum() == 1


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_label_noise_keeps_the_label_set_and_is_reproducible(kind):
    label = box_label((6, 12, 12))
    noise = LabelNoise(kind, 1.0 if kind in ("dilate", "erode") else 0.5, seed=2)
    a = noise.apply(label, (1.0, 1.0, 1.0), "case_1")
    assert np.array_equal(a, noise.apply(label, (1.0, 1.0, 1.0), "case_1"))
    assert set(np.unique(a)) <= {0, 1, 2} and a.shape == label.shape
    assert noise.describe()


def test_case_seeds_differ_between_cases():
    noise = LabelNoise("drop_components", 0.5)
    assert noise.case_seed("a") != noise.case_seed("b")


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: LabelNoise("blur", 1.0), ValueError, "unknown noise kind 'blur'"),
    (lambda: LabelNoise("flip_slices", 2.0), ValueError, r"amount in \[0, 1\]"),
    (lambda: LabelNoise("dilate", -1.0), ValueError, "distance in mm >= 0"),
    (lambda: perturb_boundary(box_label(), (1, 1), 1.0), ValueError, "spacing_mm must be 3"),
    (lambda: perturb_boundary(box_label().astype(float), (1, 1, 1), 1.0), ValueError,
     "integer"),
    (lambda: drop_components(box_label(), 2, 1.5), ValueError, "probability"),
    (lambda: corrupt_slices(box_label(), 0.5, "rotate"), ValueError, "mode must be"),
])
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
