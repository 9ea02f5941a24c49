"""Attribution maps: Grad-CAM, occlusion sensitivity and LIME on tiny models."""

from __future__ import annotations

from collections import OrderedDict

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from medseg_helpers import explain, viz
from medseg_helpers.networks import UNet

matplotlib.use("Agg")


def _square_image(size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy image ``(1, 1, size, size)`` with a bright square; its mask ``(1, size, size)``."""
    g = torch.Generator().manual_seed(seed)
    image = 0.1 * torch.randn(1, 1, size, size, generator=g)
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[0, size // 4 : size // 2, size // 4 : size // 2] = True
    image[:, 0][mask] += 1.5
    return image, mask


def _linear_net(weight: list[list[float]], bias: list[float]) -> nn.Sequential:
    """features: 1x1 conv (identity on 2 channels); head: 1x1 conv with the given weights."""
    features = nn.Conv2d(2, 2, 1)
    head = nn.Conv2d(2, len(weight), 1)
    with torch.no_grad():
        features.weight.copy_(torch.eye(2)[:, :, None, None])
        features.bias.zero_()
        head.weight.copy_(torch.tensor(weight)[:, :, None, None])
        head.bias.copy_(torch.tensor(bias))
    return nn.Sequential(OrderedDict(features=features, head=head))


# ------------------------------------------------------------------------------- Grad-CAM
def test_grad_cam_of_linear_head_is_the_relu_of_the_class_logit_by_hand():
    # score = sum over R of (w_c . A + b_c), so dscore/dA_k = w_ck on R and 0 elsewhere;
    # alpha_k = w_ck |R| / N and cam = |R|/N * ReLU(w_c . A) = ReLU(logit_c - b_c) up to scale.
    model = _linear_net([[1.0, -2.0], [0.5, 1.0]], [0.3, -0.1])
    torch.manual_seed(0)
    x = torch.randn(2, 2, 6, 5)
    region = torch.zeros(2, 6, 5, dtype=torch.bool)
    region[:, 1:4, 2:5] = True
    cam = explain.grad_cam(model, x, target_class=1, region=region, layer="features")
    expected = torch.relu(0.5 * x[:, 0] + 1.0 * x[:, 1])
    expected = expected / expected.flatten(1).amax(1)[:, None, None]
    assert cam.shape == (2, 6, 5)
    assert torch.allclose(cam, expected, atol=1e-5)


def test_grad_cam_matches_pooled_gradients_and_their_relu_weighted_sum_by_hand():
    # features: 3x3 conv + ReLU gives maps A_k; head: 3x3 conv (padding 1). The target is
    # y = sum_{q in R} logit_c(q) with logit_c(q) = b_c + sum_{k,i,j} W[c,k,i,j] A_k(q+(i,j)-1),
    # so dy/dA_k(p) = sum_{q in R} W[c, k, p-q+1]; alpha_k is its mean over p, and the map is
    # ReLU(sum_k alpha_k A_k) divided by its maximum (same resolution: no upsampling).
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU())
    head = nn.Conv2d(3, 2, 3, padding=1)
    model = nn.Sequential(OrderedDict(features=features, head=head))
    x = torch.randn(1, 1, 5, 6)
    region = torch.zeros(1, 5, 6, dtype=torch.bool)
    region[0, 1:4, 2:5] = True
    cam = explain.grad_cam(model, x, target_class=1, region=region, layer="features")

    w_feat = features[0].weight.detach().double().numpy()  # (3, 1, 3, 3)
    b_feat = features[0].bias.detach().double().numpy()
    w_head = head.weight.detach().double().numpy()[1]  # (3, 3, 3): class 1
    padded = np.pad(x[0, 0].double().numpy(), 1)
    activation = np.stack([
        np.maximum(b_feat[k] + sum(w_feat[k, 0, i, j] * padded[i:i + 5, j:j + 6]
                                   for i in range(3) for j in range(3)), 0.0)
        for k in range(3)])  # (3, 5, 6)
    grads = np.zeros_like(activation)
    for qy, qx in np.argwhere(region[0].numpy()):
        for i in range(3):
            for j in range(3):
                py, px = qy + i - 1, qx + j - 1
                if 0 <= py < 5 and 0 <= px < 6:
                    grads[:, py, px] += w_head[:, i, j]
    alpha = grads.mean(axis=(1, 2))  # (3,) channel weights
    weighted = (alpha[:, None, None] * activation).sum(0)
    assert (weighted < 0).any() and (weighted > 0).any()  # the ReLU matters here
    expected = np.maximum(weighted, 0.0) / weighted.max()
    np.testing.assert_allclose(cam[0].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(("dims", "shape"), [(2, (3, 1, 20, 24)), (3, (1, 1, 8, 12, 16))])
def test_grad_cam_has_the_input_shape_and_range(dims, shape):
    torch.manual_seed(0)
    model = UNet(dims, 1, 3, base_channels=4, depth=2).eval()
    x = torch.randn(*shape)
    for layer in (None, "ups.1.block", "downs.0"):
        cam = explain.grad_cam(model, x, target_class=1, region=torch.ones(shape[0], *shape[2:]),
                               layer=layer)
        assert cam.shape == (shape[0], *shape[2:]) and cam.dtype == torch.float32
        assert cam.min() >= 0 and cam.max() <= 1 + 1e-6


def test_grad_cam_removes_its_hook_and_restores_modes():
    model = UNet(2, 1, 3, base_channels=4, depth=2)  # left in training mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explain.grad_cam(model, torch.randn(2, 1, 16, 16), target_class=0)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(m.training for m in model.modules())
    after = model.state_dict()  # eval mode inside: batch-norm statistics untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_grad_cam_hook_is_removed_when_the_forward_fails():
    model = UNet(2, 1, 3, base_channels=4, depth=2).eval()
    with pytest.raises(ValueError, match="out of range"):
        explain.grad_cam(model, torch.randn(1, 1, 16, 16), target_class=3)
    assert all(not m._forward_hooks for m in model.modules())


def test_grad_cam_follows_the_target_class():
    # class 1 reads input channel 0, class 2 reads channel 1: each map shows its own channel
    model = _linear_net([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.0, 0.0, 0.0])
    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, :4], x[0, 1, 4:] = 1.0, 1.0  # channel 0 on top, channel 1 at the bottom
    region = torch.ones(1, 8, 8, dtype=torch.bool)
    top, bottom = (explain.grad_cam(model, x, c, region=region, layer="features")[0]
                   for c in (1, 2))
    assert torch.allclose(top, x[0, 0]) and torch.allclose(bottom, x[0, 1])


def test_grad_cam_of_a_unet_differs_between_classes():
    torch.manual_seed(0)
    model = UNet(2, 1, 3, base_channels=4, depth=2).eval()
    image, mask = _square_image()
    maps = [explain.grad_cam(model, image, c, region=mask, layer="ups.1.block") for c in (1, 2)]
    assert explain.rank_correlation(maps[0], maps[1]) < 0.9


def test_grad_cam_changes_when_the_model_is_randomised():
    # Adebayo et al. (2018): a map that survives weight randomisation explains the image only.
    torch.manual_seed(0)
    model = UNet(2, 1, 3, base_channels=4, depth=2).eval()
    image, mask = _square_image()
    for layer in (None, "ups.1.block"):
        first = explain.grad_cam(model, image, 1, region=mask, layer=layer)
        other = explain.grad_cam(explain.reinitialised_copy(model, seed=1), image, 1,
                                 region=mask, layer=layer)
        assert abs(explain.rank_correlation(first, other)) < 0.8


def test_reinitialised_copy_leaves_the_original_alone():
    model = UNet(2, 1, 3, base_channels=4, depth=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone = explain.reinitialised_copy(model, seed=3)
    again = explain.reinitialised_copy(model, seed=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(clone.stem[0].weight, model.stem[0].weight)
    assert torch.equal(clone.stem[0].weight, again.stem[0].weight)  # seeded


def test_grad_cam_of_an_empty_region_is_zero():
    model = UNet(2, 1, 3, base_channels=4, depth=2).eval()
    cam = explain.grad_cam(model, torch.randn(1, 1, 16, 16), 2,
                           region=torch.zeros(1, 16, 16, dtype=torch.bool))
    assert torch.count_nonzero(cam) == 0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"layer": "decoder.9"}, "no layer 'decoder.9'"),
    ({"target_class": -1}, "out of range"),
    ({"region": torch.ones(1, 8, 8)}, "does not match"),
])
def test_grad_cam_rejects_bad_arguments(kwargs, match):
    model = UNet(2, 1, 3, base_channels=4, depth=2)
    arguments = {"target_class": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        explain.grad_cam(model, torch.randn(1, 1, 16, 16), **arguments)


def test_grad_cam_needs_a_layer_name_for_other_models_and_the_right_rank():
    with pytest.raises(ValueError, match="no default Grad-CAM layer"):
        explain.grad_cam(nn.Conv2d(1, 2, 1), torch.randn(1, 1, 4, 4), 1)
    with pytest.raises(ValueError, match=r"expected an image batch \(B, C, H, W\)"):
        explain.grad_cam(UNet(2, 1, 2, base_channels=4, depth=1), torch.randn(1, 4, 4), 1)


def test_default_layer_is_the_unet_bottleneck():
    model = UNet(2, 1, 2, base_channels=4, depth=3)
    assert explain.default_target_layer(model) == "downs.2"
    assert explain.resolve_layer(model) is model.downs[2]


# ------------------------------------------------------------------------------ occlusion
class _SigmoidNet(nn.Module):
    """Two classes with logits (0, x): p(class 1) = sigmoid(x) voxel by voxel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)


