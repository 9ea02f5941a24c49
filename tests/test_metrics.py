"""compute_dice and DiceAccumulator: hand-worked cases, empty-mask conventions, MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medseg_helpers.metrics.overlap import (
    DiceAccumulator,
    compute_dice,
    confusion_matrix,
    overlap_metrics,
    volume_ml,
)


def _masks() -> tuple[torch.Tensor, torch.Tensor]:
    """One 1x6 "image", classes 0..2 (B=1, 1, 1, 6)."""
    truth = torch.tensor([0, 1, 1, 1, 2, 0]).view(1, 1, 1, 6)
    pred = torch.tensor([0, 1, 1, 0, 0, 2]).view(1, 1, 1, 6)
    return pred, truth


def test_hand_computed_dice_per_class() -> None:
    pred, truth = _masks()
    dice = compute_dice(pred, truth, num_classes=3, include_background=True)
    # class 0: G = {0, 5}, P = {0, 3, 4}, overlap {0}: 2*1 / (2 + 3) = 0.4
    # class 1: G = {1, 2, 3}, P = {1, 2}, overlap 2:   2*2 / (3 + 2) = 0.8
    # class 2: G = {4}, P = {5}, overlap 0:            0 / 2 = 0
    assert torch.allclose(dice, torch.tensor([[0.4, 0.8, 0.0]]))
    assert torch.allclose(compute_dice(pred, truth, 3), torch.tensor([[0.8, 0.0]]))


def test_perfect_prediction_gives_one_and_disjoint_gives_zero() -> None:
    truth = torch.randint(0, 3, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    truth[:, :, 0, :3] = torch.tensor([0, 1, 2])  # every class present in both cases
    assert torch.equal(compute_dice(truth, truth, 3), torch.ones(2, 2))
    assert torch.equal(compute_dice((truth + 1) % 3, truth, 3, include_background=True),
                       torch.zeros(2, 3))


@pytest.mark.parametrize(("empty", "expected"), [("nan", math.nan), ("one", 1.0)])
def test_empty_truth_and_empty_pred_follow_the_convention(empty: str, expected: float) -> None:
    pred = truth = torch.zeros(1, 1, 4, 4, dtype=torch.long)  # class 1 absent from both
    value = compute_dice(pred, truth, num_classes=2, empty=empty).item()
    assert math.isnan(value) if math.isnan(expected) else value == expected


@pytest.mark.parametrize("empty", ["nan", "one"])
def test_false_positive_on_empty_truth_scores_zero(empty: str) -> None:
    truth = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    pred = truth.clone()
    pred[0, 0, 0, 0] = 1  # one false-positive pixel: 2*0 / (1 + 0) = 0
    assert compute_dice(pred, truth, num_classes=2, empty=empty).item() == 0.0


def test_channel_axis_is_optional_and_3d_works() -> None:
    generator = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 3, (2, 1, 4, 5, 6), generator=generator)
    truth = torch.randint(0, 3, (2, 1, 4, 5, 6), generator=generator)
    expected = compute_dice(pred, truth, 3)
    assert expected.shape == (2, 2)
    assert torch.equal(compute_dice(pred[:, 0], truth, 3), expected)
    assert torch.equal(compute_dice(pred[:, 0].int(), truth[:, 0].to(torch.uint8), 3), expected)


@pytest.mark.parametrize(("pred", "truth", "error", "match"), [
    (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long), TypeError,
     "integer mask"),
    (torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.zeros(1, 1, 4, 5, dtype=torch.long),
     ValueError, r"pred \(1, 1, 4, 4\) and truth \(1, 1, 4, 5\)"),
    (torch.full((1, 1, 2, 2), 3), torch.zeros(1, 1, 2, 2, dtype=torch.long), ValueError,
     r"pred has values \[3\] outside \[0, 3\)"),
    (torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), ValueError,
     "batch axis"),
])
def test_bad_inputs_raise_clear_errors(pred, truth, error, match) -> None:
    with pytest.raises(error, match=match):
        compute_dice(pred, truth, num_classes=3)


def test_unknown_empty_convention_raises() -> None:
    with pytest.raises(ValueError, match="empty must be"):
        compute_dice(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long),
                     2, empty="zero")


def _random_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three batches of (4, 1, 8, 8) masks with 3 classes, incl. cases without class 2 in the
    truth, without it in the prediction, and without it in both."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(3):
        pred = torch.randint(0, 3, (4, 1, 8, 8), generator=generator)
        truth = torch.randint(0, 2, (4, 1, 8, 8), generator=generator)
        truth[0, 0, 2:5, 2:5] = 2  # case 0 has class 2; cases 1-3 have none in the truth
        pred[2][pred[2] == 2] = 1  # case 2: class 2 absent from both
        pred[3][pred[3] == 2] = 0
        batches.append((pred, truth))
    return batches


def test_one_convention_equals_monai_ignore_empty_false() -> None:
    from monai.metrics import DiceMetric

    monai_dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False,
                            num_classes=3)
    for pred, truth in _random_batches():
        ours = compute_dice(pred, truth, 3, include_background=True, empty="one")
        assert torch.allclose(ours, monai_dice(pred, truth), atol=1e-6)


def test_nan_convention_differs_from_monai_default_only_on_false_positives() -> None:
    """MONAI's default ignore_empty=True gives NaN whenever the truth lacks the class, so a
    false positive there is not counted; ours (empty="nan") scores it 0."""
    from monai.metrics import DiceMetric

    monai_dice = DiceMetric(include_background=False, reduction="none", num_classes=3)
    for pred, truth in _random_batches():
        ours = compute_dice(pred, truth, 3)
        reference = monai_dice(pred, truth)
        truth_has = torch.stack([(truth == c).flatten(1).any(1) for c in (1, 2)], dim=1)
        pred_has = torch.stack([(pred == c).flatten(1).any(1) for c in (1, 2)], dim=1)
        assert torch.allclose(ours[truth_has], reference[truth_has], atol=1e-6)
        assert torch.isnan(reference[~truth_has]).all()
        assert (ours[~truth_has & pred_has] == 0).all()
        assert torch.isnan(ours[~truth_has & ~pred_has]).all()
        assert (~truth_has & pred_has).any() and (~truth_has & ~pred_has).any()


@pytest.mark.parametrize(("empty", "ignore_empty"), [("one", False), ("nan", True)])
def test_accumulator_matches_monai_mean_batch(empty: str, ignore_empty: bool) -> None:
    from monai.metrics import DiceMetric

    accumulator = DiceAccumulator(3, empty=empty)
    monai_dice = DiceMetric(include_background=False, reduction="mean_batch",
                            ignore_empty=ignore_empty, num_classes=3)
    for pred, truth in _random_batches(seed=2):
        if ignore_empty:  # make the conventions agree: no false positive on an empty truth
            for c in (1, 2):
                absent = ~(truth == c).flatten(1).any(1)
                pred[absent] = torch.where(pred[absent] == c, 0, pred[absent])
        accumulator.update(pred, truth)
        monai_dice(pred, truth)
    assert torch.allclose(accumulator.per_class(), monai_dice.aggregate().float(), atol=1e-6)


def test_accumulator_averages_per_class_over_scored_cases() -> None:
    accumulator = DiceAccumulator(3)
    truth = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]).view(2, 1, 4)
    pred = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]]).view(2, 1, 4)
    accumulator.update(pred, truth)  # class 1: 2*1/(1+2) = 2/3 and 1; class 2: NaN, NaN
    accumulator.update(torch.full((1, 1, 4), 2), torch.full((1, 1, 4), 2))  # class 2: 1
    # class 1: mean(2/3, 1) = 5/6 (the third case has no class 1: NaN, skipped)
    mean, per_class = accumulator.aggregate()
    assert per_class == pytest.approx([5 / 6, 1.0])
    assert mean == pytest.approx((5 / 6 + 1.0) / 2)
    accumulator.reset()
    assert math.isnan(accumulator.aggregate()[0])


# --- voxel-counting metrics of one case (NumPy) --------------------------------------------


def test_confusion_matrix_hand_worked_and_matches_sklearn() -> None:
    from sklearn.metrics import confusion_matrix as sk_confusion

    truth = np.array([0, 1, 1, 1, 2, 0])
    pred = np.array([0, 1, 1, 0, 0, 2])
    # rows = truth: class 0 -> pred {0, 2}; class 1 -> pred {1, 1, 0}; class 2 -> pred {0}
    expected = np.array([[1, 0, 1], [1, 2, 0], [1, 0, 0]])
    assert np.array_equal(confusion_matrix(pred, truth, 3), expected)
    generator = np.random.default_rng(0)
    pred, truth = generator.integers(0, 3, (2, 5, 7)), generator.integers(0, 3, (2, 5, 7))
    assert np.array_equal(confusion_matrix(pred, truth, 3),
                          sk_confusion(truth.ravel(), pred.ravel(), labels=[0, 1, 2]))


def test_overlap_metrics_hand_worked() -> None:
    truth = np.array([0, 1, 1, 1, 2, 0])
    pred = np.array([0, 1, 1, 0, 0, 2])
    m = overlap_metrics(confusion_matrix(pred, truth, 3))
    # class 1: TP 2, FP 0, FN 1, TN 3
    assert (m["tp"][1], m["fp"][1], m["fn"][1], m["tn"][1]) == (2, 0, 1, 3)
    assert m["dice"][1] == pytest.approx(4 / 5)  # 2*2 / (2*2 + 0 + 1)
    assert m["iou"][1] == pytest.approx(2 / 3)  # 2 / (2 + 0 + 1)
    assert m["accuracy"][1] == pytest.approx(5 / 6)  # (2 + 3) / 6
    assert m["sensitivity"][1] == pytest.approx(2 / 3)
    assert m["specificity"][1] == 1.0  # 3 / (3 + 0)
    assert m["precision"][1] == 1.0
    # class 2: TP 0, FP 1, FN 1: Dice 0, precision 0 / 1 = 0
    assert m["dice"][2] == 0.0 and m["precision"][2] == 0.0
    assert np.allclose(m["dice"], compute_dice(torch.from_numpy(pred)[None],
                                               torch.from_numpy(truth)[None], 3,
                                               include_background=True)[0].numpy())


def test_accuracy_is_misleading_under_imbalance() -> None:
    truth = np.zeros(1000, dtype=np.int64)
    truth[:1] = 1  # a 1-voxel lesion in 1000 voxels
    m = overlap_metrics(confusion_matrix(np.zeros_like(truth), truth, 2))
    assert m["accuracy"][1] == pytest.approx(0.999)  # "99.9 % accurate"...
    assert m["dice"][1] == 0.0 and m["sensitivity"][1] == 0.0  # ...and finds nothing


def test_empty_class_conventions() -> None:
    truth = np.zeros((4, 4), dtype=np.int64)
    both_empty = overlap_metrics(confusion_matrix(truth, truth, 2))
    for name in ("dice", "iou", "sensitivity", "precision"):
        assert math.isnan(both_empty[name][1]), name
    assert both_empty["specificity"][1] == 1.0 and both_empty["accuracy"][1] == 1.0
    pred = truth.copy()
    pred[0, 0] = 1  # false positive on a case without the class
    false_alarm = overlap_metrics(confusion_matrix(pred, truth, 2))
    assert false_alarm["dice"][1] == 0.0 and false_alarm["iou"][1] == 0.0
    assert false_alarm["precision"][1] == 0.0 and math.isnan(false_alarm["sensitivity"][1])
    missed = overlap_metrics(confusion_matrix(truth, pred, 2))
    assert missed["sensitivity"][1] == 0.0 and math.isnan(missed["precision"][1])


def test_overlap_metrics_match_monai_confusion_matrix_metrics() -> None:
    import torch.nn.functional as F
    from monai.metrics import compute_confusion_matrix_metric, get_confusion_matrix

    generator = np.random.default_rng(3)
    truth = generator.integers(0, 2, (4, 6, 6))
    pred = generator.integers(0, 3, (4, 6, 6))
    truth[0, :2, :2] = 2  # class 2 in case 0 only; never predicted in case 3
    pred[3][pred[3] == 2] = 0
    onehot = [F.one_hot(torch.from_numpy(a), 3).movedim(-1, 1).float() for a in (pred, truth)]
    reference = get_confusion_matrix(*onehot, include_background=True)  # (B, C, 4)
    names = {"sensitivity": "sensitivity", "specificity": "specificity",
             "precision": "precision", "accuracy": "accuracy", "dice": "f1 score",
             "iou": "threat score"}
    for b in range(4):
        ours = overlap_metrics(confusion_matrix(pred[b], truth[b], 3))
        for name, monai_name in names.items():
            expected = compute_confusion_matrix_metric(monai_name, reference[b]).numpy()
            assert np.allclose(ours[name], expected, equal_nan=True), (b, name)


def test_volume_ml_uses_the_spacing() -> None:
    # 1000 voxels of 0.5 x 1 x 2 mm = 1000 mm^3 = 1 mL
    assert volume_ml(1000, (0.5, 1.0, 2.0)) == pytest.approx(1.0)


def test_confusion_matrix_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"pred \(2,\) and truth \(3,\)"):
        confusion_matrix(np.zeros(2, int), np.zeros(3, int), 2)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        confusion_matrix(np.array([0, 5]), np.zeros(2, int), 2)
    with pytest.raises(TypeError, match="integer label map"):
        confusion_matrix(np.zeros(2), np.zeros(2, int), 2)
    with pytest.raises(ValueError, match="square"):
        overlap_metrics(np.zeros((2, 3)))
