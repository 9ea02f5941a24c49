"""Figures used across the course: slices with label overlays and contours, error maps,
attribution heat maps, the slice browser, worst-case review montages and the
augmentation gallery.
"""

from medseg_helpers.exports import lazy_exports

_EXPORTS = {
    "ERROR_COLORS": "slices",
    "ERROR_NAMES": "slices",
    "LABEL_COLORS": "slices",
    "VIEWS": "slices",
    "add_label_legend": "slices",
    "error_legend": "review",
    "error_map": "slices",
    "extract_view": "slices",
    "label_cmap": "slices",
    "measure_images_per_second": "augment_gallery",
    "plot_augmentation_gallery": "augment_gallery",
    "plot_case_review": "review",
    "plot_confusion_matrix": "review",
    "plot_orthogonal": "slices",
    "plot_reliability": "review",
    "plot_roc_pr": "review",
    "plot_worst_cases": "review",
    "save_figure": "slices",
    "show_contours": "slices",
    "show_errors": "slices",
    "show_heatmap": "slices",
    "show_slice": "slices",
    "slice_viewer": "slices",
    "split_transforms": "augment_gallery",
    "view_3d": "review",
    "worst_slice": "review",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
