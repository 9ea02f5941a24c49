"""A memory-mapped cache of preprocessed 2D slices, and the way back to the source grid.

`build_slice_cache` preprocesses each case **once** (`case_cache.prepare_case`: read,
geometry and label checks, normalisation, optional resampling), slices it and writes
``images.npy`` (``(N, C, H, W)`` float32), ``labels.npy`` (``(N, H, W)`` uint8) and
``index.json`` into ``<cache_dir>/slices-<hash>/``. The hash covers the settings and the
case list; ``index.json`` also records each source file's size and mtime, so changed
settings or sources trigger a rebuild. The folder is built under a temporary name and
renamed when complete: an interrupted build never leaves a cache that looks valid.

`SliceCache` opens a finished folder; `SliceCache.merge_case` puts a patient's slices
(or predictions) back into its source geometry.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medseg_helpers.data.case_cache import (
    build_atomically,
    cache_identity,
    prepare_case,
    preprocessing_settings,
    read_index,
)
from medseg_helpers.data.decathlon import Case
from medseg_helpers.data.slicing import SliceInfo, merge_slices, slice_volume
from medseg_helpers.data.volume import Volume

logger = logging.getLogger(__name__)
PathLike = str | os.PathLike


def _place(array: np.ndarray, shape_hw: Sequence[int], offset_hw: Sequence[int], fill):
    """``(..., h, w)`` -> ``(..., H, W)`` with ``out[..., y + oy, x + ox] = array[..., y, x]``.

    Positive offsets pad, negative ones crop; ``fill`` broadcasts against the output.
    """
    out = np.empty(array.shape[:-2] + tuple(shape_hw), dtype=array.dtype)
    out[...] = fill
    src, dst = [], []
    for n_in, n_out, off in zip(array.shape[-2:], shape_hw, offset_hw, strict=True):
        low, high = max(0, off), min(n_out, n_in + off)
        dst.append(slice(low, max(low, high)))
        src.append(slice(low - off, max(low, high) - off))
    out[(..., *dst)] = array[(..., *src)]
    return out


@dataclass(frozen=True)
class CachedCase:
    """Where one patient's slices are in a `SliceCache`, and how to merge them back.

    Attributes:
        patient_id: the case id.
        start: index of its first slice in the cache arrays.
        stop: one past its last slice.
        offset_hw: cached pixel ``[y + oy, x + ox]`` is preprocessed pixel ``[y, x]``
            (positive: padded, negative: cropped), centred.
        slice_info: geometry of the preprocessed (possibly resampled) volume.
        source_info: geometry of the source image (equal unless resampled).
        has_foreground: per slice, whether its cached label has any nonzero pixel.
    """

    patient_id: str
    start: int
    stop: int
    offset_hw: tuple[int, int]
    slice_info: SliceInfo
    source_info: SliceInfo
    has_foreground: tuple[bool, ...]

    @classmethod
    def from_record(cls, record: dict) -> CachedCase:
        """Rebuild from its ``index.json`` record (lists back to tuples, `SliceInfo`)."""
        fields = {**record, "offset_hw": tuple(record["offset_hw"])}
        fields["has_foreground"] = tuple(bool(v) for v in record["has_foreground"])
        for name in ("slice_info", "source_info"):
            fields[name] = SliceInfo(**record[name])
        return cls(**fields)


class SliceCache:
    """A finished slice cache folder, opened read-only (arrays memory-mapped lazily).

    Opening a folder trusts it; `build_slice_cache` is what checks settings and sources.

    Attributes:
        path: the cache folder.
        key: hash of settings, case list and source sizes/mtimes it was built from.
        settings: the preprocessing settings it was built with.
        cases: ``{patient_id: CachedCase}`` in cache order.
        slice_shape: ``(H, W)`` of every cached slice.
        num_channels: ``C``.

    Pickling (e.g. to DataLoader workers) sends the index, not the arrays; each
    process maps the files itself.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        index = json.loads((self.path / "index.json").read_text(encoding="utf-8"))
        self.key: str = index["key"]
        self.settings: dict = index["settings"]
        self.slice_shape: tuple[int, int] = tuple(index["slice_shape"])  # type: ignore[assignment]
        self.num_channels: int = index["num_channels"]
        self.cases = {r["patient_id"]: CachedCase.from_record(r) for r in index["cases"]}
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return sum(c.stop - c.start for c in self.cases.values())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    @property
    def images(self) -> np.ndarray:
        """``(N, C, H, W)`` float32, read-only memory map."""
        return self._open()[0]

    @property
    def labels(self) -> np.ndarray:
        """``(N, H, W)`` uint8, read-only memory map."""
        return self._open()[1]

    @property
    def has_foreground(self) -> np.ndarray:
        """``(N,)`` bool: slices whose label has a nonzero pixel."""
        return np.array([v for c in self.cases.values() for v in c.has_foreground], dtype=bool)

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (
                np.load(self.path / "images.npy", mmap_mode="r"),
                np.load(self.path / "labels.npy", mmap_mode="r"),
            )
        return self._arrays

    def merge_case(self, patient_id: str, slices: np.ndarray) -> Volume:
        """Put one patient's 2D slices (or predictions) back into its source geometry.

        Undoes the in-plane pad/crop (cropped-away pixels become 0), stacks along the
        cache's axis (`merge_slices`) and, if the cache was resampled, resamples onto the
        source grid (nearest for integer dtypes, linear otherwise).

        Args:
            patient_id: a key of `cases`.
            slices: ``(n, H, W)`` (e.g. int ``pred``) or ``(n, C, H, W)`` (e.g. float
                ``probs``), ``n`` slices of this patient in order, ``(H, W)`` =
                `slice_shape`.

        Returns:
            A `Volume` on the source image's grid (shape, spacing, origin, direction).

        Raises:
            KeyError: unknown ``patient_id``.
            ValueError: wrong ``(H, W)`` or number of slices (both shapes named).
        """
        case = self.cases[patient_id]
        slices = np.asarray(slices)
        if slices.shape[-2:] != self.slice_shape:
            raise ValueError(
                f"slices have (H, W) = {slices.shape[-2:]}; this cache's slices are "
                f"{self.slice_shape}"
            )
        merged = merge_slices(
            _place(slices, case.slice_info.slice_shape, [-o for o in case.offset_hw], 0),
            case.slice_info,
        )
        if case.source_info == case.slice_info:
            return merged
        return _resample_onto(merged, case.source_info)


