"""The validation pass of a segmentation model: mean loss and Dice over a loader.

The model predicts each batch (``inferer(model, image)``, e.g. a sliding window for 3D
volumes larger than the training patch), the argmax of the logits is scored per case and
class with `DiceAccumulator`, and sums are reduced over ranks under DDP, so every rank
returns the same numbers. `medseg_helpers.training.trainer.Trainer` calls it every
``val_every`` epochs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from medseg_helpers.device import cpu_has_native_bf16
from medseg_helpers.metrics.overlap import DiceAccumulator
from medseg_helpers.training import distributed


def amp_available(device: torch.device) -> bool:
    """Whether mixed precision pays on ``device``: CUDA (float16), or a CPU with native
    bfloat16 (`device.cpu_has_native_bf16`: AVX-512 BF16 or AMX)."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def amp_autocast(enabled: bool, device: torch.device | str = "cuda"
                 ) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass when ``enabled``: ``torch.autocast`` in float16
    on CUDA, in bfloat16 on a CPU (only enable it where `amp_available`); else a context
    that does nothing. Compute losses outside it, on ``logits.float()``."""
    if not enabled:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if device_type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


@torch.no_grad()
def validate_model(model: nn.Module, loader: Iterable[Mapping[str, torch.Tensor]],
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   num_classes: int, class_names: Sequence[str], device: torch.device, *,
                   inferer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                   amp: bool = False, progress: bool = False) -> dict[str, float]:
    """Mean loss and Dice of ``model`` over ``loader``.

    Dice is `compute_dice` of the argmax prediction per case and class (``empty="nan"``: a
    class absent from prediction and truth is skipped, a false positive on a truth
    without the class counts 0). The model is put in eval mode and left in train mode.

    Args:
        model: the bare model (not DDP-wrapped: evaluation runs no collectives).
        loader: batches ``{"image": (B, C, *S) float32, "label": (B, 1, *S) int64}``.
        loss_fn: ``loss_fn(logits, label) -> scalar``, computed in float32.
        num_classes: classes including background.
        class_names: the ``num_classes - 1`` foreground names, for the ``dice_<name>`` keys.
        device: where batches go.
        inferer: ``inferer(model, image) -> logits (B, num_classes, *S)``; None: ``model``.
        amp: mixed precision on ``device`` (`amp_autocast`).
        progress: show a tqdm bar.

    Returns:
        ``{"val_loss", "val_dice" (mean over foreground classes), "dice_<name>"...}``,
        summed over ranks under DDP; ``val_loss`` is NaN for an empty loader.

    Raises:
        torch.cuda.OutOfMemoryError: with advice on the sliding window and batch size.
    """
    predict = inferer or (lambda net, image: net(image))
    model.eval()
    dice = DiceAccumulator(num_classes)
    loss_sum, count = 0.0, 0
    for batch in tqdm(loader, desc="validation", leave=False, disable=not progress):
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        try:
            with amp_autocast(amp, device):
                logits = predict(model, image)
        except torch.cuda.OutOfMemoryError as error:
            raise torch.cuda.OutOfMemoryError(
                f"out of memory validating an image of shape {tuple(image.shape)} on "
                f"{device}: set sw_roi_size to the training patch size, lower sw_batch_size "
                f"or the validation batch size. Original error: {error}") from error
        loss_sum += float(loss_fn(logits.float(), label))
        count += 1
        dice.update(logits.argmax(dim=1, keepdim=True), label)
    model.train()
    dice.sums = distributed.all_reduce_sum(dice.sums, device)
    dice.counts = distributed.all_reduce_sum(dice.counts, device)
    summed = distributed.all_reduce_sum(torch.tensor([loss_sum, count], dtype=torch.float64),
                                        device)
    mean_dice, per_class = dice.aggregate()
    return {"val_loss": float(summed[0] / summed[1]) if summed[1] > 0 else math.nan,
            "val_dice": mean_dice,
            **{f"dice_{n}": d for n, d in zip(class_names, per_class, strict=True)}}
