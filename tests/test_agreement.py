"""Agreement between annotators (pairwise Dice, Fleiss' kappa) and label fusion (majority
vote, STAPLE): hand-worked values, the textbook kappa example, and MONAI's vote as oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medseg_helpers.metrics.agreement import fleiss_kappa, majority_vote, pairwise_dice, staple


def _raters_from_counts(counts: list[list[int]]) -> list[np.ndarray]:
    """One label array per rater, subjects along the axis, from per-subject class counts."""
    columns = [np.repeat(np.arange(len(row)), row) for row in counts]  # each: raters' votes
    return [np.array([column[r] for column in columns]) for r in range(len(columns[0]))]


def test_fleiss_kappa_reproduces_the_textbook_example():
    # Fleiss (1971) as tabulated on Wikipedia: 10 subjects, 14 raters, 5 categories;
    # P = 0.378, P_e = 0.213, kappa = 0.210
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
              [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
              [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(_raters_from_counts(counts), 5) == pytest.approx(0.2099, abs=5e-4)


def test_fleiss_kappa_is_one_for_identical_raters_and_undefined_for_one_class():
    label = np.array([[0, 1, 2, 1]])
    assert fleiss_kappa([label, label, label], 3) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([np.zeros(4, int)] * 3, 3))


def test_pairwise_dice_by_hand():
    a = np.array([0, 1, 1, 1, 2, 0])
    b = np.array([0, 1, 1, 0, 2, 2])
    c = np.array([0, 0, 1, 1, 0, 0])
    table = pairwise_dice([a, b, c], 3, names=["A", "B", "C"])
    assert list(zip(table["a"], table["b"], strict=True)) == [("A", "B"), ("A", "C"), ("B", "C")]
    # A-B organ: |{1,2}| shared of 3 + 2 -> 0.8; lesion: 1 shared of 1 + 2 -> 2/3
    assert table.loc[0, "dice_1"] == pytest.approx(0.8)
    assert table.loc[0, "dice_2"] == pytest.approx(2 / 3)
    assert table.loc[1, "dice_2"] == pytest.approx(0.0)  # A draws a lesion, C none
    assert table.loc[2, "dice_1"] == pytest.approx(2 * 1 / (2 + 2))


def test_majority_vote_by_hand_ties_go_to_the_lower_class():
    votes = [np.array([0, 2, 1, 2]), np.array([1, 2, 1, 1]), np.array([2, 1, 0, 0])]
    # voxel 0: one vote each -> 0; voxel 1: 2,2,1 -> 2; voxel 2: 1,1,0 -> 1; 3: 2,1,0 -> 0
    assert majority_vote(votes, 3).tolist() == [0, 2, 1, 0]


def test_majority_vote_matches_monai_vote_ensemble():
    from monai.transforms import VoteEnsemble

    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 3, size=(4, 9, 7)) for _ in range(5)]
    oracle = VoteEnsemble(num_classes=3)([torch.from_numpy(label)[None] for label in labels])
    np.testing.assert_array_equal(majority_vote(labels, 3), oracle[0].numpy())


def _disc_labels():
    """A (1, 32, 32) organ disc with a lesion disc inside it."""
    yy, xx = np.mgrid[:32, :32]
    label = np.zeros((1, 32, 32), np.int64)
    label[0][(yy - 16) ** 2 + (xx - 16) ** 2 <= 100] = 1
    label[0][(yy - 14) ** 2 + (xx - 18) ** 2 <= 9] = 2
    return label


def test_staple_of_identical_annotators_is_their_label_with_perfect_quality():
    truth = _disc_labels()
    result = staple([truth, truth, truth], 3)
    np.testing.assert_array_equal(result.label, truth)
    for k in (1, 2):
        np.testing.assert_allclose(result.sensitivity[k], 1.0, atol=1e-6)
        np.testing.assert_allclose(result.specificity[k], 1.0, atol=1e-6)


def test_staple_finds_the_annotator_who_misses_the_lesion():
    truth = _disc_labels()
    missed = np.where(truth == 2, 1, truth)  # lesion drawn as organ
    wide = truth.copy()
    wide[0, 5:27, 5:27] = np.maximum(wide[0, 5:27, 5:27], 1)  # organ drawn too wide
    result = staple([truth, truth.copy(), missed, wide], 3)
    assert result.sensitivity[2][2] < 0.1 < 0.9 < result.sensitivity[2][:2].min()
    assert result.specificity[1][3] < result.specificity[1][:3].min()
    assert (result.label == truth).mean() > 0.99
    assert set(result.probability) == {1, 2} and result.probability[2].shape == truth.shape


@pytest.mark.parametrize("labels, message", [
    ([np.zeros(3, int)], "at least two annotators"),
    ([np.zeros(3, int), np.zeros(4, int)], "differ in shape"),
    ([np.zeros(3, int), np.full(3, 3)], r"labels must lie in \[0, 3\)"),
])
def test_bad_inputs_are_named(labels, message):
    for function in (fleiss_kappa, majority_vote, staple):
        with pytest.raises(ValueError, match=message):
            function(labels, 3)