def _resample_onto(volume: Volume, grid: SliceInfo) -> Volume:
    """Resample ``volume`` onto the grid of ``grid`` (nearest for integer voxels)."""
    is_label = np.issubdtype(volume.array.dtype, np.integer) and volume.array.ndim == 3
    reference = Volume(
        np.zeros(grid.spatial_shape, np.uint8),
        grid.spacing_mm,
        grid.origin_mm,
        np.reshape(grid.direction, (3, 3)),
    ).to_sitk()
    parts = (
        [volume]
        if volume.array.ndim == 3
        else [volume.with_array(c) for c in volume.array.astype(np.float32)]
    )
    method = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    arrays = [
        Volume.from_sitk(sitk.Resample(p.to_sitk(), reference, sitk.Transform(), method, 0.0)).array
        for p in parts
    ]
    spacing, origin, direction = grid.spacing_mm, grid.origin_mm, np.reshape(grid.direction, (3, 3))
    array = arrays[0] if volume.array.ndim == 3 else np.stack(arrays)
    return Volume(array, spacing, origin, direction)


def build_slice_cache(
    cases: Sequence[Case],
    cache_dir: PathLike,
    *,
    normalisation: str = "zscore",
    normalisation_kwargs: Mapping[str, Any] | None = None,
    axis: int = 0,
    spacing_mm: tuple[float, float, float] | None = None,
    slice_shape: tuple[int, int] | None = None,
) -> SliceCache:
    """Preprocess every case once into a memory-mapped slice cache, or reuse a valid one.

    Per case: `load_image_label_pair` (geometry check, integer label), label values
    checked against ``case.label_values``, optional resampling to ``spacing_mm`` (linear
    image, nearest label), normalisation per channel, slicing along ``axis``. Slices of
    different in-plane sizes are centred and padded or cropped to ``slice_shape``
    (default: the largest height and width over all cases, so nothing is cropped); the
    image is padded with each case's per-channel minimum (its background), the label
    with 0. `SliceCache.merge_case` undoes all of it.

    Args:
        cases: e.g. from `read_decathlon`.
        cache_dir: parent folder of the cache (created).
        normalisation: a key of `case_cache.NORMALISATIONS` ("zscore", "clip_zscore",
            "minmax", "ct_window", "none").
        normalisation_kwargs: keyword arguments for it, e.g. ``{"preset": "soft_tissue"}``.
        axis: spatial axis to slice along, 0 (Z), 1 (Y) or 2 (X).
        spacing_mm: resample to ``(sz, sy, sx)`` mm first; None keeps each case's grid.
        slice_shape: fixed ``(H, W)`` of the cached slices.

    Returns:
        The opened `SliceCache`. A second call with the same settings and unchanged
        sources (same sizes and mtimes) reads no volume.

    Raises:
        FileNotFoundError, GeometryMismatchError, ValueError: a missing file, mismatched
            image/label geometry, undeclared label values or NaN voxels; the message
            names the case. Nothing is left behind.
    """
    if axis not in (0, 1, 2) or not cases:
        raise ValueError(f"need axis in (0, 1, 2) and at least one case; got {axis}, {len(cases)}")
    size = None if slice_shape is None else [int(n) for n in slice_shape]
    settings = preprocessing_settings(
        normalisation, normalisation_kwargs, spacing_mm, axis=axis, slice_shape=size
    )
    folder, key = cache_identity("slices", cases, settings, cache_dir)
    if read_index(folder, key) is None:
        logger.info("building slice cache %s from %d cases", folder, len(cases))
        build_atomically(folder, lambda tmp: _write_slices(tmp, cases, settings, key))
    return SliceCache(folder)


