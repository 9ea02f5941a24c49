"""Looking at volumes: orthogonal views, label overlays and an interactive slice viewer.

All views expect a `Volume` in LPS orientation (``geometry.reorient_to(volume, "LPS")``)
and display it the radiological way: axial slices with the patient's right on the
left of the screen and anterior at the top; coronal and sagittal slices with
superior at the top. Pixel aspect comes from the spacing, so thick slices are not
squashed. Label colours are the same in every notebook (`LABEL_COLORS`).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.image import AxesImage

from medseg_helpers.data.volume import Volume
from medseg_helpers.paths import get_run_dir

#: RGBA per label value; 0 (background) is transparent. Used by every course figure.
LABEL_COLORS = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],  # 0 background
        [0.13, 0.59, 0.95, 1.0],  # 1 organ: blue
        [1.0, 0.34, 0.13, 1.0],  # 2 lesion: orange-red
        [0.30, 0.69, 0.31, 1.0],  # 3 green
        [0.61, 0.15, 0.69, 1.0],  # 4 purple
        [1.0, 0.92, 0.23, 1.0],  # 5 yellow
    ]
)
VIEWS = ("axial", "coronal", "sagittal")

#: RGBA of the error-map categories of `error_map`: 0 nothing, 1 true positive (faint
#: white), 2 false positive (magenta), 3 false negative (yellow). Magenta and yellow stay
#: distinct for the common colour-vision deficiencies and from the label colours.
ERROR_COLORS = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],  # 0 true negative: transparent
        [1.0, 1.0, 1.0, 0.35],  # 1 true positive: faint white
        [0.91, 0.12, 0.75, 1.0],  # 2 false positive: magenta
        [1.0, 0.84, 0.0, 1.0],  # 3 false negative: yellow
    ]
)
ERROR_NAMES = ("TN", "TP", "FP", "FN")


def label_cmap(num_classes: int | None = None) -> ListedColormap:
    """Colormap giving label ``k`` the colour ``LABEL_COLORS[k]`` (background transparent)."""
    colors = LABEL_COLORS if num_classes is None else LABEL_COLORS[:num_classes]
    return ListedColormap(colors)


def add_label_legend(ax: plt.Axes, class_names: list[str], loc: str = "lower right",
                     fontsize: float = 8) -> None:
    """Add a legend naming the overlay colours: ``class_names[k - 1]`` for label ``k``.

    Args:
        class_names: names of the foreground classes, label 1 first (as in
            ``dataset.json`` without the background), e.g. ``["organ", "lesion"]``.
    """
    from matplotlib.patches import Patch

    handles = [Patch(color=LABEL_COLORS[k % len(LABEL_COLORS)], label=name)
               for k, name in enumerate(class_names, start=1)]
    ax.legend(handles=handles, loc=loc, fontsize=fontsize, framealpha=0.8)


def extract_view(volume: Volume, view: str, index: int | None = None) -> tuple[np.ndarray, float]:
    """One 2D slice of a 3D volume ready for ``imshow`` and its pixel aspect.

    Args:
        volume: 3D `Volume` ``(Z, Y, X)`` in LPS orientation.
        view: ``"axial"`` | ``"coronal"`` | ``"sagittal"``.
        index: slice index along the view's axis; default the middle slice.

    Returns:
        ``(image, aspect)``: image rows top-to-bottom as displayed, aspect = row
        spacing / column spacing (pass to ``imshow(aspect=...)``).
    """
    if volume.array.ndim != 3:
        raise ValueError(f"extract_view needs a 3D volume; got shape {volume.array.shape}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}; got {view!r}")
    sz, sy, sx = volume.spacing_mm
    axis = VIEWS.index(view)
    size = volume.array.shape[axis]
    index = size // 2 if index is None else index
    if not 0 <= index < size:
        raise IndexError(f"{view} slice {index} out of range [0, {size})")
    if view == "axial":
        return volume.array[index], sy / sx
    if view == "coronal":
        return volume.array[::-1, index, :], sz / sx
    return volume.array[::-1, :, index], sz / sy


def show_slice(
    ax: plt.Axes,
    image: np.ndarray,
    label: np.ndarray | None = None,
    aspect: float = 1.0,
    alpha: float = 0.45,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    """Draw a grey image with an optional filled label overlay on ``ax``.

    Args:
        image: ``(H, W)`` intensities; displayed between ``vmin`` and ``vmax``
            (default: 1st and 99th percentiles, robust to a few bright voxels).
        label: ``(H, W)`` integer labels, or None.
    """
    if vmin is None or vmax is None:
        low, high = np.percentile(image, [1, 99])
        vmin = low if vmin is None else vmin
        vmax = high if vmax is None else vmax
    ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
    if label is not None:
        cmap = label_cmap()
        ax.imshow(
            np.ma.masked_equal(label, 0), cmap=cmap, vmin=0, vmax=cmap.N - 1,
            alpha=alpha, aspect=aspect, interpolation="nearest",
        )  # fmt: skip
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def show_contours(
    ax: plt.Axes, label: np.ndarray, classes: list[int] | None = None, linewidth: float = 1.5,
    linestyle: str = "solid",
) -> None:
    """Outline each class of a ``(H, W)`` label map in its `LABEL_COLORS` colour.

    Draw on an axes that already shows the image (``show_slice``); outlines follow the
    pixel edges' midpoints. ``classes`` default: every non-zero label present.
    """
    label = np.asarray(label)
    classes = classes if classes is not None else [int(c) for c in np.unique(label) if c != 0]
    for c in classes:
        mask = (label == c).astype(float)
        if mask.any():
            ax.contour(mask, levels=[0.5], colors=[LABEL_COLORS[c % len(LABEL_COLORS)]],
                       linewidths=linewidth, linestyles=linestyle)


def error_map(truth: np.ndarray, pred: np.ndarray, class_index: int) -> np.ndarray:
    """Categories of one class's errors: 0 TN, 1 TP, 2 FP, 3 FN (colours `ERROR_COLORS`).

    Args:
        truth: integer labels, any shape.
        pred: integer labels, same shape.
        class_index: the class scored (one-vs-rest).

    Returns:
        uint8 array of the same shape.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and pred {pred.shape} do not have the same shape")
    t, p = truth == class_index, pred == class_index
    out = np.zeros(truth.shape, np.uint8)
    out[t & p], out[~t & p], out[t & ~p] = 1, 2, 3
    return out


