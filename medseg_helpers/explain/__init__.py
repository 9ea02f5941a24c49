"""Explaining and doubting predictions (notebook 09): Grad-CAM, occlusion, LIME
superpixels, and uncertainty from test-time augmentation and MC dropout.
"""

from medseg_helpers.exports import lazy_exports

_EXPORTS = {
    "LimeResult": "methods",
    "RegionScore": "methods",
    "UncertaintyMaps": "uncertainty",
    "default_target_layer": "methods",
    "error_detection_auc": "uncertainty",
    "eval_mode": "methods",
    "flip_combinations": "uncertainty",
    "grad_cam": "methods",
    "lime_superpixels": "methods",
    "mc_dropout": "uncertainty",
    "mc_dropout_samples": "uncertainty",
    "occlusion_sensitivity": "methods",
    "predictive_entropy": "uncertainty",
    "rank_correlation": "methods",
    "region_score": "methods",
    "reinitialised_copy": "methods",
    "resolve_layer": "methods",
    "show_heatmap": "methods",
    "summarise_samples": "uncertainty",
    "tta_samples": "uncertainty",
    "uncertainty_error_dice": "uncertainty",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
