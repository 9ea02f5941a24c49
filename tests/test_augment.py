"""Tests for medseg_helpers.transforms.augment.

Run with ``pytest -W error::UserWarning tests/test_augment.py``: the recommended
pipelines must not trigger albumentations' "argument ignored" or deprecation warnings.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from medseg_helpers.transforms import augment as aug

LABEL_SET = {0, 1, 2}
PRESET_RANGES = [(p, r) for p in aug.PRESETS for r in ("unit", "zscore")]


def _pair(image_range: str = "unit", size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Off-centre bright rectangle (class 1) with a smaller class-2 core, matching mask."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[10:34, 8:44] = 1
    mask[18:26, 20:30] = 2
    image = np.where(mask > 0, 0.9, 0.1).astype(np.float32)
    if image_range == "zscore":
        image = (image - image.mean()) / image.std()
    return image, mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _bright(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels brighter than halfway between the mean inside and outside the mask."""
    inside, outside = image[mask > 0], image[mask == 0]
    if inside.size == 0 or outside.size == 0:
        return mask > 0
    return image > (inside.mean() + outside.mean()) / 2


@pytest.mark.parametrize(("preset", "image_range"), PRESET_RANGES)
def test_2d_outputs_keep_dtype_shape_and_label_set(preset, image_range):
    pipeline = aug.build_2d_augmentation(preset, image_range=image_range, seed=0)
    image, mask = _pair(image_range)
    for _ in range(40):
        out = pipeline(image=image, mask=mask)
        assert out["image"].shape == image.shape and out["image"].dtype == np.float32
        assert out["mask"].shape == mask.shape and out["mask"].dtype == np.uint8
        assert set(np.unique(out["mask"]).tolist()) <= LABEL_SET
        assert np.isfinite(out["image"]).all()
        if image_range == "unit":
            assert out["image"].min() >= 0 and out["image"].max() <= 1


@pytest.mark.parametrize(("preset", "image_range"), PRESET_RANGES)
def test_2d_geometry_moves_image_and_mask_together(preset, image_range):
    pipeline = aug.build_2d_augmentation(preset, image_range=image_range, seed=1)
    image, mask = _pair(image_range)
    together, against_original = [], []
    for _ in range(40):
        out = pipeline(image=image, mask=mask)
        bright = _bright(out["image"], out["mask"])
        together.append(_iou(bright, out["mask"] > 0))
        against_original.append(_iou(bright, mask > 0))
    # CoarseDropout (heavy) can hide part of the rectangle in the image only
    assert np.median(together) > 0.95 and min(together) > 0.6
    # control: the augmented image no longer lines up with the un-augmented mask
    assert np.median(against_original) < np.median(together) - 0.05


def test_2d_moves_every_channel_as_it_moves_a_single_channel_image():
    # The geometry drawn for a seed does not depend on the channel count: a two-channel
    # run gives the one-channel run's mask, and each channel's bright region follows it.
    image, mask = _pair()
    single = aug.build_2d_augmentation("heavy", seed=0)
    multi = aug.build_2d_augmentation("heavy", seed=0)
    for _ in range(5):
        one = single(image=image, mask=mask)
        stacked = np.stack([image, 0.5 * image + 0.25], axis=-1)  # (H, W, C), other contrast
        two = multi(image=stacked, mask=mask)
        assert two["image"].shape == (64, 64, 2) and two["image"].dtype == np.float32
        np.testing.assert_array_equal(two["mask"], one["mask"])
        for channel in (two["image"][..., 0], two["image"][..., 1]):
            assert _iou(_bright(channel, two["mask"]), two["mask"] > 0) > 0.6


@pytest.mark.parametrize("preset", aug.PRESETS)
def test_2d_same_seed_same_outputs(preset):
    image, mask = _pair()
    runs = []
    for seed in (5, 5, 6):
        pipeline = aug.build_2d_augmentation(preset, seed=seed)
        runs.append([pipeline(image=image, mask=mask) for _ in range(5)])
    for a, b in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
    assert any(
        not np.array_equal(a["image"], c["image"]) for a, c in zip(runs[0], runs[2], strict=True)
    )


