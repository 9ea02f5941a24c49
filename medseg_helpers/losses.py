"""Segmentation losses written from scratch: soft Dice, weighted cross-entropy, Dice+CE, focal,
Tversky. Each is a pure function and a thin ``nn.Module`` around it.

Shapes (2D shown; 3D adds ``D`` before ``H``, array order Z, Y, X):

- ``logits``: ``(B, C, H, W)`` float, unnormalised network outputs. ``activation`` says how
  they become probabilities: ``"softmax"`` over ``C`` mutually exclusive classes (background
  is channel 0), ``"sigmoid"`` per channel (binary or multi-label), or ``"none"`` when they
  already are probabilities in [0, 1] (Dice and Tversky only).
- ``truth``: either integer labels ``(B, 1, H, W)`` with values in ``[0, C)`` (any dtype
  holding whole numbers), or one-hot / multi-hot ``(B, C, H, W)`` in [0, 1]. With ``C == 1``
  both readings coincide: a binary mask of the foreground.

Conventions (stated because libraries differ):

- Smoothing: the Dice score of a class is ``(2 TP + smooth_nr) / (sum p + sum g + smooth_dr)``
  with TP = ``sum p*g`` summed over the spatial axes (and the batch when ``batch=True``). With
  the default equal smoothing (1e-5), a class absent from both truth and prediction scores
  1 (loss 0), while a false-positive-only class scores about 0; with ``smooth_nr=0`` an absent
  class scores 0 and gives no gradient. Soft predictions are never exactly zero, so an absent
  class's loss is small but positive and pushes its probabilities down.
- ``batch=False`` (default) computes Dice per sample and class, then averages (MONAI's
  ``batch=False``); ``batch=True`` sums TP and sizes over the whole batch first, so a slice
  without the class does not count as a perfect score.
- Weighted cross-entropy's mean divides by the summed weights of the true classes (as
  ``torch.nn.CrossEntropyLoss`` with class indices), for integer and one-hot truth alike.
  (MONAI's ``DiceCELoss`` passes one-hot targets to torch as probabilities, whose mean divides
  by the voxel count instead, so with weights it disagrees with itself across truth formats.)
- Softmax focal loss sums over classes per voxel, so with ``gamma=0`` and no ``alpha`` it
  equals cross-entropy; ``include_background=False`` still normalises over all classes and
  drops the background *term*. MONAI averages over classes too and, without background,
  renormalises the softmax over foreground channels only.

Numerically checked against ``monai.losses`` in ``tests/test_losses.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["softmax", "sigmoid", "none"]
Reduction = Literal["mean", "sum", "none"]
Weight = Sequence[float] | torch.Tensor | None

__all__ = ["CrossEntropyLoss", "DiceCELoss", "DiceLoss", "FocalLoss", "TverskyLoss",
           "cross_entropy_loss", "dice_ce_loss", "dice_loss", "focal_loss", "one_hot_truth",
           "tversky_loss"]


def one_hot_truth(truth: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Return ``truth`` as a float one-hot tensor with the shape of ``logits``.

    Args:
        truth: labels ``(B, 1, *S)`` in ``[0, C)`` or one-hot ``(B, C, *S)``.
        logits: ``(B, C, *S)``, gives ``C``, the shape, dtype and device.

    Raises:
        ValueError: if the shapes do not match (the message names both) or a label is
            outside ``[0, C)``.
    """
    if truth.shape == logits.shape:
        return truth.to(logits.dtype)
    num_classes = logits.shape[1]
    if truth.ndim != logits.ndim or truth.shape[1] != 1 or truth.shape[2:] != logits.shape[2:] \
            or truth.shape[0] != logits.shape[0]:
        raise ValueError(f"truth shape {tuple(truth.shape)} does not fit logits "
                         f"{tuple(logits.shape)}: expected labels (B, 1, *S) or one-hot (B, C, *S)")
    labels = truth[:, 0].long()
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}) for {num_classes} channels, "
                         f"got range [{int(labels.min())}, {int(labels.max())}]")
    return F.one_hot(labels, num_classes).movedim(-1, 1).to(logits.dtype)


def _activate(logits: torch.Tensor, activation: Activation) -> torch.Tensor:
    if activation == "softmax":
        if logits.shape[1] == 1:
            raise ValueError("softmax over a single channel is constantly 1; "
                             "use activation='sigmoid' for a binary (B, 1, ...) output")
        return logits.softmax(dim=1)
    if activation == "sigmoid":
        return logits.sigmoid()
    if activation == "none":
        return logits
    raise ValueError(f"activation must be 'softmax', 'sigmoid' or 'none', got {activation!r}")


