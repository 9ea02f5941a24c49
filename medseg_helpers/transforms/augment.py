"""Data augmentation: albumentations 2.x pipelines for 2D slices, MONAI for 3D patches.

Order: **normalise first, then augment** (`medseg_helpers.transforms.preprocess`). Intensity
augmentation strengths (brightness +-0.1, noise std 0.03) only mean something on a known
scale, and albumentations clips float images to [0, 1] in its pixel transforms
(RandomBrightnessContrast, GaussNoise, ...): a z-scored image would lose every negative
value. So the 2D pipelines take ``image_range="unit"`` (image in [0, 1], e.g. a CT
window or robust min-max) or ``image_range="zscore"``, which swaps those transforms for
`IntensityJitter`, which does not clip.

Masks are moved with the image by the same geometric transforms, always with nearest
interpolation, and every fill value for the mask is a real label (0 = background), so
label values never leave their set (unless you ask for an ignore index in dropout
holes). The 2D pipelines are built with ``strict=True``: a mistyped or removed argument
raises instead of being silently ignored, and so does an unknown data key.

`outline_augmentation` (at the end) reproduces the seed outline's pipeline only to show
what albumentations 2.x does with it; it is not one of the presets.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

#: albumentations asks PyPI for a newer version when imported unless this is "1".
ALBUMENTATIONS_UPDATE_ENV_VAR = "NO_ALBUMENTATIONS_UPDATE"


def skip_albumentations_update_check() -> None:
    """Stop albumentations from contacting PyPI when it is imported.

    albumentations 2.0 checks for a newer release on ``import albumentations`` (a network
    request at every import, and a warning when offline, as on the course's machines)
    unless ``$NO_ALBUMENTATIONS_UPDATE`` is ``1``. This sets it to ``1`` in this process
    unless the user already set it; it only matters before the process's first import of
    albumentations. This module calls it once, just before its own import of
    albumentations, so code that imports albumentations after this module (the course's
    notebooks, tests and `viz.augment_gallery`) never contacts PyPI.
    """
    os.environ.setdefault(ALBUMENTATIONS_UPDATE_ENV_VAR, "1")


skip_albumentations_update_check()
import albumentations as A  # noqa: E402

if TYPE_CHECKING:
    from monai.transforms import Compose as MonaiCompose

PRESETS = ("light", "medium", "heavy")


class IntensityJitter(A.ImageOnlyTransform):
    """``image * scale + shift + noise`` without clipping, for z-scored float32 images.

    ``scale``, ``shift`` and the noise std are drawn uniformly from their ranges;
    the noise is Gaussian, one value per pixel (and channel).

    Args:
        scale_range: multiplicative factor range.
        shift_range: additive offset range, in image units (std units after z-score).
        noise_std_range: Gaussian noise std range, in image units.
        p: probability of applying the transform.
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.9, 1.1),
        shift_range: tuple[float, float] = (-0.1, 0.1),
        noise_std_range: tuple[float, float] = (0.0, 0.05),
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.scale_range = scale_range
        self.shift_range = shift_range
        self.noise_std_range = noise_std_range

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        """Draw scale, shift and a noise map of the image's shape (seeded by Compose)."""
        std = self.py_random.uniform(*self.noise_std_range)
        noise = self.random_generator.standard_normal(params["shape"], dtype=np.float32)
        return {
            "scale": self.py_random.uniform(*self.scale_range),
            "shift": self.py_random.uniform(*self.shift_range),
            "noise": noise * np.float32(std),
        }

    def apply(
        self, img: np.ndarray, scale: float, shift: float, noise: np.ndarray, **params: Any
    ) -> np.ndarray:
        """Apply to one image ``(H, W)`` or ``(H, W, C)`` float32."""
        out = img * np.float32(scale) + np.float32(shift) + noise.reshape(img.shape)
        return out.astype(np.float32, copy=False)


