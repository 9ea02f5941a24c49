"""Explaining and doubting predictions (notebook 09): Grad-CAM, occlusion, LIME
superpixels with their sanity checks, and uncertainty from test-time augmentation and MC
dropout.
"""

from medseg_helpers.exports import lazy_exports

_EXPORTS = {
    "LimeResult": "lime",
    "RegionScore": "targets",
    "UncertaintyMaps": "uncertainty",
    "check_image_batch": "targets",
    "default_target_layer": "gradcam",
    "error_detection_auc": "uncertainty",
    "eval_mode": "targets",
    "flip_combinations": "uncertainty",
    "grad_cam": "gradcam",
    "lime_superpixels": "lime",
    "mc_dropout": "uncertainty",
    "mc_dropout_samples": "uncertainty",
    "occlusion_sensitivity": "occlusion",
    "predictive_entropy": "uncertainty",
    "rank_correlation": "sanity",
    "region_score": "targets",
    "reinitialised_copy": "sanity",
    "resolve_layer": "gradcam",
    "summarise_samples": "uncertainty",
    "target_region": "targets",
    "tta_samples": "uncertainty",
    "uncertainty_error_dice": "uncertainty",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