def _drop_background(*tensors: torch.Tensor, include_background: bool) -> list[torch.Tensor]:
    # A single channel is the foreground of a binary task: it is never dropped.
    if include_background or tensors[0].shape[1] == 1:
        return list(tensors)
    return [t[:, 1:] for t in tensors]


def _reduce(loss: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _class_weight(weight: Weight, like: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device).flatten()
    if w.numel() != num_classes or (w < 0).any():
        raise ValueError(f"weight needs {num_classes} non-negative values (one per class used), "
                         f"got {w.tolist()}")
    return w


def _overlap(logits: torch.Tensor, truth: torch.Tensor, activation: Activation,
             include_background: bool, batch: bool) -> tuple[torch.Tensor, ...]:
    """Soft TP, FP, FN per (sample, class), or per class with ``batch=True``."""
    probs = _activate(logits, activation)
    onehot = one_hot_truth(truth, logits)
    probs, onehot = _drop_background(probs, onehot, include_background=include_background)
    dims = ([0] if batch else []) + list(range(2, logits.ndim))
    tp = (probs * onehot).sum(dims)
    return tp, (probs * (1 - onehot)).sum(dims), ((1 - probs) * onehot).sum(dims)


def dice_loss(logits: torch.Tensor, truth: torch.Tensor, *, activation: Activation = "softmax",
              include_background: bool = True, batch: bool = False, smooth_nr: float = 1e-5,
              smooth_dr: float = 1e-5, weight: Weight = None,
              reduction: Reduction = "mean") -> torch.Tensor:
    """Soft Dice loss, ``1 - (2 TP + smooth_nr) / (sum p + sum g + smooth_dr)`` per class.

    Milletari, Navab and Ahmadi (2016), "V-Net", 3DV; multi-class averaging as in MONAI's
    ``DiceLoss``. See the module docstring for shapes, absent classes and smoothing.

    Args:
        logits: ``(B, C, *S)`` float.
        truth: labels ``(B, 1, *S)`` or one-hot ``(B, C, *S)``.
        activation: ``"softmax"``, ``"sigmoid"`` or ``"none"`` (``logits`` are probabilities).
        include_background: False drops channel 0 (unless ``C == 1``).
        batch: sum over the batch before dividing (one score per class) instead of per sample.
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        weight: per-class factors on the per-class losses (length ``C``, or ``C - 1`` without
            background); the mean is then the plain mean of the weighted losses, as MONAI.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` → ``(B, C')`` (``(C',)`` with ``batch``).

    Returns:
        The loss, in [0, 1] per class before weighting.
    """
    tp, fp, fn = _overlap(logits, truth, activation, include_background, batch)
    loss = 1 - (2 * tp + smooth_nr) / (2 * tp + fp + fn + smooth_dr)
    w = _class_weight(weight, loss, loss.shape[-1])
    return _reduce(loss if w is None else loss * w, reduction)


def tversky_loss(logits: torch.Tensor, truth: torch.Tensor, *, alpha: float = 0.5,
                 beta: float = 0.5, activation: Activation = "softmax",
                 include_background: bool = True, batch: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, reduction: Reduction = "mean") -> torch.Tensor:
    """Tversky loss, ``1 - (TP + smooth_nr) / (TP + alpha FP + beta FN + smooth_dr)`` per class.

    Salehi, Erdogmus and Gholipour (2017), "Tversky loss function for image segmentation using
    3D fully convolutional deep networks", MLMI. ``alpha`` weighs false positives and ``beta``
    false negatives; ``beta > alpha`` (e.g. 0.3/0.7) favours recall of small lesions, and
    ``alpha = beta = 0.5`` is the Dice loss. Other arguments as in `dice_loss`.
    """
    tp, fp, fn = _overlap(logits, truth, activation, include_background, batch)
    loss = 1 - (tp + smooth_nr) / (tp + alpha * fp + beta * fn + smooth_dr)
    return _reduce(loss, reduction)


def cross_entropy_loss(logits: torch.Tensor, truth: torch.Tensor, *, weight: Weight = None,
                       activation: Literal["softmax", "sigmoid"] = "softmax",
                       reduction: Reduction = "mean",
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """(Weighted) cross-entropy, softmax over classes or binary per channel.

    Softmax: per voxel ``-sum_c w_c g_c log p_c``; the mean divides by ``sum w_c g_c`` over
    voxels (the weighted mean of ``torch.nn.CrossEntropyLoss``), ``"none"`` gives ``(B, *S)``.
    Sigmoid: ``-(w g log p + (1 - g) log(1 - p))`` per element, ``weight`` acting on positives
    per channel (``pos_weight`` of ``BCEWithLogitsLoss``), mean over ``(B, C, *S)``.

    Args:
        logits: ``(B, C, *S)`` float, unnormalised.
        truth: labels ``(B, 1, *S)`` or one-hot ``(B, C, *S)`` (soft targets allowed).
        weight: ``C`` non-negative class weights, e.g. inverse class frequencies.
        activation: ``"softmax"`` or ``"sigmoid"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        label_smoothing: ``eps`` in [0, 1): the truth becomes ``(1 - eps) g + eps / C``
            (softmax; ``eps / 2`` per channel for sigmoid), so the network is never pushed
            to infinite confidence, which limits how hard it fits wrong labels (Szegedy et
            al. 2016, "Rethinking the Inception architecture"; Müller et al. 2019, "When
            does label smoothing help?"). The softmax mean still divides by the weights of
            the *hard* labels, as ``torch.nn.functional.cross_entropy(label_smoothing=)``
            does with class indices.
    """
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    onehot = one_hot_truth(truth, logits)
    w = _class_weight(weight, logits, logits.shape[1])
    shape = (1, -1) + (1,) * (logits.ndim - 2)
    hard = onehot
    if label_smoothing:
        classes = 2 if activation == "sigmoid" else logits.shape[1]
        onehot = onehot * (1 - label_smoothing) + label_smoothing / classes
    if activation == "sigmoid":
        positive = onehot if w is None else onehot * w.view(shape)
        loss = -(positive * F.logsigmoid(logits) + (1 - onehot) * F.logsigmoid(-logits))
        return _reduce(loss, reduction)
    if activation != "softmax":
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    weighted = onehot if w is None else onehot * w.view(shape)
    loss = -(weighted * logits.log_softmax(dim=1)).sum(dim=1)
    if reduction == "mean":
        return loss.sum() / (hard if w is None else hard * w.view(shape)).sum()
    return _reduce(loss, reduction)


def dice_ce_loss(logits: torch.Tensor, truth: torch.Tensor, *, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, weight: Weight = None,
                 activation: Literal["softmax", "sigmoid"] = "softmax",
                 include_background: bool = True, batch: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, label_smoothing: float = 0.0) -> torch.Tensor:
    """``lambda_dice * dice_loss + lambda_ce * cross_entropy_loss``, both with ``mean``.

    The combination nnU-Net trains with (Isensee et al. 2021, Nature Methods): CE gives smooth
    voxel-wise gradients early, Dice counters class imbalance. ``weight`` goes to both terms
    (without background, Dice uses ``weight[1:]``; with one channel only BCE's ``pos_weight``),
    as in MONAI's ``DiceCELoss``. With
    ``activation="sigmoid"`` the CE term is binary per channel (MONAI uses softmax CE whenever
    ``C > 1``). ``label_smoothing`` acts on the CE term only (`cross_entropy_loss`); the
    Dice term keeps the hard truth. Other arguments as in `dice_loss`.
    """
    if lambda_dice < 0 or lambda_ce < 0:
        raise ValueError(f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice}, {lambda_ce}")
    dice_weight = weight  # a single channel's weight is BCE's pos_weight only, as in MONAI
    if weight is not None and logits.shape[1] == 1:
        dice_weight = None
    elif weight is not None and not include_background:
        dice_weight = torch.as_tensor(weight).flatten()[1:]
    dice = dice_loss(logits, truth, activation=activation, include_background=include_background,
                     batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr, weight=dice_weight)
    ce = cross_entropy_loss(logits, truth, weight=weight, activation=activation,
                            label_smoothing=label_smoothing)
    return lambda_dice * dice + lambda_ce * ce


def focal_loss(logits: torch.Tensor, truth: torch.Tensor, *, gamma: float = 2.0,
               alpha: float | Sequence[float] | None = None,
               activation: Literal["softmax", "sigmoid"] = "sigmoid",
               include_background: bool = True, reduction: Reduction = "mean") -> torch.Tensor:
    """Focal loss, ``-alpha_t (1 - p_t)**gamma log p_t`` (Lin et al. 2017, "Focal Loss for Dense
    Object Detection", ICCV).

    The factor ``(1 - p_t)**gamma`` shrinks the loss of well-classified voxels, so the many easy
    background voxels stop dominating; ``gamma=0`` gives (binary) cross-entropy.

    Args:
        logits: ``(B, C, *S)`` float, unnormalised.
        truth: labels ``(B, 1, *S)`` or one-hot ``(B, C, *S)``.
        gamma: focusing exponent (2 in the paper).
        alpha: class balance. Sigmoid: scalar ``alpha`` on positives and ``1 - alpha`` on
            negatives (0.25 in the paper), or one factor per channel applied to positives.
            Softmax: scalar gives ``1 - alpha`` to background and ``alpha`` to the others, or
            one factor per class.
        activation: ``"sigmoid"`` (per channel, as the paper) or ``"softmax"``.
        include_background: False drops the background channel's terms (``C > 1``).
        reduction: ``"mean"`` over ``(B, C', *S)`` elements for sigmoid and over ``(B, *S)``
            voxels for softmax (terms summed over classes); ``"none"`` returns those shapes.
    """
    onehot = one_hot_truth(truth, logits)
    shape = (1, -1) + (1,) * (logits.ndim - 2)
    if activation == "sigmoid":
        # log(1 - p_t) = logsigmoid(-x * (2g - 1)) is stable for large |x|; so is log p_t.
        signed = logits * (2 * onehot - 1)
        loss = -(F.logsigmoid(-signed) * gamma).exp() * (
            onehot * F.logsigmoid(logits) + (1 - onehot) * F.logsigmoid(-logits))
        if alpha is not None:
            a = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
            if a.ndim == 0:
                loss = loss * (onehot * a + (1 - onehot) * (1 - a))
            else:
                loss = loss * torch.where(onehot == 1, _class_weight(a, loss, loss.shape[1])
                                          .view(shape), torch.ones_like(loss))
        (loss,) = _drop_background(loss, include_background=include_background)
        return _reduce(loss, reduction)
    if activation != "softmax":
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    log_probs = logits.log_softmax(dim=1)
    loss = -(1 - log_probs.exp()).pow(gamma) * log_probs * onehot
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
        if a.ndim == 0:
            a = torch.cat([1 - a.view(1), a.repeat(logits.shape[1] - 1)])
        loss = loss * _class_weight(a, loss, loss.shape[1]).view(shape)
    (loss,) = _drop_background(loss, include_background=include_background)
    return _reduce(loss.sum(dim=1), reduction)


class _LossModule(nn.Module):
    """Stores keyword arguments; ``weight`` becomes a buffer so ``.to(device)`` moves it."""

    def __init__(self, weight: Weight = None, **kwargs: object) -> None:
        super().__init__()
        self.kwargs = kwargs
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class DiceLoss(_LossModule):
    """`dice_loss` as a module; arguments as there. ``forward(logits, truth)``."""

    def __init__(self, activation: Activation = "softmax", include_background: bool = True,
                 batch: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 weight: Weight = None, reduction: Reduction = "mean") -> None:
        super().__init__(weight, activation=activation, include_background=include_background,
                         batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                         reduction=reduction)

    def forward(self, logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return dice_loss(logits, truth, weight=self.weight, **self.kwargs)


class TverskyLoss(_LossModule):
    """`tversky_loss` as a module; arguments as there. ``forward(logits, truth)``."""

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, activation: Activation = "softmax",
                 include_background: bool = True, batch: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, reduction: Reduction = "mean") -> None:
        super().__init__(None, alpha=alpha, beta=beta, activation=activation,
                         include_background=include_background, batch=batch,
                         smooth_nr=smooth_nr, smooth_dr=smooth_dr, reduction=reduction)

    def forward(self, logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return tversky_loss(logits, truth, **self.kwargs)


class CrossEntropyLoss(_LossModule):
    """`cross_entropy_loss` as a module (class-weighted); arguments as there."""

    def __init__(self, weight: Weight = None,
                 activation: Literal["softmax", "sigmoid"] = "softmax",
                 reduction: Reduction = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(weight, activation=activation, reduction=reduction,
                         **({"label_smoothing": label_smoothing} if label_smoothing else {}))

    def forward(self, logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(logits, truth, weight=self.weight, **self.kwargs)


class DiceCELoss(_LossModule):
    """`dice_ce_loss` as a module; arguments as there. ``forward(logits, truth)``."""

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, weight: Weight = None,
                 activation: Literal["softmax", "sigmoid"] = "softmax",
                 include_background: bool = True, batch: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, label_smoothing: float = 0.0) -> None:
        super().__init__(weight, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                         activation=activation, include_background=include_background,
                         batch=batch, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                         **({"label_smoothing": label_smoothing} if label_smoothing else {}))

    def forward(self, logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return dice_ce_loss(logits, truth, weight=self.weight, **self.kwargs)


class FocalLoss(_LossModule):
    """`focal_loss` as a module; arguments as there. ``forward(logits, truth)``."""

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None,
                 activation: Literal["softmax", "sigmoid"] = "sigmoid",
                 include_background: bool = True, reduction: Reduction = "mean") -> None:
        super().__init__(None, gamma=gamma, alpha=alpha, activation=activation,
                         include_background=include_background, reduction=reduction)

    def forward(self, logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, truth, **self.kwargs)
