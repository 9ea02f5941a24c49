"""Figures for reviewing a segmentation model: cases, worst cases, ROC/PR, calibration.

Every figure uses the course colours (`viz.LABEL_COLORS` for classes, `viz.ERROR_COLORS`
for true positives, false positives and false negatives) and returns the matplotlib
``Figure`` (save it with `viz.save_figure`). Slices are axial (``array[z]``) with the
pixel aspect from the spacing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from medseg_helpers.data.volume import Volume
from medseg_helpers.viz.slices import (
    ERROR_COLORS,
    LABEL_COLORS,
    show_contours,
    show_errors,
    show_slice,
)

logger = logging.getLogger(__name__)

__all__ = [
    "error_legend",
    "plot_case_review",
    "plot_confusion_matrix",
    "plot_reliability",
    "plot_roc_pr",
    "plot_worst_cases",
    "view_3d",
    "worst_slice",
]


def _array(volume: Volume | np.ndarray) -> np.ndarray:
    return volume.array if isinstance(volume, Volume) else np.asarray(volume)


def worst_slice(truth: Volume | np.ndarray, pred: Volume | np.ndarray, class_index: int) -> int:
    """Axial slice with the most errors (FP + FN) of a class; without errors, the slice
    with the most voxels of the class, else of any foreground class.

    Args:
        truth, pred: ``(Z, Y, X)`` label maps.
        class_index: the class reviewed.
    """
    t, p = _array(truth) == class_index, _array(pred) == class_index
    for counts in ((t ^ p).sum(axis=(1, 2)), t.sum(axis=(1, 2)),
                   (_array(truth) > 0).sum(axis=(1, 2))):
        if counts.any():
            return int(counts.argmax())
    return _array(truth).shape[0] // 2


def error_legend(ax: plt.Axes, **kwargs: Any) -> None:
    """A legend for `viz.show_errors` (TP, FP, FN patches), each swatch as its colour
    looks over dark tissue (grey 0.3: the faint true-positive white shows as grey)."""
    names = ("true positive", "false positive", "false negative")
    rgb, alpha = ERROR_COLORS[:, :3], ERROR_COLORS[:, 3:]
    seen = alpha * rgb + (1 - alpha) * 0.3
    handles = [Patch(facecolor=seen[i], edgecolor="0.4", label=n)
               for i, n in enumerate(names, 1)]
    options = {"loc": "upper center", "bbox_to_anchor": (0.5, 0.0), "ncols": 3,
               "fontsize": 7, "frameon": False, "handlelength": 1.0, "columnspacing": 0.8}
    ax.legend(handles=handles, **{**options, **kwargs})


def plot_case_review(image: Volume, truth: Volume | np.ndarray, pred: Volume | np.ndarray,
                     class_index: int, index: int | None = None, title: str | None = None,
                     class_name: str | None = None) -> plt.Figure:
    """One axial slice, four ways: image, truth (filled), prediction (filled), and truth
    filled with the prediction outlined, plus the error map of ``class_index``.

    Args:
        image: the scan ``(Z, Y, X)`` (its spacing sets the aspect).
        truth, pred: label maps on the image's grid.
        class_index: class of the error map.
        index: axial slice; default `worst_slice`.
        title: figure title.
        class_name: name of ``class_index`` for the error map's title.
    """
    t, p = _array(truth), _array(pred)
    z = worst_slice(t, p, class_index) if index is None else index
    aspect = image.spacing_mm[1] / image.spacing_mm[2]
    img = image.array[z] if image.array.ndim == 3 else image.array[0, z]
    vmin, vmax = np.percentile(img, [1, 99])
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.6), layout="compressed")
    show_slice(axes[0], img, aspect=aspect, title=f"image, slice {z}", vmin=vmin, vmax=vmax)
    show_slice(axes[1], img, t[z], aspect, title="ground truth", vmin=vmin, vmax=vmax)
    show_slice(axes[2], img, p[z], aspect, title="prediction", vmin=vmin, vmax=vmax)
    show_slice(axes[3], img, t[z], aspect, alpha=0.35, title="truth filled, prediction outlined",
               vmin=vmin, vmax=vmax)
    show_contours(axes[3], p[z])
    show_errors(axes[4], img, t[z], p[z], class_index, aspect,
                f"errors: {class_name or f'class {class_index}'}")
    error_legend(axes[4])
    if title:  # above the panel titles (the layout engine does not move fixed-aspect images)
        fig.suptitle(title, y=1.08)
    return fig


def plot_worst_cases(cases: Sequence[tuple[str, Volume, Any, Any]], class_index: int,
                     captions: Sequence[str] | None = None) -> plt.Figure:
    """A montage, one row per case: truth, prediction and error map on its worst slice.

    Args:
        cases: ``(case_id, image, truth, pred)`` in the order to show (worst first).
        class_index: class whose errors choose the slice and fill the error map.
        captions: one line per case (e.g. ``"Dice 0.41, HD95 12 mm"``).
    """
    if not cases:
        raise ValueError("no cases to show")
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False,
                             constrained_layout=True)
    for row, (case_id, image, truth, pred) in enumerate(cases):
        t, p = _array(truth), _array(pred)
        z = worst_slice(t, p, class_index)
        img = image.array[z] if image.array.ndim == 3 else image.array[0, z]
        aspect = image.spacing_mm[1] / image.spacing_mm[2]
        caption = f"{case_id} (slice {z})" + (f"\n{captions[row]}" if captions else "")
        show_slice(axes[row, 0], img, t[z], aspect, title=f"{caption}\nground truth")
        show_slice(axes[row, 1], img, p[z], aspect, title="prediction")
        show_errors(axes[row, 2], img, t[z], p[z], class_index, aspect, "errors")
    error_legend(axes[0, 2])
    return fig


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> plt.Figure:
    """Voxel confusion matrix: counts and, in colour, each row normalised (recall per class).

    Args:
        matrix: ``(K, K)`` counts, rows = truth, columns = prediction
            (`metrics.confusion_matrix`).
        class_names: ``K`` names.
    """
    matrix = np.asarray(matrix)
    with np.errstate(invalid="ignore"):
        rates = matrix / matrix.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(1.6 * len(class_names) + 1.5, 1.4 * len(class_names) + 1))
    shown = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if rates[i, j] > 0.5 else "black"
        ax.text(j, i, f"{rates[i, j]:.1%}\n{count:,}", ha="center", va="center", color=colour,
                fontsize=8)
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
           xticklabels=class_names, yticklabels=class_names, xlabel="predicted class",
           ylabel="true class", title="voxel confusion matrix (row %)")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class")
    return fig


def _colours(names: Sequence[str], colors: Mapping[str, Any] | None) -> list[Any]:
    """``colors[name]``, else `LABEL_COLORS` in order (first name = label 1)."""
    colors = colors or {}
    return [colors.get(n, LABEL_COLORS[k % len(LABEL_COLORS)][:3])
            for k, n in enumerate(names, start=1)]


def plot_roc_pr(curves: Mapping[str, Mapping[str, Any]],
                colors: Mapping[str, Any] | None = None) -> plt.Figure:
    """ROC and precision-recall curves, one line per class.

    Args:
        curves: ``{class_name: voxel_curves.roc_pr_curves(...)}``.
        colors: matplotlib colour per name; default `LABEL_COLORS` in the order of
            ``curves`` (first = label 1).
    """
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for colour, (name, c) in zip(_colours(list(curves), colors), curves.items(), strict=True):
        roc.plot(c["fpr"], c["tpr"], color=colour, label=f"{name} (AUC {c['roc_auc']:.5g})")
        pr.plot(c["recall"], c["precision"], color=colour, drawstyle="steps-post",
                label=f"{name} (AP {c['average_precision']:.3f})")
        pr.axhline(c["prevalence"], color=colour, linestyle=":", linewidth=1)
    roc.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    roc.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate",
            title="ROC (voxels)", xlim=(0, 1), ylim=(0, 1.01))
    pr.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title="precision-recall (dotted: prevalence)")
    roc.legend(fontsize=8, loc="lower right")
    pr.legend(fontsize=8, loc="lower left")
    return fig


def plot_reliability(curves: Mapping[str, Mapping[str, Any]],
                     colors: Mapping[str, Any] | None = None) -> plt.Figure:
    """Reliability diagram: observed frequency against predicted probability, per curve.

    Args:
        curves: ``{name: voxel_curves.reliability_curve(...)}``.
        colors: as in `plot_roc_pr`.
    """
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True,
                                   constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for colour, (name, c) in zip(_colours(list(curves), colors), curves.items(), strict=True):
        filled = ~np.isnan(c["frequency"])
        ax.plot(c["confidence"][filled], c["frequency"][filled], "o-", color=colour,
                label=f"{name} (ECE {c['ece']:.2g})")
        centres = (c["edges"][:-1] + c["edges"][1:]) / 2
        hist.bar(centres, c["weight"], width=np.diff(c["edges"]), color=colour, alpha=0.5)
    ax.set(ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title="reliability diagram")
    ax.legend(fontsize=8, loc="lower right")
    hist.set(xlabel="predicted probability", ylabel="share of voxels", yscale="log",
             ylim=(1e-5, 1.5))
    return fig


def view_3d(image: Volume, label: Volume | None = None) -> Any:
    """An interactive 3D view with itkwidgets if that optional extra is installed.

    itkwidgets does not fit in the course environment (installing it downgrades ipywidgets
    and pydantic); install it in its own environment to use this.

    Returns:
        the itkwidgets viewer, or an ``ipywidgets.HTML`` message saying how to get one.
    """
    try:
        from itkwidgets import view
    except ImportError:
        import ipywidgets as widgets

        message = ("3D view skipped: itkwidgets is not installed (it conflicts with this "
                   "environment's ipywidgets). In a separate environment: "
                   "<code>pip install 'itkwidgets[notebook]'</code>.")
        logger.info("itkwidgets not installed; 3D view skipped")
        return widgets.HTML(message)
    return view(image=image.array, label_image=None if label is None else label.array)
