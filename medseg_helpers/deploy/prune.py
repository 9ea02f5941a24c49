"""Pruning a segmentation network with ``torch.nn.utils.prune``, then fine-tuning it.

Two kinds, with different pay-offs (be clear which one you need):

* **Unstructured** (`prune_unstructured`): global magnitude pruning (Han et al. 2015,
  "Learning both Weights and Connections for Efficient Neural Networks"): the ``amount``
  fraction of conv weights with the smallest ``|w|``, counted over the whole network, is
  set to zero. The tensors keep their shape, so a dense convolution kernel does exactly the
  same work: **no speed-up and no smaller file** (zeros cost four bytes like any float; only
  a compressed archive shrinks). It pays off only with sparse kernels or sparse-aware
  hardware, and as a study of how redundant the weights are.
* **Structured** (`prune_channels`): whole feature channels inside each `ConvBlock` of the
  course `UNet` are zeroed (``prune.ln_structured``: Li et al. 2017, "Pruning Filters for
  Efficient ConvNets", L1 norm of each filter; or the batch-norm scale ``|gamma|``: Liu et
  al. 2017, "Learning Efficient Convolutional Networks through Network Slimming"). Zeroed
  channels still cost time until they are **removed** (`remove_pruned_channels`), which
  builds thinner convolutions; only then do the file and the latency shrink.

``torch.nn.utils.prune`` works by *reparametrisation*: ``weight`` becomes ``weight_orig *
weight_mask`` recomputed before every forward pass, so fine-tuning (`fine_tune`) keeps the
pruned entries at zero while the others adapt. `make_permanent` folds the masks in (the
state dict then holds plain ``weight`` tensors again, loadable into an unpruned model).

Only the first convolution of each `ConvBlock` (its internal channels) is pruned by
`prune_channels`: those channels feed nothing but the block's second convolution, so they
can be cut without touching skip connections, pooling or the decoder's concatenations.
Their norm's ``weight`` and ``bias`` get the same mask, so a pruned channel outputs exactly
zero (in training and in eval mode) and removing it changes no output.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from medseg_helpers.networks.unet import ConvBlock

if TYPE_CHECKING:
    from medseg_helpers.course.model import TrainedModel

logger = logging.getLogger(__name__)

__all__ = ["count_effective_parameters", "fine_tune", "is_pruned", "make_permanent",
           "prunable_weights", "prune_channels", "prune_unstructured", "remove_pruned_channels",
           "weight_sparsity"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
               nn.InstanceNorm2d, nn.InstanceNorm3d)
Criterion = Literal["l1", "gamma"]


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount}")


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every convolution (2D/3D, transposed too) of ``model``."""
    return [(module, "weight") for module in model.modules() if isinstance(module, _CONV_TYPES)]


