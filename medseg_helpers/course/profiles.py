"""Course profiles, whole: sizes and budgets, the course model's recipe, and thresholds.

A *profile* picks sizes and budgets for the whole course:

* ``smoke``: seconds per notebook, for CI and a first look; nothing is learnt well.
* ``cpu``: minutes on a 2-core laptop; models really learn the synthetic task.
* ``gpu``: real training on a downloaded Medical Segmentation Decathlon task.

Notebooks read their defaults from `profile_defaults` inside the papermill
``parameters`` cell, so ``papermill -p SEED 1`` (or any other parameter) still
overrides any one value.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

PROFILE_ENV_VAR = "MEDSEG_PROFILE"
PROFILES = ("smoke", "cpu", "gpu")


@dataclass(frozen=True)
class Profile:
    """Budgets shared by all notebooks for one profile.

    Attributes:
        name: ``smoke`` | ``cpu`` | ``gpu``.
        dataset: ``"synthetic"`` or a Decathlon task name such as ``Task04_Hippocampus``.
        num_cases: synthetic cases to generate (ignored for downloaded tasks).
        volume_shape: synthetic volume shape ``(Z, Y, X)`` in voxels.
        max_epochs: training epochs for the main model of a notebook.
        batch_size: training batch size.
        base_channels: channels of the first U-Net level.
        patch_size_3d: 3D training patch ``(Z, Y, X)``.
        num_trials: hyper-parameter search trials.
        download: whether notebooks may fetch public data.
    """

    name: str
    dataset: str
    num_cases: int
    volume_shape: tuple[int, int, int]
    max_epochs: int
    batch_size: int
    base_channels: int
    patch_size_3d: tuple[int, int, int]
    num_trials: int
    download: bool

    def as_dict(self) -> dict:
        return asdict(self)


_PROFILES = {
    "smoke": Profile("smoke", "synthetic", 8, (16, 64, 64), 1, 8, 8, (16, 32, 32), 2, False),
    "cpu": Profile("cpu", "synthetic", 24, (32, 96, 96), 15, 16, 16, (32, 64, 64), 12, False),
    "gpu": Profile(
        "gpu", "Task04_Hippocampus", 24, (32, 96, 96), 200, 32, 32, (40, 56, 40), 40, True
    ),
}


def get_profile_name(name: str | None = None) -> str:
    """Return ``name`` or ``$MEDSEG_PROFILE`` (default ``smoke``), validated.

    Raises:
        ValueError: for an unknown profile name.
    """
    name = (name or os.environ.get(PROFILE_ENV_VAR) or "smoke").strip().lower()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return name


def profile_defaults(name: str | None = None) -> Profile:
    """The `Profile` for ``name`` (see `get_profile_name`)."""
    return _PROFILES[get_profile_name(name)]


# ------------------------------------------------------------- course model recipes
#: What the course recipe sets on top of `TrainConfig.from_profile`, per profile. All use
#: "batch Dice" without the background class (notebook 04: on a lesion-free slice a
#: per-image lesion Dice loss term, 1 - Dice, is ~1 whatever the prediction, so it only
#: adds a constant) and the U-Net of notebook 03 (depth 3: a 96 px slice has a 12 px
#: bottleneck). ``cpu``: 30 epochs of batch 16 (~540 AdamW steps, about 3 min on 2 idle
#: cores), no augmentation. Measured on the 24-case synthetic MR, split stratified by
#: lesion presence (14 train, 5 validation, 5 test patients): best mean foreground
#: validation Dice 0.863 (organ 0.925, lesion 0.801) at epoch 20, a peak: the epochs
#: around it score 0.73-0.83 and the 5 test patients 0.72 (notebook 06). 15 epochs reach
#: only 0.53 (the lesion is learnt late); with light augmentation 15 epochs gave 0.62.
COURSE_MODEL_COMMON: dict[str, Any] = {"loss_kwargs": {"include_background": False, "batch": True},
                           "model_kwargs": {"depth": 3}}
COURSE_MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "smoke": {},
    "cpu": {"max_epochs": 30, "lr": 3e-3, "warmup_epochs": 1, "empty_slice_fraction": 0.1,
            "augmentation": None},
    "gpu": {"warmup_epochs": 5},
}


# ------------------------------------------------------------- thresholds
#: ``{profile: {notebook: {metric: (">=" | "<=", value)}}}``. A notebook listed here
#: must record every metric named; a missing metric fails the threshold. ``smoke``
#: floors prove a notebook ran; ``cpu`` floors are learning targets on the synthetic
#: data; ``gpu`` floors sit below the published Task04_Hippocampus results (nnU-Net,
#: Isensee et al. 2021: Dice 0.90 anterior / 0.89 posterior, 3D, 1000 epochs), as a
#: 2D U-Net with the gpu profile's 200 epochs is expected to come within a few points.
THRESHOLDS: dict[str, dict[str, dict[str, tuple[str, float]]]] = {
    "smoke": {
        "00_setup": {"num_training_cases": (">=", 1)},
        "05_training": {"epochs": (">=", 1)},
        "06_evaluation": {"num_test_cases": (">=", 1)},
        "07_optimisation": {"trials_run": (">=", 3)},
        "08_export_deploy": {"onnx_max_abs_diff": ("<=", 1e-4),
                             "program_max_abs_diff": ("<=", 1e-4),
                             "service_same_geometry": (">=", 1)},
        "09_explainability": {"test_patients": (">=", 1)},
        "10_common_problems": {"train_steps": (">=", 1)},
    },
    "cpu": {
        "00_setup": {"num_training_cases": (">=", 1)},
        # what notebooks 03 and 04 teach, as measured (batch 8, 300 steps): U-Net 0.87
        # against 0.68 without skips; lesion Dice CE 0.0, Dice without background 0.002
        # (lesion everywhere in the air), Dice + CE 0.59
        "03_unet_from_scratch": {"unet_mean_fg_dice": (">=", 0.8),
                                 "unet_minus_no_skips_dice": (">=", 0.05)},
        "04_losses": {"ce_lesion_dice": ("<=", 0.1), "dice_no_bg_lesion_dice": ("<=", 0.1),
                      "dice_ce_lesion_dice": (">=", 0.3)},
        "05_training": {"best_val_dice": (">=", 0.85)},
        # measured on the 5 test patients: organ 0.936, lesion 0.502, lesion ROC AUC 0.93
        "06_evaluation": {"test_dice_organ": (">=", 0.85), "test_mean_dice": (">=", 0.6),
                          "roc_auc_lesion": (">=", 0.85)},
        "07_optimisation": {"best_trial_dice": (">=", 0.3), "test_dice": (">=", 0.35)},
        "08_export_deploy": {"onnx_max_abs_diff": ("<=", 1e-4),
                             "program_max_abs_diff": ("<=", 1e-4),
                             "service_same_geometry": (">=", 1),
                             "int8_dice_drop": ("<=", 0.02)},
        "09_explainability": {"tta_error_auc": (">=", 0.75),
                              "mc_dropout_error_auc": (">=", 0.7),
                              "gradcam_randomised_rank_corr": ("<=", 0.5)},
        # measured (width 16, 250 steps): full data 0.75 (organ 0.97, lesion 0.54);
        # 80 % of lesions missed in the labels: test lesion Dice 0.0, a gap of 0.54
        "10_common_problems": {"dice_full_data": (">=", 0.6),
                               "clean_minus_noisy_lesion": (">=", 0.15)},
    },
    "gpu": {
        "00_setup": {"num_training_cases": (">=", 1)},
        "05_training": {"best_val_dice": (">=", 0.85)},
    },
}

DEFAULT_TIMEOUT_S = {"smoke": 600, "cpu": 1800, "gpu": 6 * 3600}