_GEOMETRY = {  # rotate (deg), scale, translate (fraction of size), shear (deg)
    "light": {"rotate": (-10, 10), "scale": (0.9, 1.1), "translate_percent": (-0.05, 0.05)},
    "medium": {"rotate": (-15, 15), "scale": (0.85, 1.15), "translate_percent": (-0.1, 0.1)},
    "heavy": {
        "rotate": (-30, 30),
        "scale": (0.75, 1.25),
        "translate_percent": (-0.1, 0.1),
        "shear": (-5, 5),
    },
}


def _intensity_transforms(preset: str, image_range: str) -> list[A.BasicTransform]:
    strength = {"light": 0.1, "medium": 0.2, "heavy": 0.3}[preset]
    noise = (0.0, 0.02) if preset == "light" else (0.01, 0.05)
    if image_range == "zscore":
        return [
            IntensityJitter(
                scale_range=(1 - strength, 1 + strength),
                shift_range=(-strength, strength),
                noise_std_range=(noise[0] * 4, noise[1] * 4),  # std units, ~4x a [0,1] scale
                p=0.5,
            )
        ]
    transforms: list[A.BasicTransform] = [
        A.RandomBrightnessContrast(brightness_limit=strength, contrast_limit=strength, p=0.5)
    ]
    if preset != "light":
        transforms += [
            A.RandomGamma(gamma_limit=(80, 120), p=0.3),
            A.GaussNoise(std_range=noise, p=0.3),
        ]
    return transforms


