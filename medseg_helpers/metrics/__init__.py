"""Measuring segmentations (notebook 06): overlap metrics (Dice, IoU, confusion counts),
surface distances in mm (HD95, ASD, NSD), voxel-wise curves (ROC, PR, reliability) and
per-case evaluation tables; agreement between annotators and label fusion (notebook 10).
"""

from medseg_helpers.exports import lazy_exports

_EXPORTS = {
    "DiceAccumulator": "overlap",
    "METRICS": "evaluation",
    "StapleResult": "agreement",
    "SurfaceDistances": "surface",
    "VoxelSample": "curves",
    "average_surface_distance": "surface",
    "boundary_metrics": "surface",
    "compute_dice": "overlap",
    "concatenate_samples": "curves",
    "confusion_matrix": "overlap",
    "evaluate_case": "evaluation",
    "fleiss_kappa": "agreement",
    "evaluate_cases": "evaluation",
    "evaluate_folders": "evaluation",
    "format_summary": "evaluation",
    "hausdorff_distance": "surface",
    "majority_vote": "agreement",
    "mask_surface": "surface",
    "overlap_metrics": "overlap",
    "pairwise_dice": "agreement",
    "reliability_curve": "curves",
    "roc_pr_curves": "curves",
    "sample_voxels": "curves",
    "save_metrics_csv": "evaluation",
    "staple": "agreement",
    "summarise_metrics": "evaluation",
    "surface_dice": "surface",
    "surface_distances": "surface",
    "volume_ml": "overlap",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