def count_effective_parameters(model: nn.Module, nonzero: bool = False) -> int:
    """Elements of the parameter tensors the forward pass uses, frozen ones included.

    For a module under pruning that is the masked ``weight`` (counted once), not
    ``weight_orig`` plus ``weight_mask``; so the count is the same before pruning, during
    it and after `make_permanent`. ``nonzero=True`` counts only the elements that are not
    0, which is what unstructured pruning reduces (dense tensors keep their size).
    `medseg_helpers.networks.count_parameters` instead counts the trainable parameters of a
    model, as a model summary does.

    Args:
        model: any module, pruned or not.
        nonzero: count only elements that are not exactly 0.

    Returns:
        the number of elements (an int >= 0).
    """
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            tensor = getattr(module, name[:-5]) if name.endswith("_orig") else param
            total += int(torch.count_nonzero(tensor)) if nonzero else tensor.numel()
    return total


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of convolution weights that are exactly zero, over the whole network, in [0, 1].

    Works during pruning (reads the masked ``weight``) and after `make_permanent`.
    """
    pairs = prunable_weights(model)
    if not pairs:
        raise ValueError("model has no convolution weights")
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in pairs)
    return zeros / sum(getattr(m, n).numel() for m, n in pairs)


def prune_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """Zero the ``amount`` fraction of smallest-magnitude conv weights, globally (in place).

    ``prune.global_unstructured`` with ``L1Unstructured``: one threshold for the whole
    network, so layers with many small weights lose more than others. The tensors keep their
    shape: the model is **not** faster or smaller as a dense file (see the module docstring).

    Args:
        model: network with convolutions; pruned in place (reparametrised: ``weight_orig``
            and ``weight_mask`` until `make_permanent`). Calling it again prunes further.
        amount: fraction of all conv weights to be zero, in [0, 1).

    Returns:
        ``model``.

    Raises:
        ValueError: ``amount`` outside [0, 1) or no convolution in ``model``.
    """
    _check_amount(amount)
    pairs = prunable_weights(model)
    if not pairs:
        raise ValueError("model has no convolution weights to prune")
    prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=amount)
    logger.info("unstructured pruning: %.1f %% of conv weights are zero",
                100 * weight_sparsity(model))
    return model


def _conv_blocks(model: nn.Module) -> Iterator[tuple[nn.Module, nn.Module, nn.Module]]:
    """``(first conv, its norm, second conv)`` of every `ConvBlock` in ``model``."""
    for block in model.modules():
        if isinstance(block, ConvBlock):
            yield block[0], block[1], block[3]


def prune_channels(model: nn.Module, amount: float, criterion: Criterion = "l1",
                   n: int | float = 1) -> nn.Module:
    """Zero the ``amount`` fraction of internal channels of every `ConvBlock` (in place).

    In each block ``conv1 → norm1 → ReLU → conv2 → norm2 → ReLU``, channels of ``conv1``'s
    output are ranked and the weakest are masked in ``conv1.weight`` (whole filters),
    ``conv1.bias`` and ``norm1.weight``/``norm1.bias``, so they output exactly 0.

    Args:
        model: a network built from `ConvBlock` s (the course `UNet`) with batch or instance
            norm, or no norm; pruned in place (reparametrised until `make_permanent`).
        amount: fraction of each block's internal channels to prune, in [0, 1) (rounded
            per block by ``torch.nn.utils.prune``).
        criterion: ``"l1"``: ``prune.ln_structured`` on ``conv1.weight`` along the output
            axis, the ``n``-norm of each filter (Li et al. 2017); ``"gamma"``: ``|gamma|`` of
            the following norm (Liu et al. 2017; ``prune.l1_unstructured`` on the 1-D norm
            weight, i.e. one entry per channel). With batch norm right after the conv, a
            filter's norm says little (the norm rescales it); ``|gamma|`` is the channel's
            actual output scale.
        n: the norm order for ``"l1"`` (1 = L1, 2 = L2).

    Returns:
        ``model``.

    Raises:
        ValueError: ``amount`` outside [0, 1), no `ConvBlock` in ``model``, or group norm
            (its statistics mix channels, so a zero channel changes its neighbours).
    """
    _check_amount(amount)
    if criterion not in ("l1", "gamma"):
        raise ValueError(f"criterion must be 'l1' or 'gamma', got {criterion!r}")
    blocks = list(_conv_blocks(model))
    if not blocks:
        raise ValueError("prune_channels needs a model built from ConvBlocks (the course UNet)")
    for conv, norm, _ in blocks:
        affine_norm = isinstance(norm, _NORM_TYPES) and norm.weight is not None
        if not (affine_norm or isinstance(norm, nn.Identity)):
            raise ValueError(f"cannot prune channels before {type(norm).__name__}: only batch "
                             "norm, affine instance norm or no norm keep channels independent")
        if criterion == "gamma" and affine_norm:
            prune.l1_unstructured(norm, "weight", amount=amount)  # 1-D: |gamma| per channel
            keep = norm.weight_mask.bool()
            prune.custom_from_mask(conv, "weight", keep.view(-1, *[1] * (conv.weight.ndim - 1))
                                   .expand_as(conv.weight))
        else:
            prune.ln_structured(conv, "weight", amount=amount, n=n, dim=0)
            keep = conv.weight_mask.flatten(1).any(1)
            if affine_norm:
                prune.custom_from_mask(norm, "weight", keep)
        if affine_norm:
            prune.custom_from_mask(norm, "bias", keep)
        if conv.bias is not None:
            prune.custom_from_mask(conv, "bias", keep)
    return model


def is_pruned(model: nn.Module) -> bool:
    """Whether any module of ``model`` still carries a pruning reparametrisation."""
    return any(isinstance(hook, prune.BasePruningMethod)
               for module in model.modules() for hook in module._forward_pre_hooks.values())


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its tensor (``prune.remove``), in place.

    Afterwards the state dict has plain ``weight``/``bias`` entries (no ``_orig`` or
    ``_mask``), the zeros are ordinary values and further training may change them.
    """
    for module in model.modules():
        names = [hook._tensor_name for hook in module._forward_pre_hooks.values()
                 if isinstance(hook, prune.BasePruningMethod)]
        for name in names:
            prune.remove(module, name)
    return model


def _live_channels(conv: nn.Module, norm: nn.Module) -> torch.Tensor:
    """Bool ``(C,)``: channels of ``conv``'s output that can be non-zero after ``norm``."""
    if isinstance(norm, _NORM_TYPES):
        return (norm.weight != 0) | (norm.bias != 0)
    live = conv.weight.detach().flatten(1).ne(0).any(1)
    return live | conv.bias.ne(0) if conv.bias is not None else live


