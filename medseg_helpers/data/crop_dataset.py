"""Fixed-size 2D crops from the slice cache, centred on each class in chosen shares.

A lesion may cover 0.1 % of a slice's pixels. Whole slices spend almost every pixel of
every step on background and organ, so a small lesion is seen rarely and learnt late.
`SliceCropDataset` samples crops instead: each crop is centred on a random pixel of a
class drawn with the given ratios (the idea of MONAI's ``RandCropByLabelClassesd`` and
nnU-Net's foreground oversampling), so a batch of 16 crops at ratios ``(1, 1, 2)``
holds about 8 lesion-centred crops. Smaller crops also make each step cheaper: a 64x64
crop costs about 0.45x a 96x96 slice. The network is fully convolutional, so it still
predicts whole slices at inference.

Draws are deterministic: crop ``i`` of epoch ``e`` comes from ``(seed, e, i)``, so a
run restarted at epoch ``e`` (or served by several DataLoader workers) sees the same
crops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medseg_helpers.data.slice_cache import SliceCache


class SliceCropDataset(Dataset):
    """``samples_per_epoch`` random crops of some patients' cached slices.

    Items are dicts like `SliceDataset`'s: ``"image"`` ``(C, h, w)`` float32 tensor,
    ``"label"`` ``(1, h, w)`` int64 tensor, ``"patient_id"`` and ``"slice_index"``.

    Args:
        cache: from `build_slice_cache`.
        patient_ids: patients to serve (e.g. ``split.train``); None = all in the cache.
        crop_size: ``(h, w)`` in pixels, at most the cached slice size.
        centre_ratios: relative weights of the crop centre's class. Index 0 means a
            uniformly random pixel of a random slice (mostly background); index
            ``k >= 1`` a random pixel of class ``k``. Classes absent from these patients
            get weight 0. ``(1, 1, 2)``: a quarter anywhere, a quarter on the organ,
            half on the lesion.
        samples_per_epoch: crops per epoch (``len(dataset)``).
        transform: joint augmentation ``transform(image=..., mask=...)`` as for
            `SliceDataset` (image ``(h, w)`` or ``(h, w, C)`` float32, mask ``(h, w)``).
        seed: seeds the draws (with the epoch and item index).

    Raises:
        ValueError: unknown patients, a crop larger than the slices, negative ratios or
            ratios that leave no class to centre on.
    """

    def __init__(self, cache: SliceCache, patient_ids: Sequence[str] | None = None, *,
                 crop_size: Sequence[int] = (64, 64), centre_ratios: Sequence[float] = (1, 1, 2),
                 samples_per_epoch: int = 1024,
                 transform: Callable[..., dict] | None = None, seed: int = 0) -> None:
        ids = list(cache.cases) if patient_ids is None else [str(p) for p in patient_ids]
        unknown = sorted(set(ids) - set(cache.cases))
        if unknown:
            raise ValueError(f"patient ids not in the cache {cache.path}: {unknown}")
        self.crop_size = tuple(int(s) for s in crop_size)
        if len(self.crop_size) != 2 or any(
                not 0 < c <= s for c, s in zip(self.crop_size, cache.slice_shape, strict=True)):
            raise ValueError(f"crop_size {tuple(crop_size)} must be 2 sizes in "
                             f"1..{cache.slice_shape} (the cached slice size)")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        if any(r < 0 for r in centre_ratios):
            raise ValueError(f"centre_ratios must be >= 0, got {tuple(centre_ratios)}")
        self.cache, self.transform, self.seed = cache, transform, seed
        self.samples_per_epoch = samples_per_epoch
        cases = [cache.cases[p] for p in ids]
        self._rows = np.concatenate([np.arange(c.start, c.stop) for c in cases])
        self._owner = {r: c for c in cases for r in range(c.start, c.stop)}
        flat = np.asarray(cache.labels[self._rows]).reshape(-1)  # (rows * H * W,)
        #: per class k >= 1: flat indices (row position * H * W + y * W + x) of its pixels
        self._pixels = {k: np.flatnonzero(flat == k) for k in range(1, len(centre_ratios))}
        weights = np.array([float(centre_ratios[0])] + [
            float(centre_ratios[k]) if len(self._pixels[k]) else 0.0
            for k in range(1, len(centre_ratios))])
        if weights.sum() <= 0:
            raise ValueError(f"centre_ratios {tuple(centre_ratios)} leave no class with "
                             "pixels in these patients to centre a crop on")
        self.centre_probabilities = weights / weights.sum()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of ``epoch`` (same seed and epoch, same crops)."""
        self._epoch[0] = int(epoch)

    def reseed(self, seed: int) -> None:
        """Reseed the transform (`make_dataloader` calls this, once per worker)."""
        from medseg_helpers.data.datasets import reseed_transform

        reseed_transform(self.transform, seed)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def crop_origin(self, index: int, epoch: int | None = None) -> tuple[int, int, int]:
        """``(cache row, y0, x0)`` of crop ``index`` in ``epoch`` (default: the current one)."""
        epoch = int(self._epoch[0]) if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch, int(index)])
        height, width = self.cache.slice_shape
        k = int(rng.choice(len(self.centre_probabilities), p=self.centre_probabilities))
        if k == 0:
            position = int(rng.integers(len(self._rows)))
            y, x = int(rng.integers(height)), int(rng.integers(width))
        else:
            flat = int(self._pixels[k][rng.integers(len(self._pixels[k]))])
            position, rest = divmod(flat, height * width)
            y, x = divmod(rest, width)
        h, w = self.crop_size
        y0 = int(np.clip(y - h // 2, 0, height - h))
        x0 = int(np.clip(x - w // 2, 0, width - w))
        return int(self._rows[position]), y0, x0

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, y0, x0 = self.crop_origin(index)
        h, w = self.crop_size
        image = np.array(self.cache.images[row, :, y0:y0 + h, x0:x0 + w], np.float32)  # (C,h,w)
        label = np.array(self.cache.labels[row, y0:y0 + h, x0:x0 + w])
        if self.transform is not None:
            hwc = image[0] if len(image) == 1 else np.moveaxis(image, 0, -1)
            out = self.transform(image=hwc, mask=label)
            image = np.asarray(out["image"], np.float32)
            image = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
            label = np.asarray(out["mask"])
        case = self._owner[row]
        return {"image": torch.from_numpy(np.ascontiguousarray(image)),
                "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)[None]),
                "patient_id": case.patient_id, "slice_index": row - case.start}
