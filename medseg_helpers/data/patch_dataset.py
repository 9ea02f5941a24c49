"""Random 3D patches of preprocessed volumes with MONAI's positive/negative sampling.

`PatchDataset3D` preprocesses each case once (`case_cache.prepare_case`, as the slice
cache does), pads it to at least the patch size and keeps it in memory or in a cache
folder ``<cache_dir>/patches-<hash>/`` (built atomically, rebuilt when settings or
sources change); items are random crops, centred on foreground or background in a
chosen ratio, then augmented in 3D.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medseg_helpers.data.case_cache import (
    build_atomically,
    cache_identity,
    digest,
    prepare_case,
    preprocessing_settings,
    read_index,
)
from medseg_helpers.data.datasets import reseed_transform
from medseg_helpers.data.decathlon import Case
from medseg_helpers.transforms import cropping

PathLike = str | os.PathLike
#: Foreground/background voxel positions kept per case for 3D patch centres.
MAX_CENTRE_CANDIDATES = 100_000


def _centre_candidates(label: np.ndarray, patient_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of foreground and background voxels, each subsampled to at most
    `MAX_CENTRE_CANDIDATES` (a uniform subset: same distribution of patch centres)."""
    rng = np.random.default_rng(int(digest(patient_id)[:8], 16))
    flat = label.ravel() > 0
    out = []
    for indices in (np.flatnonzero(flat), np.flatnonzero(~flat)):
        if len(indices) > MAX_CENTRE_CANDIDATES:
            indices = np.sort(rng.choice(indices, MAX_CENTRE_CANDIDATES, replace=False))
        out.append(indices.astype(np.int64))
    return out[0], out[1]


def _prepare_patch_case(case: Case, settings: dict) -> dict[str, np.ndarray]:
    """Preprocessed case padded (image with its minimum, label with 0) to >= the patch."""
    image, label, _ = prepare_case(case, settings)
    image, label, _ = cropping.pad_to_shape(image, label, shape=settings["patch_size"])
    fg, bg = _centre_candidates(label.array, case.patient_id)
    return {"image": image.array, "label": label.array[np.newaxis], "fg": fg, "bg": bg}


_PATCH_KEYS = ("image", "label", "fg", "bg")


def _write_patch_cases(tmp: Path, cases: Sequence[Case], settings: dict, key: str) -> None:
    for number, case in enumerate(cases):
        for name, array in _prepare_patch_case(case, settings).items():
            np.save(tmp / f"{number}-{name}.npy", array)
    index = {"key": key, "settings": settings, "patient_ids": [c.patient_id for c in cases]}
    (tmp / "index.json").write_text(json.dumps(index) + "\n", encoding="utf-8")


