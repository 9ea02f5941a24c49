"""Tests for medseg_helpers.viz.augment_gallery (run with ``-W error::UserWarning`` too)."""

from __future__ import annotations

import time

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pytest

from medseg_helpers.transforms import augment
from medseg_helpers.transforms.augment import A
from medseg_helpers.viz.augment_gallery import (
    measure_images_per_second,
    plot_augmentation_gallery,
    split_transforms,
)


def _pair(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A [0, 1] image with an organ (1) holding a lesion (2), and its mask."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[6:22, 5:25] = 1
    mask[10:16, 12:18] = 2
    return np.where(mask > 0, 0.8, 0.2).astype(np.float32), mask


def test_split_gives_each_transform_at_p1_and_leaves_pipeline_alone():
    pipeline = augment.build_2d_augmentation("heavy", seed=0)
    before = [t.p for t in pipeline.transforms]
    singles = split_transforms(pipeline, seed=0)
    assert list(singles) == [type(t).__name__ for t in pipeline.transforms]
    assert all(len(s.transforms) == 1 and s.transforms[0].p == 1.0 for s in singles.values())
    assert [t.p for t in pipeline.transforms] == before  # deep copies, not the originals


def test_split_numbers_repeated_classes_and_skips_to_tensor():
    from albumentations.pytorch import ToTensorV2

    pipeline = A.Compose([A.HorizontalFlip(p=0.1), A.HorizontalFlip(p=0.2), ToTensorV2()])
    assert list(split_transforms(pipeline)) == ["HorizontalFlip", "HorizontalFlip #2"]


def test_split_same_seed_same_draws():
    image, mask = _pair()
    first = split_transforms(augment.build_2d_augmentation("heavy"), seed=3)
    second = split_transforms(augment.build_2d_augmentation("heavy"), seed=3)
    for name in first:
        a, b = first[name](image=image, mask=mask), second[name](image=image, mask=mask)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])


def test_split_rejects_a_non_compose():
    with pytest.raises(TypeError, match="Compose"):
        split_transforms([A.HorizontalFlip()])


def test_gallery_has_one_row_per_transform_and_keeps_label_values():
    image, mask = _pair()
    singles = split_transforms(augment.build_2d_augmentation("heavy"), seed=0)
    fig = plot_augmentation_gallery(image, mask, singles, num_samples=2)
    assert np.shape(fig.axes) == (len(singles) * 3,)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert not any(t.startswith("new mask values") for t in texts)  # nearest everywhere
    plt.close(fig)


def test_gallery_flags_labels_interpolated_linearly():
    # A lesion (2) on background (0), rotated with linear mask interpolation: the rim
    # blends 2 and 0 into 1, a class that was not there.
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[10:22, 10:22] = 2
    image = mask.astype(np.float32) / 2
    linear = A.Compose(
        [A.Affine(rotate=(30, 30), mask_interpolation=cv2.INTER_LINEAR, p=1)], seed=0
    )
    fig = plot_augmentation_gallery(image, mask, {"linear": linear}, num_samples=1)
    flag = fig.axes[1].texts[0]  # inside the flagged panel, in red
    assert flag.get_text() == "new mask values [1]" and flag.get_color() == "red"
    plt.close(fig)


def test_gallery_accepts_channel_first_tensors():
    from albumentations.pytorch import ToTensorV2

    image, mask = _pair()
    to_tensor = A.Compose([ToTensorV2()])
    fig = plot_augmentation_gallery(image, mask, {"tensor": to_tensor}, num_samples=1)
    assert len(fig.axes) == 2
    plt.close(fig)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"transforms": {}}, "empty"),
        ({"num_samples": 0}, "num_samples"),
        ({"mask": np.zeros((8, 9), np.uint8)}, r"\(32, 32\).*\(8, 9\)"),
        ({"image": np.zeros((2, 32, 32), np.float32)}, "image must be"),
    ],
)
def test_gallery_bad_input_raises(kwargs, match):
    image, mask = _pair()
    args = {"image": image, "mask": mask, "transforms": {"flip": A.HorizontalFlip(p=1)}}
    with pytest.raises(ValueError, match=match):
        plot_augmentation_gallery(**{**args, **kwargs})


def test_measure_counts_every_timed_call():
    calls = []

    def transform(image, mask):
        calls.append(1)
        return {"image": image, "mask": mask}

    image, mask = _pair()
    rate = measure_images_per_second(transform, [image] * 3, [mask] * 3, repeats=2, warmup=1)
    assert len(calls) == 1 + 3 * 2 and rate > 0


def test_measure_runs_whole_passes_until_min_seconds():
    calls = []

    def slow(image, mask):
        calls.append(1)
        time.sleep(0.002)
        return {"image": image, "mask": mask}

    image, mask = _pair()
    rate = measure_images_per_second(slow, [image] * 2, [mask] * 2, min_seconds=0.02, warmup=0)
    # No warm-up, so calls / rate is the timed duration: at least 20 ms, in whole passes of
    # 2 calls; each call sleeps >= 2 ms, so the rate cannot exceed 500 per second.
    assert len(calls) / rate >= 0.02 and len(calls) % 2 == 0 and rate <= 500


@pytest.mark.parametrize(
    ("images", "masks", "repeats", "match"),
    [([], [], 1, "at least one"), ([1], [], 1, "as many"), ([1], [1], 0, "repeats")],
)
def test_measure_bad_input_raises(images, masks, repeats, match):
    with pytest.raises(ValueError, match=match):
        measure_images_per_second(lambda **kw: kw, images, masks, repeats=repeats)
