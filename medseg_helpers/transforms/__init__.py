"""Array transforms (notebooks 01, 02 and 06): intensity preprocessing and resampling,
cropping, augmentation pipelines, label-map utilities, post-processing of predicted
masks, and the controlled label noise of notebook 10.
"""

from medseg_helpers.exports import lazy_exports

_EXPORTS = {
    "ALBUMENTATIONS_UPDATE_ENV_VAR": "augment",
    "CropBox": "cropping",
    "IntensityJitter": "augment",
    "LabelNoise": "label_noise",
    "NOISE_KINDS": "label_noise",
    "PRESETS": "augment",
    "PadWidths": "cropping",
    "WINDOW_PRESETS": "preprocess",
    "apply_crop": "cropping",
    "apply_ct_window": "preprocess",
    "build_2d_augmentation": "augment",
    "build_3d_augmentation": "augment",
    "check_label_values": "labels",
    "clip_percentiles": "preprocess",
    "compute_foreground_box": "cropping",
    "corrupt_slices": "label_noise",
    "count_label_values": "labels",
    "crop_to_foreground": "cropping",
    "decode_one_hot": "labels",
    "drop_components": "label_noise",
    "encode_one_hot": "labels",
    "keep_largest_component": "postprocess",
    "largest_component_mask": "postprocess",
    "naive_max_normalise": "preprocess",
    "normalise_minmax": "preprocess",
    "normalise_zscore": "preprocess",
    "outline_augmentation": "augment",
    "pad_to_multiple": "cropping",
    "pad_to_shape": "cropping",
    "perturb_boundary": "label_noise",
    "preset_flips": "augment",
    "remap_labels": "labels",
    "remove_small_components": "labels",
    "resample_to_spacing": "preprocess",
    "resampled_shape": "preprocess",
    "skip_albumentations_update_check": "augment",
    "undo_crop": "cropping",
    "undo_pad": "cropping",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