def test_unit_pipeline_would_clip_a_zscored_image():
    # the reason for image_range="zscore": albumentations' pixel transforms clip to [0, 1]
    zscored, mask = _pair("zscore")
    assert zscored.min() < -0.5
    unit = aug.build_2d_augmentation("light", image_range="unit", seed=0)
    zscore = aug.build_2d_augmentation("light", image_range="zscore", seed=0)
    unit_mins = [unit(image=zscored, mask=mask)["image"].min() for _ in range(20)]
    zscore_mins = [zscore(image=zscored, mask=mask)["image"].min() for _ in range(20)]
    assert max(unit_mins) >= 0.0  # all negatives lost whenever brightness/contrast ran
    assert max(zscore_mins) < -0.5  # negatives kept


def test_unit_pipeline_gamma_turns_zscored_negatives_into_nan():
    zscored, mask = _pair("zscore")
    unit = aug.build_2d_augmentation("medium", image_range="unit", seed=0)
    with pytest.warns(RuntimeWarning, match="invalid value"):
        outputs = [unit(image=zscored, mask=mask)["image"] for _ in range(20)]
    assert any(np.isnan(out).any() for out in outputs)


def test_intensity_jitter_by_hand():
    import albumentations as A

    jitter = aug.IntensityJitter(
        scale_range=(2, 2), shift_range=(1, 1), noise_std_range=(0, 0), p=1
    )
    image = np.array([[-1.0, 0.0], [0.5, 2.0]], dtype=np.float32)
    out = A.Compose([jitter], seed=0)(image=image)["image"]
    np.testing.assert_allclose(out, [[-1.0, 1.0], [2.0, 5.0]])  # 2 * x + 1, unclipped
    assert out.dtype == np.float32


def test_dropout_fill_mask_is_wired_and_defaults_to_untouched_mask():
    image = np.full((64, 64), 0.8, dtype=np.float32)
    mask = np.ones((64, 64), dtype=np.uint8)
    with_ignore = aug.build_2d_augmentation("heavy", dropout_fill_mask=255, seed=0)
    seen = set()
    for _ in range(40):
        seen |= set(np.unique(with_ignore(image=image, mask=mask)["mask"]).tolist())
    assert 255 in seen  # the ignore index only appears when asked for
    default = aug.build_2d_augmentation("heavy", seed=0)
    for _ in range(40):
        assert set(np.unique(default(image=image, mask=mask)["mask"]).tolist()) <= {0, 1}


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"preset": "extreme"}, "preset"), ({"image_range": "hu"}, "image_range")]
)
def test_2d_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aug.build_2d_augmentation(**kwargs)


# ------------------------------------------------------------------------------- 3D