def test_occlusion_score_drop_by_hand():
    # One voxel occluded at a time (mask 1, no overlap), replaced by 0 (p = 0.5): the score
    # (mean p1 over R) drops by (sigmoid(x_j) - 0.5) / |R| for j in R, by 0 outside R.
    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 7)
    region = torch.zeros(6, 7, dtype=torch.bool)
    region[1:5, 2:6] = True
    drop = explain.occlusion_sensitivity(_SigmoidNet(), x, 1, region=region, mask_size=1,
                                         overlap=0.0, mode=0.0)
    expected = torch.where(region, (torch.sigmoid(x[0, 0]) - 0.5) / region.sum(), 0.0)
    assert drop.shape == (6, 7)
    assert torch.allclose(drop, expected, atol=1e-6)


def test_region_score_wrapper_matches_a_hand_mean():
    probs = torch.tensor([[[[0.2, 0.6], [0.9, 0.1]]]])  # (1, 1, 2, 2), class 0 only
    region = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert explain.region_score(probs, 0, region[None, None]).item() == pytest.approx(0.4)
    wrapped = explain.RegionScore(_SigmoidNet(), 1, region)
    out = wrapped(torch.zeros(3, 1, 2, 2))
    assert out.shape == (3, 1) and torch.allclose(out, torch.full((3, 1), 0.5))


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (1, 1, 8, 8, 8)])
def test_occlusion_map_has_the_input_shape(shape):
    model = UNet(len(shape) - 2, 1, 3, base_channels=4, depth=1)
    drop = explain.occlusion_sensitivity(model, torch.randn(*shape), 0, mask_size=4)
    assert drop.shape == shape[2:] and torch.isfinite(drop).all()
    assert model.training  # mode restored