class PatchDataset3D(Dataset):
    """Random 3D patches with MONAI positive/negative sampling and 3D augmentation.

    Volumes are preprocessed once (as in `build_slice_cache`: checks, optional
    resampling, normalisation), padded to at least ``patch_size``, and kept in memory
    (``cache_dir=None``) or in ``<cache_dir>/patches-<hash>/`` as ``.npy`` files (built
    atomically, reused while settings and sources are unchanged, memory-mapped).
    Foreground/background voxel positions are computed once per case (at most
    `MAX_CENTRE_CANDIDATES` of each, a uniform subset) and handed to
    ``RandCropByPosNegLabeld`` (``fg_indices_key``/``bg_indices_key``), so an item does
    not rescan the volume. A patch is centred on foreground with probability
    ``pos / (pos + neg)``, shifted inwards where it would leave the volume.

    A case with an empty label (or with no background) cannot be sampled that way;
    MONAI would warn on every draw. Its patches come from ``RandSpatialCropd`` at
    uniformly random positions instead: background patches, no warning.

    Items: ``"image"`` ``(C, Z, Y, X)`` float32, ``"label"`` ``(1, Z, Y, X)`` int64
    (plain tensors, fresh copies), ``"patient_id"`` str. Item ``i`` comes from case
    ``i // samples_per_case``.

    Args:
        cases: e.g. the training cases of a patient split.
        patch_size: ``(Z, Y, X)`` voxels.
        samples_per_case: patches per case per epoch.
        pos: weight of foreground-centred patches.
        neg: weight of background-centred patches.
        preset: `medseg_helpers.transforms.augment.build_3d_augmentation` preset applied after the
            crop ("light", "medium", "heavy"), or None for no augmentation.
        normalisation: as in `build_slice_cache`.
        normalisation_kwargs: as in `build_slice_cache`.
        spacing_mm: as in `build_slice_cache`.
        cache_dir: on-disk cache parent folder, or None to keep volumes in memory.
        seed: seeds the crops and the augmentation.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        patch_size: tuple[int, int, int],
        *,
        samples_per_case: int = 4,
        pos: float = 1.0,
        neg: float = 1.0,
        preset: str | None = "medium",
        normalisation: str = "zscore",
        normalisation_kwargs: Mapping[str, Any] | None = None,
        spacing_mm: tuple[float, float, float] | None = None,
        cache_dir: PathLike | None = None,
        seed: int = 0,
    ) -> None:
        from monai import transforms as mt

        from medseg_helpers.transforms.augment import build_3d_augmentation

        if samples_per_case < 1 or pos < 0 or neg < 0 or pos + neg <= 0:
            raise ValueError(
                f"need samples_per_case >= 1, pos, neg >= 0, pos + neg > 0; got "
                f"{samples_per_case}, {pos}, {neg}"
            )
        size = [int(n) for n in patch_size]
        settings = preprocessing_settings(
            normalisation, normalisation_kwargs, spacing_mm, patch_size=size
        )
        self.patient_ids = [c.patient_id for c in cases]
        self.samples_per_case = samples_per_case
        self._folder: Path | None = None
        self._loaded: list[dict[str, np.ndarray]] | None = None
        if cache_dir is None:
            self._loaded = [_prepare_patch_case(c, settings) for c in cases]
        else:
            self._folder, key = cache_identity("patches", cases, settings, cache_dir)
            if read_index(self._folder, key) is None:
                build_atomically(
                    self._folder, lambda tmp: _write_patch_cases(tmp, cases, settings, key)
                )
        keys = ["image", "label"]
        self._pos_neg = mt.RandCropByPosNegLabeld(
            keys, "label", size, pos=pos, neg=neg, fg_indices_key="fg", bg_indices_key="bg"
        )
        self._uniform = mt.RandSpatialCropd(keys, roi_size=size, random_size=False)
        self._augment = (
            build_3d_augmentation(preset)
            if preset
            else mt.Compose(
                [
                    mt.EnsureTyped("image", dtype=torch.float32, track_meta=False),
                    mt.EnsureTyped("label", dtype=torch.int64, track_meta=False),
                ]
            )
        )
        self.reseed(seed)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded": None} if self._folder else self.__dict__

    def _case(self, number: int) -> dict[str, np.ndarray]:
        if self._loaded is None:  # copy-on-write maps: writable for torch, file untouched
            self._loaded = [
                {k: np.load(self._folder / f"{n}-{k}.npy", mmap_mode="c") for k in _PATCH_KEYS}
                for n in range(len(self.patient_ids))
            ]
        return self._loaded[number]

    def reseed(self, seed: int) -> None:
        """Reseed the crops and the augmentation (`make_dataloader` calls this per worker)."""
        self._pos_neg.set_random_state(seed=seed)
        self._uniform.set_random_state(seed=seed + 1)
        reseed_transform(self._augment, seed + 2)

    def __len__(self) -> int:
        return len(self.patient_ids) * self.samples_per_case

    def __getitem__(self, index: int) -> dict[str, Any]:
        number = index // self.samples_per_case
        data = dict(self._case(number))
        if len(data["fg"]) and len(data["bg"]):
            patch = self._pos_neg(data)[0]
        else:
            patch = self._uniform({"image": data["image"], "label": data["label"]})
        out = self._augment({"image": patch["image"], "label": patch["label"]})
        return {
            "image": torch.as_tensor(out["image"]).clone(),
            "label": torch.as_tensor(out["label"]).clone(),
            "patient_id": self.patient_ids[number],
        }
