"""Uncertainty: MC dropout, test-time augmentation, entropy, mutual information, error AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medseg_helpers.explain import uncertainty as unc
from medseg_helpers.networks import UNet


# ------------------------------------------------------------------------- entropy and MI
@pytest.mark.parametrize("k", [2, 3, 5])
def test_entropy_of_a_uniform_prediction_is_log_k(k):
    probs = torch.full((1, k, 3, 3), 1.0 / k)
    assert torch.allclose(unc.predictive_entropy(probs), torch.full((1, 3, 3), math.log(k)))


def test_entropy_by_hand():
    # -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.25 * 1.386294 + 0.75 * 0.287682 = 0.562335
    probs = torch.tensor([[0.25, 1.0], [0.75, 0.0]])[None]  # (1, K=2, 2): second is one-hot
    assert torch.allclose(unc.predictive_entropy(probs), torch.tensor([[0.562335, 0.0]]),
                          atol=1e-6)


def test_identical_samples_have_no_mutual_information():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(1, 2, 3, 4, 4), dim=2)
    maps = unc.summarise_samples(probs.expand(5, -1, -1, -1, -1))
    assert torch.allclose(maps.mutual_information, torch.zeros(2, 4, 4), atol=1e-6)
    assert torch.allclose(maps.entropy, maps.expected_entropy, atol=1e-6)
    assert torch.allclose(maps.mean_probs, probs[0], atol=1e-6)


def test_two_confident_samples_that_disagree_carry_log2_of_mutual_information():
    # p = (1, 0) and (0, 1): mean (0.5, 0.5), H = ln 2; each sample has H = 0, so MI = ln 2.
    samples = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 1, 2, 1)
    maps = unc.summarise_samples(samples)
    assert maps.entropy.item() == pytest.approx(math.log(2), abs=1e-6)
    assert maps.expected_entropy.item() == pytest.approx(0.0, abs=1e-6)
    assert maps.mutual_information.item() == pytest.approx(math.log(2), abs=1e-6)


def test_summaries_are_bounded_and_pred_is_the_argmax():
    torch.manual_seed(1)
    samples = torch.softmax(torch.randn(6, 2, 3, 5, 5), dim=2)
    maps = unc.summarise_samples(samples)
    assert (maps.mutual_information >= 0).all()
    assert (maps.entropy <= math.log(3) + 1e-6).all()
    assert torch.equal(maps.pred, samples.mean(0).argmax(1))
    with pytest.raises(ValueError, match=r"\(T, B, K, \*S\)"):
        unc.summarise_samples(samples[0, 0])


# ------------------------------------------------------------------------------ MC dropout
def test_mc_dropout_needs_dropout_layers():
    with pytest.raises(ValueError, match="no dropout layer"):
        with unc.mc_dropout(UNet(2, 1, 2, base_channels=4, depth=1)):
            pass


def test_mc_dropout_switches_on_only_the_dropout_layers_and_restores_modes():
    model = UNet(2, 1, 3, base_channels=4, depth=1, dropout=0.3).train()
    with unc.mc_dropout(model):
        for module in model.modules():
            assert module.training == isinstance(module, nn.Dropout)
    assert all(m.training for m in model.modules())


def test_mc_dropout_samples_differ_keep_batchnorm_and_are_seeded():
    torch.manual_seed(0)
    model = UNet(2, 1, 3, base_channels=4, depth=1, dropout=0.3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 8, 8)
    state = torch.random.get_rng_state()
    samples = unc.mc_dropout_samples(model, x, num_samples=4, batch_size=1, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert samples.shape == (4, 2, 3, 8, 8)
    assert torch.allclose(samples.sum(2), torch.ones(4, 2, 8, 8), atol=1e-5)
    assert not torch.allclose(samples[0], samples[1])  # dropout samples
    again = unc.mc_dropout_samples(model, x, num_samples=4, batch_size=1, seed=7)
    assert torch.equal(samples, again)  # same seed and batch size: same dropout masks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())


# ------------------------------------------------------------------------------------ TTA
def test_flip_combinations():
    assert unc.flip_combinations(2) == [(), (2,), (3,), (2, 3)]
    assert len(unc.flip_combinations(3)) == 8


def test_tta_inverts_each_flip():
    # A 1x1 convolution commutes with flips: every flipped-back sample equals the plain one
    # (without the inverse flip they would be mirror images of it).
    torch.manual_seed(0)
    model = nn.Conv2d(1, 3, 1)
    x = torch.randn(2, 1, 5, 6)
    samples = unc.tta_samples(model, x)
    assert samples.shape == (4, 2, 3, 5, 6)
    plain = torch.softmax(model(x), 1).detach()
    for sample in samples:
        assert torch.allclose(sample, plain, atol=1e-6)


def test_tta_samples_of_a_position_dependent_model_differ_but_start_with_the_original():
    torch.manual_seed(0)
    model = UNet(3, 1, 2, base_channels=4, depth=1, norm="none").eval()
    x = torch.randn(1, 1, 4, 6, 6)
    samples = unc.tta_samples(model, x, flips=[(), (4,)])
    assert samples.shape == (2, 1, 2, 4, 6, 6)
    assert torch.allclose(samples[0], torch.softmax(model(x), 1).detach(), atol=1e-6)
    assert not torch.allclose(samples[0], samples[1])
    with pytest.raises(ValueError, match="not spatial dims"):
        unc.tta_samples(model, x, flips=[(1,)])


# --------------------------------------------------------------------- errors vs uncertainty
def test_error_detection_auc_by_hand_and_against_sklearn():
    label = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 2, 0])  # errors at voxels 3 and 4
    assert unc.error_detection_auc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), pred, label) == 1.0
    assert unc.error_detection_auc(np.array([0.9, 0.8, 0.7, 0.1, 0.2]), pred, label) == 0.0
    rng = np.random.default_rng(0)
    u = rng.random(5)
    assert unc.error_detection_auc(u, pred, label) == pytest.approx(
        roc_auc_score(pred != label, u))
    # the mask keeps voxels 2..4: one correct (0.3) below both errors -> 1.0
    mask = np.array([False, False, True, True, True])
    assert unc.error_detection_auc(np.array([5, 5, 0.3, 0.8, 0.9]), pred, label, mask) == 1.0


def test_error_detection_auc_is_nan_without_errors_and_checks_shapes():
    assert np.isnan(unc.error_detection_auc(np.ones(3), np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="shapes differ"):
        unc.error_detection_auc(np.ones(3), np.zeros(4), np.zeros(4))


def test_uncertainty_error_dice_by_hand():
    label = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 0])  # errors at 1 and 3
    u = np.array([0.9, 0.8, 0.1, 0.7])  # flagged (> 0.5) at 0, 1, 3
    assert unc.uncertainty_error_dice(u, pred, label, 0.5) == pytest.approx(2 * 2 / (3 + 2))
    assert unc.uncertainty_error_dice(np.zeros(4), label, label, 0.5) == 1.0
