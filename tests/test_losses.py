"""Losses written from scratch agree with `monai.losses` and with arithmetic done by hand.

Inputs are float64 so that differences are those of the formulas, not of rounding (MONAI's
focal loss computes in float32, hence its looser tolerance).
"""

import math
import warnings

import monai.losses as monai_losses  # a hard dependency: a broken MONAI fails these tests
import pytest
import torch
import torch.nn.functional as F

from medseg_helpers import losses as L

SHAPES = {"2d": (2, 3, 6, 5), "3d": (2, 3, 4, 5, 3)}
EDGES = ["random", "empty", "all_foreground", "class_absent"]


def make_case(dims: str, edge: str, channels: int = 3, seed: int = 0):
    """Random logits (B, C, *S) and labels (B, 1, *S) for one of the edge cases.

    empty: every voxel background; all_foreground: every voxel the last class;
    class_absent: class 1 appears nowhere; random: all classes mixed.
    """
    g = torch.Generator().manual_seed(seed)
    b, _, *spatial = SHAPES[dims]
    logits = 3 * torch.randn(b, channels, *spatial, generator=g, dtype=torch.float64)
    labels = torch.randint(0, channels, (b, 1, *spatial), generator=g)
    if edge == "empty":
        labels.zero_()
    elif edge == "all_foreground":
        labels.fill_(channels - 1)
    elif edge == "class_absent" and channels > 2:
        labels[labels == 1] = 2
    elif edge == "class_absent":
        labels.zero_()
    return logits, labels


