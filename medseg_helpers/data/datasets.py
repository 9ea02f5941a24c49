"""Torch Datasets over the slice cache, and DataLoaders that neither hang nor repeat.

The seed outline's Dataset reloads and re-normalises a whole file for every item
(`NaiveVolumeDataset`, kept only to measure it). Here items are cheap reads of volumes
preprocessed once (`medseg_helpers.data.slice_cache`, `medseg_helpers.data.patch_dataset`):

* `SliceDataset` serves the slices of some patients from a `SliceCache` (split by
  patient, never by slice) with a tunable share of background-only slices, redrawn
  every epoch.
* `make_dataloader` gives DataLoader defaults that neither hang nor repeat augmentations.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from medseg_helpers.data.io import read_volume
from medseg_helpers.data.slice_cache import SliceCache
from medseg_helpers.transforms import preprocess

PathLike = str | os.PathLike


def reseed_transform(transform: Any, seed: int) -> None:
    """Reseed an albumentations (``set_random_seed``) or MONAI (``set_random_state``) pipeline."""
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)
    elif hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=seed)


class SliceDataset(Dataset):
    """2D slices of some patients from a `SliceCache`, with a tunable share of empty slices.

    Every slice whose label has foreground is used each epoch, plus
    ``round(empty_slice_fraction * num_empty)`` background-only slices drawn without
    replacement, redrawn per epoch from ``(seed, epoch)``: call `set_epoch` before each
    epoch. The epoch lives in shared memory, so DataLoader workers (persistent ones too)
    see it. ``len(dataset)`` is the same every epoch.

    Items are dicts: ``"image"`` ``(C, H, W)`` float32 tensor, ``"label"`` ``(1, H, W)``
    int64 tensor of class indices (batched: ``(B, 1, H, W)``, what our losses and MONAI's
    ``DiceLoss(to_onehot_y=True)`` expect), ``"patient_id"`` str and ``"slice_index"``
    int (position in the patient's preprocessed volume, for `SliceCache.merge_case`).

    Args:
        cache: from `build_slice_cache`.
        patient_ids: patients to serve (e.g. ``split.train``); None = all in the cache.
        transform: joint augmentation called as ``transform(image=..., mask=...)``
            returning a dict with ``"image"`` and ``"mask"``, e.g.
            `medseg_helpers.transforms.augment.build_2d_augmentation` (image ``(H, W)`` for one
            channel or ``(H, W, C)``, float32; mask ``(H, W)`` uint8).
        empty_slice_fraction: share of background-only slices kept, in [0, 1].
        seed: seeds the empty-slice draw.

    Raises:
        ValueError: unknown patient ids (listed) or a fraction outside [0, 1].
    """

    def __init__(
        self,
        cache: SliceCache,
        patient_ids: Sequence[str] | None = None,
        *,
        transform: Callable[..., dict] | None = None,
        empty_slice_fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        ids = list(cache.cases) if patient_ids is None else [str(p) for p in patient_ids]
        unknown = sorted(set(ids) - set(cache.cases))
        if unknown:
            raise ValueError(f"patient ids not in the cache {cache.path}: {unknown}")
        if not 0.0 <= empty_slice_fraction <= 1.0:
            raise ValueError(f"empty_slice_fraction must be in [0, 1]; got {empty_slice_fraction}")
        self.cache, self.transform, self.seed = cache, transform, seed
        self.empty_slice_fraction = empty_slice_fraction
        cases = [cache.cases[p] for p in ids]
        rows = np.concatenate([np.arange(c.start, c.stop) for c in cases]) if cases else []
        fg = np.array([v for c in cases for v in c.has_foreground], dtype=bool)
        self._rows = np.asarray(rows, dtype=np.int64)
        self._foreground, self._empty = self._rows[fg], self._rows[~fg]
        self._num_empty = int(np.floor(empty_slice_fraction * len(self._empty) + 0.5))
        self._owner = {r: c for c in cases for r in range(c.start, c.stop)}
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._epoch_view = self._epoch.numpy()  # same memory, ~10x faster to read
        self._selection: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_epoch_view": None, "_selection": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _epoch_view=state["_epoch"].numpy())

    def set_epoch(self, epoch: int) -> None:
        """Choose the empty slices of ``epoch`` (same epoch and seed, same slices)."""
        self._epoch[0] = int(epoch)

    def epoch_rows(self, epoch: int | None = None) -> np.ndarray:
        """Sorted cache rows served in ``epoch`` (default: the current one)."""
        epoch = int(self._epoch_view[0]) if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        chosen = rng.choice(self._empty, size=self._num_empty, replace=False)
        return np.sort(np.concatenate([self._foreground, chosen]))

    def reseed(self, seed: int) -> None:
        """Reseed the transform (`make_dataloader` calls this, once per worker)."""
        reseed_transform(self.transform, seed)

    def __len__(self) -> int:
        return len(self._foreground) + self._num_empty

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch = int(self._epoch_view[0])
        if self._selection is None or self._selection[0] != epoch:
            self._selection = (epoch, self.epoch_rows(epoch))
        row = int(self._selection[1][index])
        images, labels = self.cache._open()
        image = np.array(images[row])  # (C, H, W): a copy out of the memory map
        if self.transform is None:
            label = labels[row].astype(np.int64)  # one copy and cast
        else:
            hwc = image[0] if len(image) == 1 else np.moveaxis(image, 0, -1)
            out = self.transform(image=hwc, mask=np.array(labels[row]))
            image, label = np.asarray(out["image"], np.float32), np.asarray(out["mask"], np.int64)
            image = np.ascontiguousarray(
                image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
            )
        case = self._owner[row]
        return {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(np.ascontiguousarray(label)[None]),
            "patient_id": case.patient_id,
            "slice_index": row - case.start,
        }


class NaiveVolumeDataset(Dataset):
    """The seed outline's Dataset, reproduced to measure it. **Do not use it.**

    Every item re-reads the whole image and label files and divides by the maximum
    (`preprocess.naive_max_normalise`: NaN on an empty image, CT squeezed into [-1, 1]),
    then slices the volume. Faithful to the outline, the transform only sees the image:
    the label is never augmented with it. The outline reads ``.npy``; here any format
    `read_volume` reads.

    Args:
        image_paths: one file per volume.
        label_paths: matching label files.
        transform: albumentations-style, applied to each image slice only (the bug).
        per_slice: False (the outline): item ``i`` is volume ``i`` as ``(slices, labels)``,
            two lists of ``(H, W)`` arrays. True (how the outline gets adapted to 2D
            training): item ``i`` is one ``(slice, label)`` pair, and the whole volume is
            still read and normalised for it.
    """

    def __init__(
        self,
        image_paths: Sequence[PathLike],
        label_paths: Sequence[PathLike],
        transform: Callable[..., dict] | None = None,
        *,
        per_slice: bool = False,
    ) -> None:
        self.image_paths, self.label_paths = list(image_paths), list(label_paths)
        self.transform, self.per_slice = transform, per_slice
        self._items = [(v, None) for v in range(len(self.image_paths))]
        if per_slice:  # slice counts from the headers
            reader = sitk.ImageFileReader()
            self._items = []
            for v, path in enumerate(self.image_paths):
                reader.SetFileName(str(path))
                reader.ReadImageInformation()
                self._items += [(v, k) for k in range(reader.GetSize()[2])]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, idx: int):
        volume_index, slice_index = self._items[idx]
        image = preprocess.naive_max_normalise(read_volume(self.image_paths[volume_index]).array)
        label = read_volume(self.label_paths[volume_index]).array
        slices, labels = list(image), list(label)  # the outline's slice_3d_image
        if self.transform:
            pairs = zip(slices, labels, strict=True)
            slices = [self.transform(image=s, mask=lab)["image"] for s, lab in pairs]
        if slice_index is None:
            return slices, labels
        return slices[slice_index], labels[slice_index]


# --------------------------------------------------------------------------- DataLoader


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: per-worker seeds for numpy, random and the dataset.

    The worker's seed is the loader's base seed (drawn from its seeded generator) plus
    ``worker_id``, so workers augment differently and the run is reproducible. Calls
    ``dataset.reseed(seed)`` when the dataset has it (albumentations' ``Compose`` keeps
    its own generator, which numpy's global seed does not reach).

    It deliberately does not call ``cv2.setNumThreads``: in a forked worker, after the
    parent has used OpenCV's thread pool (any albumentations transform), that call
    deadlocks. Set OpenCV threads in the main process before creating the loader.
    """
    info = get_worker_info()
    seed = int(info.seed % 2**32) if info is not None else worker_id
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (legacy global state used by older transforms)
    reseed = getattr(info.dataset, "reseed", None) if info is not None else None
    if callable(reseed):
        reseed(seed)


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    *,
    drop_last: bool = False,
    collate_fn: Callable | None = None,
    timeout_s: float = 300.0,
) -> DataLoader:
    """A DataLoader with safe defaults for notebooks on CPU.

    * ``num_workers=0`` by default: no subprocesses, nothing to hang in a notebook.
    * With workers: ``persistent_workers=True`` (no re-fork every epoch), `seed_worker`
      as ``worker_init_fn``, and ``timeout_s`` so a stuck worker raises instead of
      hanging. Datasets and transforms must be picklable on spawn platforms (macOS,
      Windows): define them in a module, not as notebook lambdas.
    * A ``torch.Generator`` seeded with ``seed`` drives shuffling and worker seeds, and
      ``dataset.reseed(seed)`` (if present) is called now: the same call gives the same
      batches, even with augmentation.
    * ``pin_memory`` only when CUDA is available.

    Args:
        dataset: e.g. `SliceDataset` or `PatchDataset3D`.
        batch_size: items per batch.
        shuffle: reshuffle every epoch.
        num_workers: worker processes.
        seed: seed for order and augmentation.
        drop_last: drop a last incomplete batch.
        collate_fn: custom collate (default: torch's, stacking dict entries).
        timeout_s: seconds to wait for a batch from a worker.

    Returns:
        The `torch.utils.data.DataLoader`.
    """
    reseed = getattr(dataset, "reseed", None)
    if callable(reseed):
        reseed(seed)
    workers = {"persistent_workers": True, "worker_init_fn": seed_worker, "timeout": timeout_s}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        collate_fn=collate_fn,
        **(workers if num_workers > 0 else {}),
    )
