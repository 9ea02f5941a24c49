"""Segmentation metrics on integer masks: Dice per case and class, and a running mean.

The Dice similarity coefficient (Dice 1945, "Measures of the amount of ecologic association
between species") of class ``c`` in one case is

    Dice = 2 |P ∩ G| / (|P| + |G|),   P = {pred == c},  G = {truth == c}.

It is undefined when both masks are empty (0 / 0). Libraries disagree on that case and on a
false positive in a case whose truth lacks the class, so every number states its convention:

==========================  ==================  ==================  ===================
truth / prediction          ``empty="nan"``     ``empty="one"``     MONAI ``DiceMetric``
                            (default)                               ``ignore_empty=True``
==========================  ==================  ==================  ===================
both empty                  NaN (ignored)       1.0                 NaN (ignored)
truth empty, pred not       0.0 (penalised)     0.0                 NaN (ignored!)
truth not empty             formula             formula             formula
==========================  ==================  ==================  ===================

``empty="one"`` equals MONAI's ``DiceMetric(ignore_empty=False)`` everywhere. MONAI's default
(``ignore_empty=True``) skips every case whose truth lacks the class, so a false-positive
lesion on a lesion-free slice does not lower its score; ``empty="nan"`` (the nnU-Net
convention) does count it, as 0. Means over cases skip NaN (`DiceAccumulator`).

Checked against ``monai.metrics.DiceMetric`` in ``tests/test_metrics.py``.

Voxel-counting metrics of one case (NumPy, for evaluation on the source grid) come from its
confusion matrix (`confusion_matrix`, `overlap_metrics`): per class ``c``, one-vs-rest,
``TP`` = voxels of ``c`` predicted ``c``, ``FP`` = predicted ``c`` but not ``c``,
``FN`` = ``c`` predicted as something else, ``TN`` = the rest.

=============  ============================  ==========================================
metric         formula                       undefined (NaN) when
=============  ============================  ==========================================
Dice           2 TP / (2 TP + FP + FN)       class absent from truth and prediction
IoU (Jaccard)  TP / (TP + FP + FN)           class absent from truth and prediction
accuracy       (TP + TN) / N                 never
sensitivity    TP / (TP + FN)  (recall)      class absent from the truth
specificity    TN / (TN + FP)                every voxel is the class in the truth
precision      TP / (TP + FP)  (PPV)         class absent from the prediction
=============  ============================  ==========================================

A false positive on a case without the class therefore scores Dice = IoU = 0 (as
``compute_dice(empty="nan")``), and a missed class scores sensitivity 0 but precision NaN.
These are MONAI's ``compute_confusion_matrix_metric`` conventions (0 / 0 is NaN). Accuracy
is dominated by the background under class imbalance: predicting "no lesion" everywhere on
a scan where the lesion is 0.1 % of the voxels scores 0.999.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

EmptyScore = Literal["nan", "one"]

__all__ = [
    "DiceAccumulator",
    "compute_dice",
    "confusion_matrix",
    "overlap_metrics",
    "volume_ml",
]


def _as_flat_masks(pred: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two integer masks and return them as ``(B, N)`` int64."""
    for name, mask in (("pred", pred), ("truth", truth)):
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"{name} must be an integer mask (e.g. logits.argmax(1, keepdim=True))"
                            f", got dtype {mask.dtype}")
        if mask.ndim < 2:
            raise ValueError(f"{name} needs a batch axis: (B, 1, *spatial) or (B, *spatial), "
                             f"got shape {tuple(mask.shape)}")
    p_shape, t_shape = tuple(pred.shape), tuple(truth.shape)
    if p_shape != t_shape:  # allow (B, 1, *S) against (B, *S)
        squeeze = [m[:, 0] if m.ndim > 2 and m.shape[1] == 1 else m for m in (pred, truth)]
        if squeeze[0].shape != squeeze[1].shape:
            raise ValueError(f"pred {p_shape} and truth {t_shape} do not have the same shape")
        pred, truth = squeeze
    return pred.reshape(pred.shape[0], -1).long(), truth.reshape(truth.shape[0], -1).long()


