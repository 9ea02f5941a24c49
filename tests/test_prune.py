"""Pruning: sparsity reached, masks folded in, channels really removed, fine-tuning."""

from __future__ import annotations

import pytest
import torch
from conftest import smoke_course_model
from torch import nn

from medseg_helpers.deploy.prune import (
    count_effective_parameters,
    fine_tune,
    is_pruned,
    make_permanent,
    prunable_weights,
    prune_channels,
    prune_unstructured,
    remove_pruned_channels,
    weight_sparsity,
)
from medseg_helpers.networks.unet import UNet
from medseg_helpers.networks.zoo import count_parameters


def _unet(norm: str = "batch", seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(2, 1, 3, base_channels=8, depth=2, norm=norm)
    if norm == "batch":  # non-trivial running statistics, as after training
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(4, 1, 32, 32))
    return model.eval()


def test_effective_parameters_count_a_pruned_weight_once_and_frozen_ones_too() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, kernel_size=3)  # 2 * 1 * 3 * 3 = 18 weights + 2 biases
    conv.bias.requires_grad_(False)  # frozen: counted here, not by networks.count_parameters
    assert count_effective_parameters(conv) == 20
    assert count_parameters(conv) == 18 and count_parameters(conv, trainable_only=False) == 20
    torch.nn.utils.prune.l1_unstructured(conv, "weight", amount=9)  # weight_orig + mask
    assert count_effective_parameters(conv) == 20  # the masked weight, counted once
    assert count_effective_parameters(conv, nonzero=True) == 9 + 2  # 9 weights left, biases


def test_unstructured_reaches_the_global_sparsity_requested() -> None:
    model = _unet()
    total = sum(m.weight.numel() for m, _ in prunable_weights(model))
    prune_unstructured(model, 0.6)
    # One global threshold: exactly round(0.6 * total) conv weights are zero.
    assert weight_sparsity(model) == pytest.approx(round(0.6 * total) / total)
    assert is_pruned(model)


def test_unstructured_pruning_removes_the_smallest_weights_globally() -> None:
    model = _unet()
    before = torch.cat([m.weight.detach().abs().flatten() for m, _ in prunable_weights(model)])
    prune_unstructured(model, 0.5)
    after = torch.cat([m.weight.detach().abs().flatten() for m, _ in prunable_weights(model)])
    kept, dropped = before[after != 0], before[after == 0]
    assert dropped.max() <= kept.min()


def test_unstructured_pruning_keeps_every_shape_and_parameter() -> None:
    model = _unet()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    params = count_effective_parameters(model)
    make_permanent(prune_unstructured(model, 0.7))
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert count_effective_parameters(model) == params  # dense tensors: same file size, same FLOPs
    assert count_effective_parameters(model, nonzero=True) < 0.5 * params


def test_make_permanent_leaves_no_reparametrisation_in_the_state_dict() -> None:
    model = prune_unstructured(_unet(), 0.5)
    assert any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    make_permanent(model)
    keys = list(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys) and not is_pruned(model)
    fresh = UNet(2, 1, 3, base_channels=8, depth=2)
    fresh.load_state_dict(model.state_dict(), strict=True)  # loads into an unpruned model
    assert weight_sparsity(fresh) == pytest.approx(0.5, abs=1e-3)


def test_channel_pruning_zeroes_whole_filters_in_every_block() -> None:
    model = prune_channels(_unet(), 0.5)
    stem_conv = model.stem[0]
    filters = stem_conv.weight.detach().flatten(1)
    # 8 internal channels at amount 0.5: 4 filters entirely zero, 4 untouched.
    assert int((filters.abs().sum(1) == 0).sum()) == 4
    zero = filters.abs().sum(1) == 0
    assert torch.all(model.stem[1].weight[zero] == 0) and torch.all(model.stem[1].bias[zero] == 0)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("criterion", ["l1", "gamma"])
def test_removing_pruned_channels_shrinks_the_model_and_keeps_its_logits(norm, criterion):
    if criterion == "gamma" and norm == "none":
        pytest.skip("no norm: gamma falls back to the filter norm (covered by l1)")
    model = prune_channels(_unet(norm), 0.5, criterion=criterion)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        masked = model(x)
    thin = remove_pruned_channels(model)
    with torch.no_grad():
        out = thin(x)
    torch.testing.assert_close(out, masked, atol=1e-5, rtol=1e-4)
    assert count_effective_parameters(thin) < 0.7 * count_effective_parameters(model)
    assert thin.stem[0].out_channels == 4 and thin.stem[3].in_channels == 4
    assert is_pruned(model) and not is_pruned(thin)  # the original is left untouched


def test_a_channel_pruned_model_is_faster_only_once_channels_are_removed() -> None:
    model = prune_channels(_unet(), 0.75)
    thin = remove_pruned_channels(model)
    # Work is proportional to the weights the convolutions really multiply.
    assert sum(m.weight.numel() for m, _ in prunable_weights(thin)) < 0.6 * sum(
        m.weight.numel() for m, _ in prunable_weights(model))


def test_group_norm_cannot_be_channel_pruned() -> None:
    model = UNet(2, 1, 3, base_channels=8, depth=1, norm="group", num_groups=4)
    with pytest.raises(ValueError, match="GroupNorm"):
        prune_channels(model, 0.5)


def test_models_without_conv_blocks_are_rejected() -> None:
    with pytest.raises(ValueError, match="ConvBlocks"):
        prune_channels(nn.Sequential(nn.Conv2d(1, 2, 3)), 0.5)
    with pytest.raises(ValueError, match="no convolution"):
        prune_unstructured(nn.Sequential(nn.Linear(2, 2)), 0.5)


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5])
def test_amount_must_be_a_fraction(amount) -> None:
    with pytest.raises(ValueError, match=r"amount must be a fraction in \[0, 1\)"):
        prune_unstructured(_unet(), amount)
    with pytest.raises(ValueError, match=r"amount must be a fraction"):
        prune_channels(_unet(), amount)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with smoke_course_model(tmp_path_factory.mktemp("prune_run")) as (model, _):
        yield model


def _loss_on(model: nn.Module, trained, batch) -> float:
    from medseg_helpers.training.job import build_loss

    loss = build_loss(trained.config.loss, **trained.config.loss_kwargs)
    with torch.no_grad():
        return float(loss(model.eval()(batch[0]), batch[1]))


def test_fine_tuning_keeps_the_sparsity_and_lowers_the_loss(trained) -> None:
    import copy

    pid = trained.split.train[0]
    image, label = trained.preprocessed(pid)
    batch = (image.transpose(0, 1).float(), label[:, None])  # (D, C, H, W), (D, 1, H, W)
    model = prune_unstructured(copy.deepcopy(trained.model), 0.8)
    sparsity, pruned_loss = weight_sparsity(model), _loss_on(model, trained, batch)
    metrics = fine_tune(model, trained, steps=12, lr=1e-3, validate=False)
    assert metrics["global_step"] == 12
    assert weight_sparsity(model) == pytest.approx(sparsity)  # masks held during training
    assert _loss_on(model, trained, batch) < pruned_loss
    assert not model.training


def test_fine_tuning_needs_a_step(trained) -> None:
    with pytest.raises(ValueError, match="steps must be >= 1"):
        fine_tune(trained.model, trained, steps=0)
