"""Checks that fail early, with a clear message, on data that cannot train a model.

A dataset without any labelled foreground trains a model that predicts background
everywhere (loss goes down, Dice stays 0); a label value outside ``[0, num_classes)``
crashes cross-entropy deep inside the loss; NaN voxels turn the loss into NaN. The
`Trainer` runs `check_labels` on the first training batches before its first step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["check_labels"]


def check_labels(loader: Iterable[Mapping[str, torch.Tensor]], num_classes: int,
                 max_batches: int | None = 8) -> None:
    """Fail early on data that cannot train: no foreground, unexpected classes, NaN images.

    Args:
        loader: yields batches with ``"image"`` and ``"label"`` (``(B, 1, *spatial)``).
        num_classes: label values must lie in ``[0, num_classes)``.
        max_batches: batches to look at (None: all). A shuffled loader shows a sample of
            the data; foreground in none of them is reported as "no foreground".

    Raises:
        ValueError: a label value outside ``[0, num_classes)`` (values listed), non-finite
            image values, or no voxel with a label > 0 in the batches seen.
    """
    voxels, seen = 0, 0
    for seen, batch in enumerate(loader, start=1):
        label, image = batch["label"], batch["image"]
        values = torch.unique(label).tolist()
        unexpected = [v for v in values if not 0 <= v < num_classes]
        if unexpected:
            raise ValueError(f"batch {seen}: label values {unexpected} outside [0, {num_classes})"
                             f" (values seen: {values[:10]}); remap the labels or set "
                             "num_classes to the number of classes")
        if not torch.isfinite(image).all():
            raise ValueError(f"batch {seen}: the image has NaN or infinite values")
        if max(values) > 0:
            return
        voxels += label.numel()
        if max_batches is not None and seen >= max_batches:
            break
    raise ValueError(f"no labelled foreground in the first {seen} batches ({voxels} label "
                     "voxels, all 0): the model would only learn background. Check the label "
                     "files and label mapping, or that foreground slices are not filtered out.")