def build_2d_augmentation(
    preset: Literal["light", "medium", "heavy"] = "medium",
    *,
    image_range: Literal["unit", "zscore"] = "unit",
    image_fill: float = 0.0,
    dropout_fill_mask: int | None = None,
    seed: int | None = None,
) -> A.Compose:
    """Joint image/mask augmentation for 2D slices (albumentations 2.x).

    Presets (each transform has its own probability):

    * ``light``: horizontal flip; Affine (rotate +-10 deg, scale 0.9-1.1, shift +-5 %);
      brightness/contrast +-0.1.
    * ``medium``: flip; Affine (+-15 deg, 0.85-1.15, +-10 %); brightness/contrast +-0.2,
      gamma 0.8-1.2, Gaussian noise std 0.01-0.05.
    * ``heavy``: flip; Affine (+-30 deg, 0.75-1.25, +-10 %, shear +-5 deg); the medium
      intensity set at +-0.3; ElasticTransform; GridDistortion; CoarseDropout.

    With ``image_range="zscore"`` the intensity transforms are replaced by one
    `IntensityJitter` (scale 1 +- s, shift +- s, noise std 4x the values above, in std
    units), where s is the preset's brightness/contrast limit.

    Args:
        preset: "light", "medium" or "heavy".
        image_range: "unit" for images in [0, 1] (uses albumentations' pixel transforms,
            which clip to [0, 1]); "zscore" for z-scored images (uses `IntensityJitter`).
        image_fill: image value for pixels moved in from outside and for dropout holes
            (0 = black for a [0, 1] image, the mean for a z-scored one).
        dropout_fill_mask: mask value inside CoarseDropout holes. None (default) leaves
            the mask untouched: the anatomy is still there, only hidden, and the network
            learns to infer it from context. Filling with 0 would label hidden organ as
            background (label noise); pass an ignore index (e.g. 255) only if the loss
            ignores it, since it adds a value outside the label set.
        seed: makes the sequence of random draws reproducible (same seed, same outputs).

    Returns:
        An ``A.Compose``; call it as ``pipeline(image=image, mask=mask)``, with
        ``image`` ``(H, W)`` or ``(H, W, C)`` float32 and ``mask`` ``(H, W)`` uint8
        (int64 masks come back as int32). Returns a dict with the same shapes and dtypes.

    Raises:
        ValueError: unknown preset or image_range.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}; got {preset!r}")
    if image_range not in ("unit", "zscore"):
        raise ValueError(f"image_range must be 'unit' or 'zscore'; got {image_range!r}")
    nearest = {
        "interpolation": cv2.INTER_LINEAR,
        "mask_interpolation": cv2.INTER_NEAREST,
        "border_mode": cv2.BORDER_CONSTANT,
        "fill": image_fill,
        "fill_mask": 0,
    }
    transforms: list[A.BasicTransform] = [
        A.HorizontalFlip(p=0.5),
        A.Affine(**_GEOMETRY[preset], **nearest, p=0.7 if preset != "light" else 0.5),
    ]
    transforms += _intensity_transforms(preset, image_range)
    if preset == "heavy":
        transforms += [
            # alpha, sigma in pixels: mean shift ~2-3 px, largest ~8 px in a typical draw
            A.ElasticTransform(alpha=250.0, sigma=10.0, **nearest, p=0.3),
            A.GridDistortion(num_steps=5, distort_limit=(-0.2, 0.2), **nearest, p=0.2),
            A.CoarseDropout(
                num_holes_range=(1, 4),
                hole_height_range=(0.05, 0.15),
                hole_width_range=(0.05, 0.15),
                fill=image_fill,
                fill_mask=dropout_fill_mask,
                p=0.3,
            ),
        ]
    return A.Compose(transforms, strict=True, seed=seed)


def build_3d_augmentation(
    preset: Literal["light", "medium", "heavy"] = "medium",
    keys: tuple[str, str] = ("image", "label"),
    *,
    patch_size: Sequence[int] | None = None,
    num_samples: int = 2,
    pos: float = 1.0,
    neg: float = 1.0,
    seed: int | None = None,
) -> MonaiCompose:
    """MONAI dictionary pipeline for 3D volumes or patches.

    Input: ``{image_key: (C, Z, Y, X) float32 (normalised), label_key: (1, Z, Y, X)
    int}``, numpy or torch. With ``patch_size``, the volume is padded to at least the
    patch and ``num_samples`` patches are drawn with RandCropByPosNegLabeld, centred on a
    foreground voxel with probability ``pos / (pos + neg)`` (a label with no foreground
    makes MONAI warn and draw only negative patches), then augmented:

    * ``light``: flip left-right (X); intensity scale +-10 %.
    * ``medium``: flip X; RandAffined (in-plane rotation +-15 deg, scale +-10 %);
      intensity scale +-10 %; Gaussian noise std 0.05.
    * ``heavy``: flips on all axes; RandAffined (+-30 deg in-plane, +-6 deg out of plane,
      scale +-20 %); intensity scale +-20 %; noise std 0.1.

    RandAffined uses bilinear for the image and nearest for the label, zero padding.

    Args:
        preset: "light", "medium" or "heavy".
        keys: ``(image_key, label_key)``.
        patch_size: ``(Z, Y, X)`` patch, or None to augment the whole volume.
        num_samples: patches per volume (with ``patch_size``).
        pos: weight of patches centred on foreground.
        neg: weight of patches centred on background.
        seed: seeds every random transform (reproducible outputs).

    Returns:
        A ``monai.transforms.Compose``. Called on a dict it returns a dict (no
        ``patch_size``) or a list of ``num_samples`` dicts; image ``torch.float32``, label
        ``torch.int64``, plain tensors, channel-first.

    Raises:
        ValueError: unknown preset.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}; got {preset!r}")
    import torch
    from monai import transforms as mt

    image_key, label_key = keys
    both = [image_key, label_key]
    steps: list[Any] = []
    if patch_size is not None:
        steps += [
            mt.SpatialPadd(keys=both, spatial_size=list(patch_size)),
            mt.RandCropByPosNegLabeld(
                keys=both,
                label_key=label_key,
                spatial_size=list(patch_size),
                pos=pos,
                neg=neg,
                num_samples=num_samples,
            ),
        ]
    flip_axes = (0, 1, 2) if preset == "heavy" else (2,)
    steps += [mt.RandFlipd(keys=both, prob=0.5, spatial_axis=axis) for axis in flip_axes]
    if preset != "light":
        degrees = 30 if preset == "heavy" else 15
        tilt = 6 if preset == "heavy" else 0
        steps.append(
            mt.RandAffined(
                keys=both,
                prob=0.5,
                rotate_range=(np.deg2rad(degrees), np.deg2rad(tilt), np.deg2rad(tilt)),
                scale_range=0.2 if preset == "heavy" else 0.1,
                mode=("bilinear", "nearest"),
                padding_mode=("zeros", "zeros"),
            )
        )
        steps.append(
            mt.RandGaussianNoised(keys=image_key, prob=0.3, std=0.1 if preset == "heavy" else 0.05)
        )
    steps += [
        mt.RandScaleIntensityd(keys=image_key, factors=0.2 if preset == "heavy" else 0.1, prob=0.5),
        mt.EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=False),
        mt.EnsureTyped(keys=label_key, dtype=torch.int64, track_meta=False),
    ]
    pipeline = mt.Compose(steps)
    if seed is not None:
        pipeline.set_random_state(seed=seed)
    return pipeline