def _slice_conv(conv: nn.Module, out_keep: torch.Tensor | None,
                in_keep: torch.Tensor | None) -> nn.Module:
    weight = conv.weight.detach()
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None:
        weight = weight[:, in_keep]
    new = type(conv)(weight.shape[1] * conv.groups, weight.shape[0], conv.kernel_size,
                     stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                     groups=conv.groups, bias=conv.bias is not None,
                     padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            bias = conv.bias.detach()
            new.bias.copy_(bias[out_keep] if out_keep is not None else bias)
    return new.to(weight.device)


def _slice_norm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    if isinstance(norm, nn.Identity):
        return norm
    new = copy.deepcopy(norm)
    new.num_features = int(keep.sum())
    with torch.no_grad():
        new.weight = nn.Parameter(norm.weight.detach()[keep].clone())
        new.bias = nn.Parameter(norm.bias.detach()[keep].clone())
        for name in ("running_mean", "running_var"):
            buffer = getattr(norm, name, None)
            if buffer is not None:
                setattr(new, name, buffer[keep].clone())
    return new


def _copy_pruned(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works right after pruning.

    Pruning leaves ``weight = weight_orig * weight_mask`` as a non-leaf tensor (it carries
    autograd history), which ``deepcopy`` refuses; recomputing it without grad, as every
    forward pass does anyway, gives the same values as a plain tensor.
    """
    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, prune.BasePruningMethod):
                    setattr(module, hook._tensor_name, hook.apply_mask(module))
    return copy.deepcopy(model)


def remove_pruned_channels(model: nn.Module) -> nn.Module:
    """A thinner copy of ``model`` without the channels `prune_channels` zeroed.

    In each `ConvBlock`, the dead internal channels (zero norm ``weight`` and ``bias``, or a
    zero filter and bias without norm) are cut from the first conv's output, its norm and
    the second conv's input. A dead channel outputs exactly 0, so the result computes the
    same logits (up to float rounding) with fewer parameters and less work. At least one
    channel per block is kept.

    Args:
        model: pruned by `prune_channels` (masks are folded in on the copy) or already
            permanent; it is not modified.

    Returns:
        A new model, same class, in the same train/eval mode.
    """
    thin = make_permanent(_copy_pruned(model))
    removed = 0
    for block in thin.modules():
        if not isinstance(block, ConvBlock):
            continue
        conv1, norm1, conv2 = block[0], block[1], block[3]
        keep = _live_channels(conv1, norm1)
        if not keep.any():
            keep[0] = True
        if keep.all():
            continue
        removed += int((~keep).sum())
        block[0] = _slice_conv(conv1, keep, None)
        block[1] = _slice_norm(norm1, keep)
        block[3] = _slice_conv(conv2, None, keep)
    logger.info("removed %d pruned channels", removed)
    return thin


def fine_tune(model: nn.Module, trained: TrainedModel, steps: int, lr: float = 3e-4,
              batch_size: int | None = None, validate: bool = True, seed: int = 0,
              device: torch.device | str | None = "cpu") -> dict[str, Any]:
    """Train a (pruned) copy of the course model for a few steps with the `Trainer`.

    The masks of ``torch.nn.utils.prune`` stay active, so pruned weights stay zero. Data,
    loss and augmentation are the recipe's (``trained.config``), on its training patients;
    ``steps * batch_size`` training slices are drawn at random for one epoch, then (with
    ``validate``) whole validation volumes are scored as in training. Nothing is written.

    Args:
        model: the network to fine-tune, in place (left in eval mode).
        trained: the `TrainedModel` it was pruned from (config, dataset, split).
        steps: optimiser steps (AdamW, constant ``lr``).
        lr: learning rate; smaller than for training from scratch.
        batch_size: slices per step; None: the recipe's.
        validate: score the validation patients at the end (``best_val_dice``).
        seed: seeds the slice draw and the loader.
        device: where to train.

    Returns:
        The `Trainer.fit` metrics (``train_loss``, ``best_val_dice``, ``seconds``...).

    Raises:
        ValueError: ``steps`` < 1.
    """
    from torch.utils.data import Subset

    from medseg_helpers.data.datasets import make_dataloader
    from medseg_helpers.inferers import SliceBySliceInferer
    from medseg_helpers.training.job import build_data, build_loss
    from medseg_helpers.training.trainer import Trainer

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    config = trained.config.updated(data_dir=str(trained.dataset_dir))
    batch_size = batch_size or config.batch_size
    data = build_data(config)
    dataset = data.train_loader.dataset
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(dataset), size=steps * batch_size,
                         replace=steps * batch_size > len(dataset))
    loader = make_dataloader(Subset(dataset, indices.tolist()), batch_size, shuffle=False,
                             seed=seed, drop_last=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    inferer = SliceBySliceInferer(2 * batch_size) if config.spatial_dims == 2 else None
    trainer = Trainer(model, build_loss(config.loss, **config.loss_kwargs), optimizer, loader,
                      data.val_loader if validate else None, num_classes=trained.num_classes,
                      max_epochs=1, device=device, grad_clip_norm=config.grad_clip_norm,
                      sw_roi_size=config.patch_size if config.spatial_dims == 3 else None,
                      val_inferer=inferer, class_names=trained.class_names, seed=seed,
                      progress=False, tensorboard=False, check_data=False)
    metrics = trainer.fit()
    model.eval()
    return metrics