def show_errors(
    ax: plt.Axes, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, class_index: int,
    aspect: float = 1.0, title: str | None = None,
) -> None:
    """Grey image with one class's true positives, false positives and false negatives."""
    show_slice(ax, image, aspect=aspect, title=title)
    ax.imshow(error_map(truth, pred, class_index), cmap=ListedColormap(ERROR_COLORS), vmin=0,
              vmax=len(ERROR_COLORS) - 1, aspect=aspect, interpolation="nearest")


def show_heatmap(
    ax: plt.Axes, image: np.ndarray, heat: np.ndarray, label: np.ndarray | None = None,
    title: str | None = None, alpha: float = 0.5, cmap: str = "inferno",
    vmin: float | None = None, vmax: float | None = None, contour: bool = True,
) -> AxesImage:
    """Draw a grey ``(H, W)`` image, a heat map over it (e.g. Grad-CAM, occlusion or LIME
    from `medseg_helpers.explain`) and the label's outline.

    Args:
        image: ``(H, W)`` intensities (shown by `show_slice`).
        heat: ``(H, W)`` map; transparent below 5 % of its range so the anatomy shows.
        label: ``(H, W)`` integer labels drawn as outlines in `LABEL_COLORS`, or None.
        vmin, vmax: colour range of ``heat``; default its min and max. Use a diverging
            ``cmap`` (``"RdBu_r"``) with ``vmin=-vmax`` for signed maps.
        contour: draw the label's outline.

    Returns:
        the heat map's ``AxesImage`` (for ``fig.colorbar``).
    """
    show_slice(ax, image, title=title)
    heat = np.asarray(heat, dtype=np.float64)
    vmin = float(heat.min()) if vmin is None else vmin
    vmax = float(heat.max()) if vmax is None else vmax
    faint = np.abs(heat) < 0.05 * max(abs(vmin), abs(vmax), 1e-12)
    shown = ax.imshow(np.ma.masked_where(faint, heat), cmap=cmap, vmin=vmin, vmax=vmax,
                      alpha=alpha, interpolation="nearest")
    if label is not None and contour:
        show_contours(ax, label, linewidth=1.0)
    return shown


