"""Looking at augmentation: each transform on its own, a gallery figure, its cost.

A pipeline such as `medseg_helpers.transforms.augment.build_2d_augmentation` applies each transform
with some probability, so one call shows a mix of a few of them. To see what each one
does, `split_transforms` takes the pipeline apart into one-transform pipelines that
always fire (``p=1``), `plot_augmentation_gallery` draws them as rows (the input, then
several random draws, the mask overlaid in the course colours), and
`measure_images_per_second` times any of them.

Images are 2D: ``image`` ``(H, W)`` float32 and ``mask`` ``(H, W)`` uint8 label values,
the input of an albumentations pipeline called as ``pipeline(image=..., mask=...)``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from medseg_helpers.transforms.augment import (
    A,  # albumentations, imported with the update check off
)
from medseg_helpers.viz.slices import show_slice

Transform = Callable[..., dict]


def split_transforms(pipeline: A.Compose, *, seed: int | None = None) -> dict[str, A.Compose]:
    """Each transform of ``pipeline`` as its own pipeline that always fires.

    The transforms are deep copies with ``p=1``; ``pipeline`` is not changed. Only the
    top level is split (a ``OneOf`` stays one entry). A transform that returns a tensor
    (``ToTensorV2``) is skipped: it changes the type, not the content.

    Args:
        pipeline: an ``A.Compose``.
        seed: seeds every returned pipeline (same seed, same draws).

    Returns:
        ``{name: A.Compose([transform])}`` in pipeline order; ``name`` is the class name,
        with `` #2``, `` #3``, ... appended when a class occurs again.

    Raises:
        TypeError: ``pipeline`` is not an ``A.Compose``.
    """
    if not isinstance(pipeline, A.Compose):
        raise TypeError(f"pipeline must be an albumentations Compose; got {type(pipeline)}")
    singles: dict[str, A.Compose] = {}
    for transform in pipeline.transforms:
        name = type(transform).__name__
        if name == "ToTensorV2":
            continue
        unique, count = name, 1
        while unique in singles:
            count += 1
            unique = f"{name} #{count}"
        always = copy.deepcopy(transform)
        always.p = 1.0
        singles[unique] = A.Compose([always], seed=seed)
    return singles


def _as_2d(array, what: str) -> np.ndarray:
    """``(H, W)``, ``(1, H, W)`` or ``(H, W, 1)`` array or CPU tensor -> ``(H, W)`` numpy."""
    out = np.asarray(array)
    if out.ndim == 3 and 1 in (out.shape[0], out.shape[-1]):
        out = out.reshape(out.shape[1:] if out.shape[0] == 1 else out.shape[:-1])
    if out.ndim != 2:
        raise ValueError(f"{what} must be (H, W) (or with one channel); got shape {out.shape}")
    return out


def plot_augmentation_gallery(
    image: np.ndarray,
    mask: np.ndarray,
    transforms: Mapping[str, Transform],
    *,
    num_samples: int = 3,
    vmin: float | None = None,
    vmax: float | None = None,
    panel_size: float = 1.9,
) -> plt.Figure:
    """One row per transform: the input, then ``num_samples`` random draws, mask overlaid.

    Every panel uses the input's display range, so brightness, contrast and noise
    changes show (a per-panel range would hide them). Column titles are on the first
    row; a panel whose mask holds a value the input mask did not have is titled in red
    with the new values (e.g. a label interpolated linearly), on any row.

    Args:
        image: ``(H, W)`` float32, as the transforms expect it (e.g. in [0, 1]).
        mask: ``(H, W)`` integer label values, same ``(H, W)``.
        transforms: ``{row name: callable}``, each called as ``t(image=..., mask=...)``
            and returning a dict with ``"image"`` and ``"mask"`` (``(H', W')``, or one
            channel first or last; tensors allowed), e.g. from `split_transforms`.
        num_samples: draws per transform (columns after the input).
        vmin: grey level shown black; default the input's 1st percentile.
        vmax: grey level shown white; default the input's 99th percentile.
        panel_size: inches per panel.

    Returns:
        The figure, ``len(transforms)`` rows by ``1 + num_samples`` columns.

    Raises:
        ValueError: no transforms, ``num_samples < 1``, or image and mask shapes differ
            (both named).
    """
    image, mask = _as_2d(image, "image"), _as_2d(mask, "mask")
    if image.shape != mask.shape:
        raise ValueError(f"image (H, W) = {image.shape} but mask (H, W) = {mask.shape}")
    if not transforms:
        raise ValueError("transforms is empty: nothing to show")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    low, high = np.percentile(image, [1, 99])
    vmin, vmax = (low if vmin is None else vmin), (high if vmax is None else vmax)
    known = set(np.unique(mask).tolist())
    rows, cols = len(transforms), 1 + num_samples
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel_size * cols, panel_size * rows), squeeze=False,
        constrained_layout=True,
    )  # fmt: skip
    for number, (row, (name, transform)) in enumerate(zip(axes, transforms.items(), strict=True)):
        show_slice(row[0], image, mask, title="input" if number == 0 else None, vmin=vmin,
                   vmax=vmax)  # fmt: skip
        row[0].annotate(
            name, xy=(-0.08, 0.5), xycoords="axes fraction", rotation=90,
            ha="right", va="center", fontsize=10,
        )  # fmt: skip
        for k, ax in enumerate(row[1:], start=1):
            out = transform(image=image, mask=mask)
            out_image, out_mask = _as_2d(out["image"], "image"), _as_2d(out["mask"], "mask")
            new = sorted(set(np.unique(out_mask).tolist()) - known)
            show_slice(ax, out_image, np.rint(out_mask).astype(np.int64), vmin=vmin, vmax=vmax)
            if number == 0:
                ax.set_title(f"draw {k}", fontsize=10)
            if new:  # inside the panel it flags: a title would sit between two rows
                ax.text(0.5, 0.03, f"new mask values {new[:3]}", transform=ax.transAxes,
                        ha="center", va="bottom", fontsize=8, color="red",
                        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
    return fig


def measure_images_per_second(
    transform: Transform,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    repeats: int = 1,
    min_seconds: float = 0.0,
    warmup: int = 2,
) -> float:
    """Images per second of ``transform(image=..., mask=...)`` over the given pairs.

    One process, wall-clock time (``time.perf_counter``). The first ``warmup`` calls
    (lazy initialisation, caches) are not timed; then whole passes over the pairs are
    timed until at least ``repeats`` passes and ``min_seconds`` have gone by (a cheap
    transform needs many passes for a stable number). Timings vary by +-20 % between
    runs and machines: compare ratios measured in one run, never absolute numbers.

    Args:
        transform: a callable such as an ``A.Compose``.
        images: ``(H, W)`` float32 images.
        masks: the matching ``(H, W)`` uint8 masks.
        repeats: minimum number of passes over all pairs in the timed loop.
        min_seconds: minimum timed duration, seconds.
        warmup: untimed calls before the timed loop (on the first pair).

    Returns:
        Timed calls divided by elapsed seconds.

    Raises:
        ValueError: no pairs, unequal numbers of images and masks, or ``repeats < 1``.
    """
    if not images or len(images) != len(masks):
        raise ValueError(f"need as many masks as images, at least one; got {len(images)} "
                         f"images and {len(masks)} masks")  # fmt: skip
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    for _ in range(warmup):
        transform(image=images[0], mask=masks[0])
    passes, start = 0, time.perf_counter()
    while True:
        for image, mask in zip(images, masks, strict=True):
            transform(image=image, mask=mask)
        passes += 1
        elapsed = time.perf_counter() - start
        if passes >= repeats and elapsed >= min_seconds:
            return passes * len(images) / elapsed