def _write_slices(tmp: Path, cases: Sequence[Case], settings: dict, key: str) -> None:
    """Stage 1: preprocess each case into its own file. Stage 2: place into one array."""
    staged = []
    for number, case in enumerate(cases):
        image, label, source = prepare_case(case, settings)
        images, info = slice_volume(image, settings["axis"])  # (n, C, h, w)
        labels = slice_volume(label, settings["axis"])[0]
        np.save(tmp / f"stage-{number}-image.npy", images)
        np.save(tmp / f"stage-{number}-label.npy", labels)
        fill = np.min(images, axis=(0, 2, 3)).reshape(1, -1, 1, 1)
        staged.append((case, info, slice_volume(source, settings["axis"])[1], fill))
    heights, widths = zip(*(info.slice_shape for _, info, _, _ in staged), strict=True)
    shape_hw = settings["slice_shape"] or [max(heights), max(widths)]
    total = sum(info.num_slices for _, info, _, _ in staged)
    num_channels = int(staged[0][3].shape[1])
    out_images = np.lib.format.open_memmap(
        tmp / "images.npy", "w+", np.float32, (total, num_channels, *shape_hw)
    )
    out_labels = np.lib.format.open_memmap(tmp / "labels.npy", "w+", np.uint8, (total, *shape_hw))
    records, start = [], 0
    for number, (case, info, source_info, fill) in enumerate(staged):
        images = np.load(tmp / f"stage-{number}-image.npy", mmap_mode="r")
        if images.shape[1] != num_channels:
            raise ValueError(
                f"case {case.patient_id!r}: {images.shape[1]} channels, "
                f"the first case has {num_channels}"
            )
        labels = np.load(tmp / f"stage-{number}-label.npy", mmap_mode="r")
        offset = [(n - h) // 2 for n, h in zip(shape_hw, info.slice_shape, strict=True)]
        stop = start + info.num_slices
        out_images[start:stop] = _place(images, shape_hw, offset, fill)
        out_labels[start:stop] = placed = _place(labels, shape_hw, offset, 0)
        records.append(
            {
                "patient_id": case.patient_id,
                "start": start,
                "stop": stop,
                "offset_hw": offset,
                "slice_info": asdict(info),
                "source_info": asdict(source_info),
                "has_foreground": placed.reshape(len(placed), -1).any(axis=1).tolist(),
            }
        )
        start = stop
        del images, labels
        for kind in ("image", "label"):
            (tmp / f"stage-{number}-{kind}.npy").unlink()
    out_images.flush()
    out_labels.flush()
    del out_images, out_labels
    index = {
        "key": key,
        "settings": settings,
        "slice_shape": list(shape_hw),
        "num_channels": num_channels,
        "cases": records,
    }
    (tmp / "index.json").write_text(json.dumps(index) + "\n", encoding="utf-8")
