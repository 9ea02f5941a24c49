"""Visual review: error maps, contours, the layered slice viewer and the review figures."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from medseg_helpers import viz
from medseg_helpers.data.volume import Volume
from medseg_helpers.metrics.curves import reliability_curve, roc_pr_curves, sample_voxels
from medseg_helpers.viz import review


@pytest.fixture
def case() -> tuple[Volume, Volume, Volume]:
    rng = np.random.default_rng(0)
    truth = np.zeros((5, 20, 24), np.uint8)
    truth[1:4, 4:16, 5:18] = 1
    truth[2, 8:11, 8:11] = 2
    pred = truth.copy()
    pred[2, 8:11, 8] = 1  # part of the lesion missed
    pred[3, 1, 1] = 2  # a false-positive lesion voxel
    image = Volume(rng.normal(size=truth.shape).astype(np.float32), (3.0, 1.0, 0.8))
    return image, Volume(truth, image.spacing_mm), Volume(pred, image.spacing_mm)


def test_error_map_categories() -> None:
    truth = np.array([0, 1, 1, 0, 2])
    pred = np.array([0, 1, 0, 1, 1])
    # class 1: TN, TP, FN, FP, FP (truth 2 predicted 1)
    assert viz.error_map(truth, pred, 1).tolist() == [0, 1, 3, 2, 2]
    assert viz.ERROR_NAMES[2] == "FP" and viz.ERROR_COLORS.shape == (4, 4)
    with pytest.raises(ValueError, match=r"truth \(5,\) and pred \(4,\)"):
        viz.error_map(truth, pred[:4], 1)


def test_contours_use_the_label_colours() -> None:
    label = np.zeros((10, 10), int)
    label[2:5, 2:5], label[6:9, 6:9] = 1, 2
    fig, ax = plt.subplots()
    viz.show_slice(ax, np.zeros((10, 10)))
    viz.show_contours(ax, label)
    colours = [tuple(np.round(c.get_edgecolor()[0][:3], 2)) for c in ax.collections]
    assert colours == [tuple(np.round(viz.LABEL_COLORS[k][:3], 2)) for k in (1, 2)]
    plt.close(fig)


def test_label_legend_names_each_class_in_its_overlay_colour() -> None:
    fig, ax = plt.subplots()
    viz.add_label_legend(ax, ["organ", "lesion"])
    legend = ax.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["organ", "lesion"]
    colours = [tuple(np.round(patch.get_facecolor()[:3], 2)) for patch in legend.get_patches()]
    assert colours == [tuple(np.round(viz.LABEL_COLORS[k][:3], 2)) for k in (1, 2)]
    plt.close(fig)


def test_worst_slice_has_most_errors(case) -> None:
    _, truth, pred = case
    assert review.worst_slice(truth, pred, 2) == 2  # 3 missed lesion voxels vs 1 FP on 3
    assert review.worst_slice(truth, truth, 1) in (1, 2, 3)  # no errors: most truth voxels


def test_slice_viewer_builds_with_layers(case) -> None:
    image, truth, pred = case
    box = viz.slice_viewer(image, truth, pred)
    layer_boxes = box.children[2].children
    assert [b.description for b in layer_boxes] == ["truth", "prediction", "errors"]
    layer_boxes[2].value = True  # redraws as an error map without failing
    box.children[0].children[0].value = "coronal"
    assert box.children[1].max == image.spatial_shape[1] - 1
    assert len(viz.slice_viewer(image).children[2].children) == 0
    plt.close("all")


def test_review_figures_build(case) -> None:
    image, truth, pred = case
    figures = [review.plot_case_review(image, truth, pred, class_index=2, title="x"),
               review.plot_worst_cases([("a", image, truth, pred), ("b", image, truth, truth)],
                                       class_index=2, captions=["Dice 0.5", "Dice 1"]),
               review.plot_confusion_matrix(np.array([[90, 2], [3, 5]]), ["bg", "lesion"])]
    probs = np.stack([truth.array == k for k in range(3)]).astype(np.float32) * 0.8 + 0.2 / 3
    sample = sample_voxels(probs, truth.array)
    figures.append(review.plot_roc_pr({"organ": roc_pr_curves(sample, 1),
                                       "lesion": roc_pr_curves(sample, 2)}))
    figures.append(review.plot_reliability({"top label": reliability_curve(sample)}))
    assert all(isinstance(f, plt.Figure) for f in figures)
    assert len(figures[0].axes) == 5 and len(figures[1].axes) == 6
    with pytest.raises(ValueError, match="no cases"):
        review.plot_worst_cases([], class_index=1)
    plt.close("all")


def test_view_3d_without_itkwidgets_returns_a_message(case, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "itkwidgets", None)  # import fails
    widget = review.view_3d(case[0], case[1])
    assert "itkwidgets is not installed" in widget.value