def preset_flips(preset: str | None, spatial_dims: int) -> list[tuple[int, ...]]:
    """The flips a model trained with ``preset`` has seen, as tensor dims of ``(B, C, *S)``.

    Test-time augmentation should only use transforms the model was trained with (a flip it
    never saw makes its predictions disagree for a reason that is not uncertainty). Every
    2D preset flips left-right only (W, dim 3); the 3D presets flip X (dim 4), ``heavy``
    every axis. ``()`` (no flip) comes first.

    Args:
        preset: ``None`` (no augmentation: no flip), ``"light"``, ``"medium"``, ``"heavy"``.
        spatial_dims: 2 or 3.

    Returns:
        E.g. ``[(), (3,)]`` for any 2D preset; pass to `explain.uncertainty.tta_samples`.

    Raises:
        ValueError: unknown preset or ``spatial_dims``.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset must be None or one of {PRESETS}; got {preset!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims}")
    if preset is None:
        return [()]
    if spatial_dims == 3 and preset == "heavy":
        axes = (2, 3, 4)
        return [c for r in range(4) for c in itertools.combinations(axes, r)]
    return [(), (1 + spatial_dims,)]


# ------------------------------------------------------------------------------------
# The seed outline's pipeline: reproduced to show what goes wrong. Not a preset.


def outline_augmentation(rename_gaussian_noise: bool = True) -> A.Compose:
    """The seed outline's albumentations pipeline, as albumentations 2.x runs it.

    Do not train with it. It exists so notebook 02 can show, cell by cell:

    * ``A.GaussianNoise`` does not exist: with ``rename_gaussian_noise=False`` building
      raises ``AttributeError``. Renamed to ``GaussNoise``, it builds, but:
    * ``ShiftScaleRotate`` warns to use ``Affine``;
    * ``var_limit`` (GaussNoise), ``alpha_affine`` (ElasticTransform) and
      ``max_holes/max_height/max_width`` (CoarseDropout) are ignored with a
      ``UserWarning``, so GaussNoise runs with its default std 0.2-0.44 (much stronger
      than intended) and CoarseDropout with its default holes;
    * ``ElasticTransform(alpha=1, sigma=50)`` moves pixels by ~0.01 px: a costly no-op;
    * ``Rotate(limit=90)`` plus flips is far from plausible anatomy.

    Args:
        rename_gaussian_noise: use ``A.GaussNoise`` where the outline wrote
            ``A.GaussianNoise``.

    Returns:
        An ``A.Compose`` ending in ``ToTensorV2`` (image ``(1, H, W)`` tensor).

    Raises:
        AttributeError: if ``rename_gaussian_noise`` is False.
    """
    from albumentations.pytorch import ToTensorV2

    noise_cls = A.GaussNoise if rename_gaussian_noise else A.GaussianNoise
    return A.Compose(
        [
            A.Rotate(limit=90, p=0.5),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.ShiftScaleRotate(shift_limit=0.1, scale_limit=0.1, rotate_limit=10, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            noise_cls(var_limit=(0.01, 0.05), p=0.5),
            A.ElasticTransform(alpha=1.0, sigma=50.0, alpha_affine=50.0, p=0.5),
            A.GridDistortion(p=0.5),
            A.CoarseDropout(max_holes=8, max_height=8, max_width=8, p=0.5),
            ToTensorV2(),
        ]
    )