def _check_range(mask: torch.Tensor, name: str, num_classes: int) -> None:
    low, high = int(mask.min()), int(mask.max())
    if low < 0 or high >= num_classes:
        found = torch.unique(mask).tolist()
        raise ValueError(f"{name} has values {found[:10]} outside [0, {num_classes}) "
                         f"(num_classes={num_classes}); check the label map or num_classes")


def compute_dice(
    pred: torch.Tensor,
    truth: torch.Tensor,
    num_classes: int,
    include_background: bool = False,
    empty: EmptyScore = "nan",
) -> torch.Tensor:
    """Dice per case and class between two integer masks.

    Args:
        pred: predicted classes, ``(B, 1, H, W)`` / ``(B, 1, D, H, W)`` or without the
            channel axis, any integer dtype, values in ``[0, num_classes)``.
        truth: ground-truth classes, same layout and range as ``pred``.
        num_classes: ``C``, classes including background (class 0).
        include_background: keep class 0 in the output.
        empty: score when a class is absent from both ``pred`` and ``truth`` of a case:
            ``"nan"`` (ignored by means, default) or ``"one"`` (see the module docstring).

    Returns:
        ``(B, C)`` float32 in [0, 1] (``(B, C - 1)`` without background: column ``j`` is
        class ``j + 1``), NaN where ``empty="nan"`` and the class is absent from both.

    Raises:
        TypeError: a float mask (pass ``logits.argmax(1, keepdim=True)``, not logits).
        ValueError: shapes differ (both named), values outside ``[0, num_classes)``, or an
            unknown ``empty``.

    Example:
        >>> pred = torch.tensor([[[0, 1, 1, 0]]])   # (B=1, 1, 4): class 1 at x = 1, 2
        >>> truth = torch.tensor([[[0, 1, 0, 0]]])  # class 1 at x = 1
        >>> compute_dice(pred, truth, num_classes=2)  # 2 * 1 / (2 + 1)
        tensor([[0.6667]])
    """
    if empty not in ("nan", "one"):
        raise ValueError(f"empty must be 'nan' or 'one', got {empty!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred, truth = _as_flat_masks(pred, truth)
    _check_range(pred, "pred", num_classes)
    _check_range(truth, "truth", num_classes)
    batch = pred.shape[0]
    # One bincount per batch gives, per case, the confusion matrix (truth row, pred column).
    offsets = torch.arange(batch, device=pred.device).view(-1, 1) * num_classes * num_classes
    index = (offsets + truth * num_classes + pred).reshape(-1)
    confusion = torch.bincount(index, minlength=batch * num_classes * num_classes)
    confusion = confusion.view(batch, num_classes, num_classes).double()
    true_positive = torch.diagonal(confusion, dim1=1, dim2=2)
    size_sum = confusion.sum(dim=2) + confusion.sum(dim=1)  # |G| + |P| per class
    both_empty = 1.0 if empty == "one" else float("nan")
    dice = torch.where(size_sum > 0, 2 * true_positive / size_sum.clamp(min=1),
                       torch.full_like(size_sum, both_empty))
    dice = dice.float()
    return dice if include_background else dice[:, 1:]


class DiceAccumulator:
    """Running per-class mean Dice over the cases of several batches (NaN-aware).

    ``update`` adds each case's `compute_dice`; ``aggregate`` returns, per class, the mean
    over the cases where it is not NaN (MONAI's ``DiceMetric(reduction="mean_batch")``),
    and the mean over classes of those means. Sums and counts are plain tensors, so a
    distributed run can ``all_reduce`` them (`medseg_helpers.training.trainer` does).

    Args:
        num_classes: ``C``, classes including background.
        include_background: score class 0 too.
        empty: see `compute_dice`.

    Attributes:
        sums: ``(K,)`` float64, summed non-NaN Dice per reported class.
        counts: ``(K,)`` float64, number of cases summed per class.
    """

    def __init__(self, num_classes: int, include_background: bool = False,
                 empty: EmptyScore = "nan") -> None:
        self.num_classes, self.empty = num_classes, empty
        self.include_background = include_background
        self.num_reported = num_classes if include_background else num_classes - 1
        self.reset()

    def reset(self) -> None:
        """Forget all cases."""
        self.sums = torch.zeros(self.num_reported, dtype=torch.float64)
        self.counts = torch.zeros(self.num_reported, dtype=torch.float64)

    def update(self, pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """Add a batch; arguments as in `compute_dice`. Returns its ``(B, K)`` Dice."""
        dice = compute_dice(pred, truth, self.num_classes, self.include_background, self.empty)
        valid = ~torch.isnan(dice)
        self.sums += torch.where(valid, dice, 0).double().sum(dim=0).cpu()
        self.counts += valid.double().sum(dim=0).cpu()
        return dice

    def per_class(self) -> torch.Tensor:
        """``(K,)`` float32 mean Dice per class; NaN for a class with no scored case."""
        return (self.sums / self.counts).float()  # 0 / 0 gives NaN

    def aggregate(self) -> tuple[float, list[float]]:
        """``(mean over classes of the per-class means, per-class means)``; NaN-aware."""
        per_class = self.per_class()
        return float(torch.nanmean(per_class)), per_class.tolist()


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Voxel confusion matrix of two label maps.

    Args:
        pred: predicted labels, any shape, integer values in ``[0, num_classes)``.
        truth: ground-truth labels, same shape and range.
        num_classes: ``K``, classes including background.

    Returns:
        ``(K, K)`` int64 counts; row = true class, column = predicted class (the layout of
        ``sklearn.metrics.confusion_matrix``).

    Raises:
        ValueError: shapes differ (both named), a float mask, or values out of range.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} do not have the same shape")
    for name, mask in (("pred", pred), ("truth", truth)):
        if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
            raise TypeError(f"{name} must be an integer label map, got dtype {mask.dtype}")
        if mask.size and (int(mask.min()) < 0 or int(mask.max()) >= num_classes):
            found = np.unique(mask).tolist()
            raise ValueError(f"{name} has values {found[:10]} outside [0, {num_classes}) "
                             f"(num_classes={num_classes})")
    index = truth.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` as float64, NaN where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def overlap_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class voxel-counting metrics from a confusion matrix (see the module docstring).

    Args:
        confusion: ``(K, K)`` counts, rows = truth, columns = prediction
            (`confusion_matrix`).

    Returns:
        ``{name: (K,) array}`` for ``tp``, ``fp``, ``fn``, ``tn`` (int64) and ``dice``,
        ``iou``, ``accuracy``, ``sensitivity``, ``specificity``, ``precision`` (float64 in
        [0, 1], NaN where undefined).

    Example:
        >>> cm = confusion_matrix(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 2)
        >>> overlap_metrics(cm)["dice"][1]  # 2 * 1 / (2 * 1 + 1 + 0)
        np.float64(0.6666666666666666)
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {confusion.shape}")
    tp = np.diagonal(confusion).copy()
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    tn = confusion.sum() - tp - fp - fn
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "accuracy": _ratio(tp + tn, np.full_like(tp, confusion.sum())),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
    }  # fmt: skip


def volume_ml(counts: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Voxel counts to volumes in millilitres (1 mL = 1000 mm^3).

    Args:
        counts: voxel counts, any shape.
        spacing_mm: voxel size per axis in mm (2 values for pixels give mm^2 / 1000).
    """
    return np.asarray(counts, dtype=np.float64) * float(np.prod(spacing_mm)) / 1000.0