def monai_call(loss_cls, logits, labels, **kw):
    """Call a MONAI loss with label targets, silencing its single-channel warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loss_cls(to_onehot_y=logits.shape[1] > 1, **kw)(logits, labels)


# ours, MONAI keyword arguments and channels
DICE_TABLE = [
    ({"activation": "softmax"}, {"softmax": True}, 3),
    ({"activation": "softmax", "include_background": False},
     {"softmax": True, "include_background": False}, 3),
    ({"activation": "softmax", "batch": True}, {"softmax": True, "batch": True}, 3),
    ({"activation": "softmax", "include_background": False, "batch": True},
     {"softmax": True, "include_background": False, "batch": True}, 3),
    ({"activation": "sigmoid"}, {"sigmoid": True}, 3),
    ({"activation": "sigmoid"}, {"sigmoid": True}, 1),
    ({"activation": "sigmoid", "batch": True}, {"sigmoid": True, "batch": True}, 1),
    ({"activation": "softmax", "smooth_nr": 0.0, "smooth_dr": 1e-6},
     {"softmax": True, "smooth_nr": 0.0, "smooth_dr": 1e-6}, 3),
    ({"activation": "softmax", "smooth_nr": 1.0, "smooth_dr": 1.0},
     {"softmax": True, "smooth_nr": 1.0, "smooth_dr": 1.0}, 3),
    ({"activation": "softmax", "weight": [0.5, 1.0, 2.0]},
     {"softmax": True, "weight": [0.5, 1.0, 2.0]}, 3),
    ({"activation": "softmax", "reduction": "sum"}, {"softmax": True, "reduction": "sum"}, 3),
]


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize(("ours", "theirs", "channels"), DICE_TABLE)
def test_dice_matches_monai(dims, edge, ours, theirs, channels):
    logits, labels = make_case(dims, edge, channels)
    expected = monai_call(monai_losses.DiceLoss, logits, labels, **theirs)
    torch.testing.assert_close(L.dice_loss(logits, labels, **ours), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", SHAPES)
def test_dice_none_reduction_gives_one_loss_per_sample_and_class(dims):
    logits, labels = make_case(dims, "random")
    ours = L.dice_loss(logits, labels, reduction="none")
    theirs = monai_call(monai_losses.DiceLoss, logits, labels, softmax=True, reduction="none")
    assert ours.shape == logits.shape[:2]
    torch.testing.assert_close(ours, theirs.reshape(ours.shape), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize(("alpha", "beta", "include_background", "batch"), [
    (0.5, 0.5, True, False), (0.3, 0.7, True, False), (0.7, 0.3, False, False),
    (0.3, 0.7, False, True), (1.0, 1.0, True, True)])
def test_tversky_matches_monai(dims, edge, alpha, beta, include_background, batch):
    logits, labels = make_case(dims, edge)
    kw = {"alpha": alpha, "beta": beta, "include_background": include_background, "batch": batch}
    expected = monai_call(monai_losses.TverskyLoss, logits, labels, softmax=True, **kw)
    torch.testing.assert_close(L.tversky_loss(logits, labels, **kw), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize(("ours", "theirs"), [
    ({}, {}),
    ({"lambda_dice": 0.3, "lambda_ce": 1.7}, {"lambda_dice": 0.3, "lambda_ce": 1.7}),
    ({"include_background": False, "batch": True}, {"include_background": False, "batch": True}),
    ({"weight": [0.2, 1.0, 3.0]}, {"weight": torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)}),
    ({"weight": [0.2, 1.0, 3.0], "include_background": False},
     {"weight": torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64), "include_background": False}),
])
def test_dice_ce_matches_monai(dims, edge, ours, theirs):
    logits, labels = make_case(dims, edge)
    expected = monai_call(monai_losses.DiceCELoss, logits, labels, softmax=True, **theirs)
    torch.testing.assert_close(L.dice_ce_loss(logits, labels, **ours), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("edge", ["random", "empty", "all_foreground"])
@pytest.mark.parametrize("pos_weight", [None, [3.0]])
def test_binary_dice_ce_matches_monai_bce(dims, edge, pos_weight):
    logits, labels = make_case(dims, edge, channels=1)
    labels = (labels > 0).long() if edge != "all_foreground" else torch.ones_like(labels)
    theirs = {} if pos_weight is None else {"weight": torch.tensor(pos_weight, dtype=torch.float64)}
    expected = monai_call(monai_losses.DiceCELoss, logits, labels, sigmoid=True, **theirs)
    ours = L.dice_ce_loss(logits, labels, activation="sigmoid", weight=pos_weight)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("weight", [None, [0.2, 1.0, 3.0]])
def test_cross_entropy_matches_torch_with_class_indices(dims, weight):
    logits, labels = make_case(dims, "random")
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    expected = F.cross_entropy(logits, labels[:, 0], weight=w)
    torch.testing.assert_close(L.cross_entropy_loss(logits, labels, weight=weight), expected)


def test_weighted_cross_entropy_is_the_same_for_labels_and_one_hot():
    logits, labels = make_case("2d", "random")
    onehot = F.one_hot(labels[:, 0], 3).movedim(-1, 1).double()
    weight = [0.2, 1.0, 3.0]
    ours = L.cross_entropy_loss(logits, labels, weight=weight)
    torch.testing.assert_close(L.cross_entropy_loss(logits, onehot, weight=weight), ours)
    # torch (and so MONAI's DiceCELoss) reads one-hot targets as probabilities and divides
    # the weighted sum by the voxel count, not by the summed weights: a different number.
    torch_one_hot = F.cross_entropy(logits, onehot, weight=torch.tensor(weight).double())
    assert not torch.allclose(torch_one_hot, ours)


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("kw", [
    {"gamma": 2.0}, {"gamma": 0.0}, {"gamma": 2.0, "alpha": 0.25}, {"gamma": 1.5, "alpha": 0.8},
    {"gamma": 2.0, "include_background": False}, {"gamma": 2.0, "alpha": [0.2, 0.5, 0.9]},
])
def test_sigmoid_focal_matches_monai(dims, edge, kw):
    logits, labels = make_case(dims, edge)
    expected = monai_call(monai_losses.FocalLoss, logits, labels, **kw)
    ours = L.focal_loss(logits, labels, activation="sigmoid", **kw)
    torch.testing.assert_close(ours, expected.double(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("kw", [{"gamma": 2.0}, {"gamma": 0.5, "alpha": 0.25},
                                {"gamma": 2.0, "alpha": [0.1, 0.6, 0.3]}])
def test_softmax_focal_matches_monai_summed_over_classes(dims, edge, kw):
    logits, labels = make_case(dims, edge)
    theirs = monai_call(monai_losses.FocalLoss, logits, labels, use_softmax=True,
                        reduction="none", **kw)
    ours = L.focal_loss(logits, labels, activation="softmax", reduction="none", **kw)
    torch.testing.assert_close(ours, theirs.double().sum(dim=1), atol=1e-5, rtol=1e-5)


def test_softmax_focal_with_gamma_zero_is_cross_entropy():
    logits, labels = make_case("3d", "random")
    torch.testing.assert_close(L.focal_loss(logits, labels, gamma=0.0, activation="softmax"),
                               F.cross_entropy(logits, labels[:, 0]))


def test_softmax_focal_without_background_drops_only_the_background_term():
    logits, labels = make_case("2d", "random")
    per_voxel = L.focal_loss(logits, labels, gamma=2.0, activation="softmax", reduction="none")
    no_bg = L.focal_loss(logits, labels, gamma=2.0, activation="softmax",
                         include_background=False, reduction="none")
    is_fg = labels[:, 0] > 0
    torch.testing.assert_close(no_bg[is_fg], per_voxel[is_fg])
    assert torch.all(no_bg[~is_fg] == 0)


# Hand-worked 2x2 example, one channel, probabilities given (activation="none"), no smoothing:
#   p = [[0.9, 0.2],    g = [[1, 0],
#        [0.6, 0.1]]         [1, 0]]
#   TP = 0.9 + 0.6 = 1.5; sum p = 1.8; sum g = 2; FP = 0.2 + 0.1 = 0.3; FN = 0.1 + 0.4 = 0.5
#   Dice = 2*1.5 / (1.8 + 2) = 3/3.8 -> loss 0.8/3.8 = 4/19
#   Tversky(alpha=0.3, beta=0.7) = 1.5 / (1.5 + 0.09 + 0.35) = 1.5/1.94 -> loss 0.44/1.94 = 22/97
P = torch.tensor([[[[0.9, 0.2], [0.6, 0.1]]]], dtype=torch.float64)
G = torch.tensor([[[[1, 0], [1, 0]]]])
NO_SMOOTH = {"activation": "none", "smooth_nr": 0.0, "smooth_dr": 0.0}


@pytest.mark.parametrize(("loss", "kw", "expected"), [
    (L.dice_loss, NO_SMOOTH, 4 / 19),
    (L.tversky_loss, {**NO_SMOOTH, "alpha": 0.3, "beta": 0.7}, 22 / 97),
    (L.tversky_loss, {**NO_SMOOTH, "alpha": 0.5, "beta": 0.5}, 4 / 19),  # Tversky(.5, .5) = Dice
])
def test_overlap_losses_on_the_hand_worked_2x2_example(loss, kw, expected):
    assert loss(P, G, **kw).item() == pytest.approx(expected, abs=1e-12)


def test_cross_entropy_on_a_hand_worked_example():
    # Two voxels, two classes. Voxel 0: logits (0, ln 3) -> p = (1/4, 3/4), label 1,
    # loss -ln(3/4) = 0.28768. Voxel 1: logits (0, 0), label 0, loss ln 2 = 0.69315.
    # Weights (1, 3): weighted mean = (3 * 0.28768 + 1 * 0.69315) / (3 + 1) = 0.38905.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3), 0.0]]]], dtype=torch.float64)
    labels = torch.tensor([[[[1, 0]]]])
    expected = (3 * -math.log(0.75) + math.log(2)) / 4
    assert L.cross_entropy_loss(logits, labels, weight=[1, 3]).item() == pytest.approx(expected)


def test_focal_on_a_hand_worked_example():
    # logit 0 -> p = 0.5, truth 1: CE = ln 2, (1 - p_t)^2 = 0.25 -> 0.17329; alpha 0.25 -> 0.04332
    logits, truth = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    assert L.focal_loss(logits, truth).item() == pytest.approx(0.25 * math.log(2))
    assert L.focal_loss(logits, truth, alpha=0.25).item() == pytest.approx(0.0625 * math.log(2))


def test_perfect_prediction_gives_zero_dice_loss_and_disjoint_gives_one():
    _, labels = make_case("2d", "random")
    perfect = 50.0 * F.one_hot(labels[:, 0], 3).movedim(-1, 1).double()
    assert L.dice_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)
    wrong = 50.0 * F.one_hot((labels[:, 0] + 1) % 3, 3).movedim(-1, 1).double()
    assert L.dice_loss(wrong, labels).item() == pytest.approx(1.0, abs=1e-6)


def test_absent_class_scores_perfect_with_default_smoothing_and_zero_without():
    labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)  # class 1 absent from the truth...
    logits = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    logits[:, 0] = 30.0  # ...and (almost) absent from the prediction: p1 ~ 1e-13 per voxel
    kw = {"include_background": False, "reduction": "none"}
    assert L.dice_loss(logits, labels, **kw).item() == pytest.approx(0.0, abs=1e-6)
    assert L.dice_loss(logits, labels, smooth_nr=0.0, **kw).item() == pytest.approx(1.0)


def test_batch_dice_does_not_reward_an_empty_slice():
    # Sample 0 has the class and predicts it; sample 1 has none and predicts a little of it.
    labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    labels[0, 0, :2] = 1
    probs = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    probs[0, 0, :2] = 1.0
    probs[1, 0, 0, 0] = 1.0
    kw = {"activation": "none", "smooth_nr": 0.0, "smooth_dr": 1e-9}
    # per sample: sample 0 loss 0, sample 1 loss 1 (0 / 1) -> mean 0.5
    assert L.dice_loss(probs, labels, **kw).item() == pytest.approx(0.5)
    # batch: TP = 8, sum p = 9, sum g = 8 -> Dice 16/17 -> loss 1/17
    assert L.dice_loss(probs, labels, batch=True, **kw).item() == pytest.approx(1 / 17)


GRADCHECK = [
    (L.dice_loss, {}), (L.dice_loss, {"activation": "sigmoid", "batch": True}),
    (L.tversky_loss, {"alpha": 0.3, "beta": 0.7}), (L.cross_entropy_loss, {"weight": [1, 2, 3]}),
    (L.cross_entropy_loss, {"activation": "sigmoid"}), (L.dice_ce_loss, {}),
    (L.focal_loss, {"alpha": 0.25}), (L.focal_loss, {"activation": "softmax", "gamma": 1.5}),
]


@pytest.mark.parametrize(("loss", "kw"), GRADCHECK)
def test_gradients_match_finite_differences(loss, kw):
    logits, labels = make_case("2d", "random")
    logits = logits[:1, :, :3, :3].clone().requires_grad_()
    labels = labels[:1, :, :3, :3]
    assert torch.autograd.gradcheck(lambda x: loss(x, labels, **kw), (logits,))


@pytest.mark.parametrize(("module", "function", "kw"), [
    (L.DiceLoss, L.dice_loss, {"include_background": False, "weight": [1.0, 2.0]}),
    (L.TverskyLoss, L.tversky_loss, {"alpha": 0.2, "beta": 0.8}),
    (L.CrossEntropyLoss, L.cross_entropy_loss, {"weight": [0.5, 1.0, 2.0]}),
    (L.DiceCELoss, L.dice_ce_loss, {"lambda_ce": 0.5, "weight": [0.5, 1.0, 2.0]}),
    (L.FocalLoss, L.focal_loss, {"gamma": 1.0, "alpha": 0.4}),
])
def test_modules_equal_their_functions(module, function, kw):
    logits, labels = make_case("3d", "random")
    torch.testing.assert_close(module(**kw)(logits, labels), function(logits, labels, **kw))


def test_one_hot_and_integer_truth_give_the_same_dice():
    logits, labels = make_case("3d", "random")
    onehot = F.one_hot(labels[:, 0], 3).movedim(-1, 1)
    torch.testing.assert_close(L.dice_loss(logits, onehot), L.dice_loss(logits, labels))


@pytest.mark.parametrize(("call", "match"), [
    (lambda x, y: L.dice_loss(x, y[:, :, :3]), r"truth shape \(2, 1, 3, 5\) does not fit "
                                                r"logits \(2, 3, 6, 5\)"),
    (lambda x, y: L.dice_loss(x, y + 3), r"labels must lie in \[0, 3\)"),
    (lambda x, y: L.dice_loss(x[:, :1], y.clamp(max=1)), "softmax over a single channel"),
    (lambda x, y: L.dice_loss(x, y, reduction="avg"), "reduction must be"),
    (lambda x, y: L.dice_loss(x, y, activation="relu"), "activation must be"),
    (lambda x, y: L.dice_loss(x, y, weight=[1.0, 2.0]), "weight needs 3 non-negative"),
    (lambda x, y: L.dice_ce_loss(x, y, lambda_ce=-1.0), "must be >= 0"),
    (lambda x, y: L.focal_loss(x, y, activation="none"), "activation must be"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    logits, labels = make_case("2d", "random")
    with pytest.raises(ValueError, match=match):
        call(logits, labels)


# ------------------------------------------------------------------- label smoothing
@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("weight", [None, [0.2, 1.0, 3.0]])
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_matches_torch_with_class_indices(dims, weight, eps):
    logits, labels = make_case(dims, "random")
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    expected = F.cross_entropy(logits, labels[:, 0], weight=w, label_smoothing=eps)
    ours = L.cross_entropy_loss(logits, labels, weight=weight, label_smoothing=eps)
    torch.testing.assert_close(ours, expected)


def test_label_smoothing_on_a_hand_worked_example():
    # One voxel, 2 classes, p = (0.8, 0.2), label 0, eps = 0.2: target (0.9, 0.1),
    # loss = -(0.9 log 0.8 + 0.1 log 0.2) = 0.2008 + 0.1609 = 0.3618
    logits = torch.tensor([0.8, 0.2], dtype=torch.float64).log().view(1, 2, 1, 1)
    label = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    expected = -(0.9 * math.log(0.8) + 0.1 * math.log(0.2))
    assert L.cross_entropy_loss(logits, label, label_smoothing=0.2).item() == \
        pytest.approx(expected)


def test_sigmoid_label_smoothing_moves_binary_targets_towards_one_half():
    logits, labels = make_case("2d", "random", channels=1)
    labels = labels.clamp(max=1)
    soft = labels.double() * 0.8 + 0.1  # eps = 0.2: 1 -> 0.9, 0 -> 0.1
    expected = F.binary_cross_entropy_with_logits(logits, soft)
    ours = L.cross_entropy_loss(logits, labels, activation="sigmoid", label_smoothing=0.2)
    torch.testing.assert_close(ours, expected)


def test_label_smoothing_zero_changes_nothing_and_dice_ce_smooths_only_ce():
    logits, labels = make_case("3d", "random")
    torch.testing.assert_close(L.cross_entropy_loss(logits, labels, label_smoothing=0.0),
                               L.cross_entropy_loss(logits, labels))
    smoothed = L.DiceCELoss(label_smoothing=0.1)(logits, labels)
    expected = L.dice_loss(logits, labels) + L.cross_entropy_loss(logits, labels,
                                                                   label_smoothing=0.1)
    torch.testing.assert_close(smoothed, expected)
    assert "label_smoothing" not in repr(L.DiceCELoss())  # unchanged default repr
    torch.testing.assert_close(L.CrossEntropyLoss(label_smoothing=0.1)(logits, labels),
                               L.cross_entropy_loss(logits, labels, label_smoothing=0.1))


def test_label_smoothing_outside_zero_one_raises():
    logits, labels = make_case("2d", "random")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        L.cross_entropy_loss(logits, labels, label_smoothing=1.0)