def test_occlusion_takes_one_image():
    with pytest.raises(ValueError, match="one image"):
        explain.occlusion_sensitivity(_SigmoidNet(), torch.zeros(2, 1, 8, 8), 1)


# ----------------------------------------------------------------------------------- LIME
class _LinearProbNet(nn.Module):
    """p(class 1) = 0.25 + 0.5 x for x in [0, 1]: the region score is linear in the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), torch.logit(0.25 + 0.5 * x)], dim=1)


def _quadrants(size: int = 16) -> torch.Tensor:
    image = torch.zeros(1, 1, size, size)
    h = size // 2
    image[0, 0, :h, :h], image[0, 0, :h, h:] = 0.2, 0.9
    image[0, 0, h:, :h], image[0, 0, h:, h:] = 0.5, 0.7
    return image


def test_lime_recovers_the_contributions_of_a_linear_score():
    # With fill 0, score = 0.25 + 0.5/N * sum_j x_j keep(seg(j)): the exact weight of
    # superpixel s is 0.5/N * (sum of x over s), which the ridge fit recovers (alpha ~ 0).
    image = _quadrants()
    region = torch.ones(16, 16, dtype=torch.bool)
    result = explain.lime_superpixels(_LinearProbNet(), image, 1, region=region, n_segments=4,
                                      n_samples=64, fill=0.0, alpha=1e-8, seed=0)
    n = result.segments.max() + 1
    expected = np.array([0.5 / 256 * image[0, 0].numpy()[result.segments == s].sum()
                         for s in range(n)])
    assert result.weights.shape == (n,) and result.map.shape == (16, 16)
    np.testing.assert_allclose(result.weights, expected, atol=1e-5)
    assert result.r2 == pytest.approx(1.0, abs=1e-6)
    assert result.base_score == pytest.approx(0.25 + 0.5 * image.mean().item(), abs=1e-6)
    np.testing.assert_allclose(result.map, result.weights[result.segments], rtol=1e-6)


def test_lime_is_reproducible_per_seed_and_varies_across_seeds():
    torch.manual_seed(0)
    model = UNet(2, 1, 3, base_channels=4, depth=2).eval()
    image, mask = _square_image()
    runs = [explain.lime_superpixels(model, image, 1, region=mask, n_segments=12, n_samples=24,
                                     seed=s) for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0].segments, runs[2].segments)  # SLIC is deterministic
    np.testing.assert_array_equal(runs[0].weights, runs[1].weights)
    assert not np.allclose(runs[0].weights, runs[2].weights)


def test_lime_recovers_the_contributions_of_a_linear_score_in_3d():
    # As in 2D: with fill 0 the exact weight of superpixel s is 0.5/N * (sum of x over s).
    image = torch.zeros(1, 1, 8, 8, 8)
    for octant, value in enumerate(np.linspace(0.1, 0.8, 8)):
        z, y, x = (slice(4 * bit, 4 * bit + 4) for bit in np.unravel_index(octant, (2, 2, 2)))
        image[0, 0, z, y, x] = float(value)
    result = explain.lime_superpixels(_LinearProbNet(), image, 1,
                                      region=torch.ones(8, 8, 8, dtype=torch.bool),
                                      n_segments=8, n_samples=64, fill=0.0, alpha=1e-8, seed=0)
    volume = image[0, 0].numpy()
    n = result.segments.max() + 1
    assert result.segments.shape == (8, 8, 8)
    assert all(np.ptp(volume[result.segments == s]) == 0 for s in range(n))  # within octants
    expected = np.array([0.5 / volume.size * volume[result.segments == s].sum()
                         for s in range(n)])
    np.testing.assert_allclose(result.weights, expected, atol=1e-5)
    np.testing.assert_allclose(result.map, expected[result.segments].astype(np.float32),
                               atol=1e-5)
    assert result.r2 == pytest.approx(1.0, abs=1e-6)
    assert result.base_score == pytest.approx(0.25 + 0.5 * volume.mean(), abs=1e-6)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_samples": 1}, "n_samples >= 2"),
    ({"keep_prob": 1.0}, "keep_prob"),
])
def test_lime_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        explain.lime_superpixels(_LinearProbNet(), _quadrants(), 1, **kwargs)


# ------------------------------------------------------------------------------- helpers
def test_rank_correlation_properties():
    a = np.arange(12.0).reshape(3, 4)
    assert explain.rank_correlation(a, a**3) == pytest.approx(1.0)
    assert explain.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert np.isnan(explain.rank_correlation(a, np.zeros_like(a)))
    with pytest.raises(ValueError, match="differ in shape"):
        explain.rank_correlation(a, a.T)


def test_show_heatmap_draws_image_heat_and_outline():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    label = np.zeros((8, 8), dtype=int)
    label[2:5, 2:5] = 1
    shown = viz.show_heatmap(ax, np.random.default_rng(0).random((8, 8)),
                                 np.linspace(0, 1, 64).reshape(8, 8), label, title="t")
    assert shown.get_clim() == (0.0, 1.0) and ax.get_title() == "t"
    assert len(ax.images) == 2
    plt.close(fig)


def test_occlusion_inside_a_roi_matches_the_full_map_there_and_is_nan_outside():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 7)
    region = torch.ones(6, 7, dtype=torch.bool)
    kwargs = {"region": region, "mask_size": 1, "overlap": 0.0, "mode": 0.0}
    full = explain.occlusion_sensitivity(_SigmoidNet(), x, 1, **kwargs)
    roi = (slice(1, 4), slice(2, 7))
    part = explain.occlusion_sensitivity(_SigmoidNet(), x, 1, roi=roi, **kwargs)
    assert torch.allclose(part[roi], full[roi], atol=1e-6)
    outside = torch.ones(6, 7, dtype=torch.bool)
    outside[roi] = False
    assert part[outside].isnan().all()
    with pytest.raises(ValueError, match="one slice per spatial axis"):
        explain.occlusion_sensitivity(_SigmoidNet(), x, 1, roi=(slice(0, 2),))