def _volume_pair(shape=(20, 40, 40)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    label = np.zeros((1, *shape), dtype=np.uint8)
    label[0, 6:14, 10:30, 12:28] = 1
    label[0, 8:11, 16:22, 16:22] = 2
    image = (label.astype(np.float32) + rng.normal(0, 0.1, label.shape)).astype(np.float32)
    return {"image": image, "label": label}


@pytest.mark.parametrize("preset", aug.PRESETS)
def test_3d_patches_keep_shapes_dtypes_and_label_values(preset):
    pipeline = aug.build_3d_augmentation(preset, patch_size=(16, 32, 32), num_samples=3, seed=0)
    for _ in range(3):
        patches = pipeline(_volume_pair())
        assert len(patches) == 3
        for patch in patches:
            assert patch["image"].shape == (1, 16, 32, 32) and patch["image"].dtype == torch.float32
            assert patch["label"].shape == (1, 16, 32, 32) and patch["label"].dtype == torch.int64
            assert set(torch.unique(patch["label"]).tolist()) <= LABEL_SET


def test_3d_positive_patches_contain_foreground_and_small_volumes_are_padded():
    pipeline = aug.build_3d_augmentation(
        "light", patch_size=(24, 48, 48), num_samples=4, pos=1, neg=0, seed=0
    )
    for patch in pipeline(_volume_pair()):
        assert patch["image"].shape == (1, 24, 48, 48)  # padded from (20, 40, 40)
        assert patch["label"].sum() > 0


def test_3d_whole_volume_and_custom_keys():
    data = _volume_pair()
    pipeline = aug.build_3d_augmentation("heavy", keys=("ct", "seg"), seed=0)
    out = pipeline({"ct": data["image"], "seg": data["label"]})
    assert out["ct"].shape == (1, 20, 40, 40) and out["seg"].dtype == torch.int64
    assert set(torch.unique(out["seg"]).tolist()) <= LABEL_SET


def test_3d_same_seed_same_outputs():
    outputs = [
        aug.build_3d_augmentation("heavy", patch_size=(16, 32, 32), seed=4)(_volume_pair())
        for _ in range(2)
    ]
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_3d_empty_label_warns_and_samples_background():
    data = _volume_pair()
    data["label"][:] = 0
    pipeline = aug.build_3d_augmentation("light", patch_size=(16, 32, 32), seed=0)
    with pytest.warns(UserWarning, match="Num foregrounds 0"):
        patches = pipeline(data)
    assert len(patches) == 2


# -------------------------------------------------------------------- the outline's


def test_outline_pipeline_has_no_gaussian_noise():
    with pytest.raises(AttributeError, match="GaussianNoise"):
        aug.outline_augmentation(rename_gaussian_noise=False)


def test_outline_pipeline_warns_about_ignored_arguments():
    with pytest.warns(UserWarning) as record:
        pipeline = aug.outline_augmentation()
    messages = " | ".join(str(w.message) for w in record)
    for expected in ("Affine", "var_limit", "alpha_affine", "max_holes, max_height, max_width"):
        assert expected in messages
    image, mask = _pair()
    out = pipeline(image=image, mask=mask)
    assert tuple(out["image"].shape) == (1, 64, 64)


def test_2d_rejects_mismatched_shapes_and_unknown_keys():
    image, mask = _pair()
    pipeline = aug.build_2d_augmentation("light", seed=0)
    with pytest.raises(ValueError, match="Height and Width"):
        pipeline(image=image, mask=mask[:32])
    with pytest.raises(ValueError, match="weight"):  # strict=True: no silently ignored keys
        pipeline(image=image, mask=mask, weight=mask)


def test_update_check_is_skipped_unless_the_user_chose_otherwise(monkeypatch):
    monkeypatch.delenv("NO_ALBUMENTATIONS_UPDATE", raising=False)
    aug.skip_albumentations_update_check()
    assert aug.ALBUMENTATIONS_UPDATE_ENV_VAR == "NO_ALBUMENTATIONS_UPDATE"
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "1"
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "0")  # the user's choice is kept
    aug.skip_albumentations_update_check()
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "0"


# --------------------------------------------------------------------------- preset_flips


@pytest.mark.parametrize("preset", aug.PRESETS)
def test_preset_flips_2d_are_exactly_the_flips_in_the_pipeline(preset: str) -> None:
    names = {type(t).__name__ for t in aug.build_2d_augmentation(preset).transforms}
    assert "HorizontalFlip" in names  # flips W: dim 3 of a (B, C, H, W) batch
    assert not names & {"VerticalFlip", "D4", "Transpose", "RandomRotate90", "SquareSymmetry"}
    assert aug.preset_flips(preset, 2) == [(), (3,)]


@pytest.mark.parametrize(("preset", "expected"), [
    ("light", [(), (4,)]),
    ("medium", [(), (4,)]),
    ("heavy", [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]),
])
def test_preset_flips_3d_match_the_monai_flip_axes(preset: str, expected: list) -> None:
    from monai.transforms import RandFlipd

    pipeline = aug.build_3d_augmentation(preset)
    # RandFlipd's spatial_axis counts from the first spatial axis of (C, Z, Y, X); a batch
    # (B, C, Z, Y, X) puts that axis at dim 2
    axes = {2 + t.flipper.spatial_axis for t in pipeline.transforms if isinstance(t, RandFlipd)}
    assert axes == set().union(*map(set, expected))
    assert aug.preset_flips(preset, 3) == expected


def test_preset_flips_without_augmentation_is_the_identity_only() -> None:
    assert aug.preset_flips(None, 2) == [()]
    with pytest.raises(ValueError, match="preset must be None or one of"):
        aug.preset_flips("strong", 2)