def plot_orthogonal(
    image: Volume, label: Volume | None = None, index: tuple[int, int, int] | None = None,
    class_names: list[str] | None = None,
) -> plt.Figure:
    """Axial, coronal and sagittal slices through ``index`` (default: the centre); with
    ``class_names`` (foreground, label 1 first) the last view gets a colour legend."""
    index = index or tuple(s // 2 for s in image.spatial_shape)
    vmin, vmax = np.percentile(image.array, [1, 99])
    fig, axes = plt.subplots(1, 3, figsize=(11, 4), constrained_layout=True)
    for ax, view, i in zip(axes, VIEWS, index, strict=True):
        slice_2d, aspect = extract_view(image, view, i)
        label_2d = extract_view(label, view, i)[0] if label is not None else None
        show_slice(ax, slice_2d, label_2d, aspect, title=f"{view} {i}", vmin=vmin, vmax=vmax)
    if class_names:
        add_label_legend(axes[-1], class_names)
    return fig


def slice_viewer(image: Volume, truth: Volume | None = None, pred: Volume | None = None,
                 class_index: int | None = None):
    """An ipywidgets viewer: view, slice, overlay opacity and layers.

    Args:
        image: the scan (LPS, see `extract_view`).
        truth: ground truth, drawn filled.
        pred: a prediction on the same grid, drawn as outlines (or as an error map of
            ``class_index`` when the "errors" layer is on).
        class_index: class of the error map; default the highest class in ``truth``.

    Returns:
        the widget box; display it as the last expression of a cell.
    """
    import ipywidgets as widgets

    vmin, vmax = np.percentile(image.array, [1, 99])
    view = widgets.ToggleButtons(options=VIEWS, value="axial", description="view")
    index = widgets.IntSlider(
        value=image.spatial_shape[0] // 2, min=0, max=image.spatial_shape[0] - 1,
        description="slice", continuous_update=False,
    )  # fmt: skip
    alpha = widgets.FloatSlider(value=0.45, min=0.0, max=1.0, step=0.05, description="overlay")
    layers = {name: widgets.Checkbox(value=name != "errors", description=name, indent=False)
              for name, volume in (("truth", truth), ("prediction", pred), ("errors", pred))
              if volume is not None}
    if "errors" in layers and truth is None:
        del layers["errors"]
    if class_index is None and truth is not None:
        class_index = int(truth.array.max())
    output = widgets.Output()

    def layer(volume: Volume | None, name: str) -> np.ndarray | None:
        box = layers.get(name)
        if volume is None or box is None or not box.value:
            return None
        return extract_view(volume, view.value, index.value)[0]

    def redraw(*_) -> None:
        slice_2d, aspect = extract_view(image, view.value, index.value)
        truth_2d, pred_2d = layer(truth, "truth"), layer(pred, "prediction")
        errors = layers.get("errors") is not None and layers["errors"].value
        with output:
            output.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(5, 5))
            if errors:
                show_errors(ax, slice_2d, extract_view(truth, view.value, index.value)[0],
                            extract_view(pred, view.value, index.value)[0], class_index,
                            aspect, f"{view.value} {index.value}: errors, class {class_index}")
            else:
                show_slice(ax, slice_2d, truth_2d, aspect, alpha.value,
                           f"{view.value} {index.value}", vmin, vmax)
                if pred_2d is not None:
                    show_contours(ax, pred_2d)
            plt.show()

    def on_view(change) -> None:
        size = image.spatial_shape[VIEWS.index(change["new"])]
        index.max, index.value = size - 1, size // 2
        redraw()

    view.observe(on_view, names="value")
    for control in (index, alpha, *layers.values()):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([view, alpha]), index,
                         widgets.HBox(list(layers.values())), output])


def save_figure(
    fig: plt.Figure, notebook: str, name: str, run_dir: str | os.PathLike | None = None
) -> Path:
    """Save ``fig`` as ``<run dir>/figures/<notebook>_<name>.png`` (150 dpi) and return it.

    The course report embeds every figure saved this way.
    """
    path = get_run_dir(run_dir) / "figures" / f"{notebook}_{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
