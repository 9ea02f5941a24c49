"""Datasets: Decathlon cases, a memory-mapped 2D slice cache, 3D patches, safe DataLoaders.

The seed outline's Dataset reloads and re-normalises a whole file for every item
(`NaiveVolumeDataset`, kept only to measure it). Here each volume is preprocessed
**once** (read, geometry and label checks, normalisation, optional resampling) into a
cache, and items are cheap reads:

* `build_slice_cache` writes ``images.npy`` (``(N, C, H, W)`` float32), ``labels.npy``
  (``(N, H, W)`` uint8) and ``index.json`` into ``<cache_dir>/slices-<hash>/``. The
  hash covers the settings and the case list; ``index.json`` also records each source
  file's size and mtime, so changed settings or sources trigger a rebuild. The folder
  is built under a temporary name and renamed when complete: an interrupted build
  never leaves a cache that looks valid.
* `SliceDataset` serves the slices of some patients (split by patient, never by slice)
  with a tunable share of background-only slices, redrawn every epoch.
* `PatchDataset3D` draws 3D patches with MONAI's positive/negative sampling.
* `make_dataloader` gives DataLoader defaults that neither hang nor repeat augmentations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from medseg_helpers import cropping, preprocess
from medseg_helpers.io import load_image_label_pair, read_volume
from medseg_helpers.labels import check_label_values
from medseg_helpers.slicing import SliceInfo, merge_slices, slice_volume
from medseg_helpers.splits import extract_patient_id
from medseg_helpers.volume import Volume

logger = logging.getLogger(__name__)
PathLike = str | os.PathLike
CACHE_FORMAT_VERSION = 1
#: Foreground/background voxel positions kept per case for 3D patch centres.
MAX_CENTRE_CANDIDATES = 100_000


@dataclass(frozen=True)
class Case:
    """One labelled scan of a dataset.

    Attributes:
        patient_id: case id from the image file name (`extract_patient_id`); Decathlon
            has one case per patient, so splits over these ids are patient-level.
        image_path: the image file.
        label_path: its label map.
        label_values: label values declared in ``dataset.json`` (None: not checked).
    """

    patient_id: str
    image_path: Path
    label_path: Path
    label_values: tuple[int, ...] | None = None


def read_decathlon(dataset_dir: PathLike) -> list[Case]:
    """Training cases listed in a Decathlon ``dataset.json``, in its order.

    Entries such as ``"./imagesTr/x.nii.gz"`` are resolved against ``dataset_dir``;
    macOS metadata entries (``._x.nii.gz``, found in some Decathlon tarballs) are skipped.
    Files are only checked to exist here; `build_slice_cache` reads and validates them.

    Args:
        dataset_dir: the task folder holding ``dataset.json``, ``imagesTr/``, ``labelsTr/``.

    Returns:
        One `Case` per training entry; ``label_values`` are the keys of ``"labels"``.

    Raises:
        FileNotFoundError: no ``dataset.json``, or listed files missing (names them).
        ValueError: ``dataset.json`` is not valid JSON or lacks ``training``/``labels``.
    """
    root = Path(dataset_dir)
    path = root / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"no dataset.json in {root}: not a Decathlon dataset folder")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    meta = meta if isinstance(meta, dict) else {}
    training, labels = meta.get("training"), meta.get("labels")
    if not isinstance(training, list) or not isinstance(labels, dict):
        raise ValueError(f"{path}: needs a 'training' list and a 'labels' object (Decathlon)")
    try:
        label_values = tuple(sorted(int(k) for k in labels))
    except ValueError as err:
        raise ValueError(f"{path}: 'labels' keys must be integers; got {list(labels)}") from err
    cases, missing = [], []
    for number, entry in enumerate(training):
        if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
            raise ValueError(f"{path}: training entry {number} needs 'image' and 'label': {entry}")
        if Path(entry["image"]).name.startswith("._"):
            continue
        image, label = root / entry["image"], root / entry["label"]
        missing += [str(p) for p in (image, label) if not p.is_file()]
        cases.append(Case(extract_patient_id(image), image, label, label_values))
    if missing:
        raise FileNotFoundError(
            f"{path} lists {len(missing)} missing file(s): {', '.join(missing[:5])}"
        )
    return cases


# ----------------------------------------------------------------------- preprocessing


def _clip_zscore(image: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    return preprocess.normalise_zscore(preprocess.clip_percentiles(image, lower, upper))


def _no_normalisation(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


#: Names accepted as ``normalisation``; keyword arguments go in ``normalisation_kwargs``.
NORMALISATIONS: dict[str, Callable[..., np.ndarray]] = {
    "zscore": preprocess.normalise_zscore,
    "clip_zscore": _clip_zscore,  # per-volume form of nnU-Net's CT scheme: clip, z-score
    "minmax": preprocess.normalise_minmax,
    "ct_window": preprocess.apply_ct_window,  # needs {"preset": ...} or width/level
    "none": _no_normalisation,
}


def _settings(normalisation: str, kwargs: Mapping | None, spacing_mm, **extra) -> dict:
    if normalisation not in NORMALISATIONS:
        raise ValueError(
            f"unknown normalisation {normalisation!r}; use one of {list(NORMALISATIONS)}"
        )
    spacing = None if spacing_mm is None else [float(s) for s in spacing_mm]
    return {
        "normalisation": normalisation,
        "normalisation_kwargs": dict(kwargs or {}),
        "spacing_mm": spacing,
        **extra,
    }


def _with_case(err: Exception, case: Case) -> Exception:
    """The same error type with the patient id in front (falls back to ValueError)."""
    message = f"case {case.patient_id!r}: {err}"
    try:
        return type(err)(message)
    except TypeError:
        return ValueError(message)


def _prepare(case: Case, settings: dict) -> tuple[Volume, Volume, Volume]:
    """Read, check, resample and normalise one case.

    Returns ``(image (C, Z, Y, X) float32, label (Z, Y, X) uint8, source image)``.
    """
    try:
        image, label = load_image_label_pair(case.image_path, case.label_path)
        if case.label_values is not None:
            check_label_values(label.array, case.label_values)
        if label.array.min() < 0 or label.array.max() > 255:
            raise ValueError("label values must lie in [0, 255] to be stored as uint8")
        source = image
        if settings["spacing_mm"] is not None:
            image = preprocess.resample_to_spacing(image, settings["spacing_mm"])
            label = preprocess.resample_to_spacing(label, settings["spacing_mm"], is_label=True)
        normalise = NORMALISATIONS[settings["normalisation"]]
        channels = image.array if image.array.ndim == 4 else image.array[np.newaxis]
        normed = np.stack([normalise(c, **settings["normalisation_kwargs"]) for c in channels])
    except (ValueError, OSError) as err:
        raise _with_case(err, case) from err
    return image.with_array(normed), label.with_array(label.array.astype(np.uint8)), source


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


# ------------------------------------------------------------------------ cache folders


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _stat(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def _cache_identity(prefix: str, cases: Sequence[Case], settings: dict, cache_dir: PathLike):
    """``(folder, key)``: the folder depends on settings + case list, the key also on the
    sources' sizes and mtimes (FileNotFoundError names a missing case)."""
    listing = [[c.patient_id, str(c.image_path), str(c.label_path), c.label_values] for c in cases]
    try:
        stats = [[_stat(Path(c.image_path)), _stat(Path(c.label_path))] for c in cases]
    except FileNotFoundError as err:
        raise FileNotFoundError(f"source file missing: {err.filename}") from err
    identity = {"version": CACHE_FORMAT_VERSION, "settings": settings, "cases": listing}
    folder = Path(cache_dir) / f"{prefix}-{_digest(identity)[:16]}"
    return folder, _digest({**identity, "stats": stats})


def _read_index(folder: Path, key: str) -> dict | None:
    """The folder's index if it is complete and was built for ``key``, else None."""
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("key") == key else None


def _build_atomically(folder: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp)`` in a temporary sibling folder, then swap it in for ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        build(tmp)
        if folder.exists():
            os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.exists():
                raise  # else another process published the same folder first: use theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- slice cache


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
        normalisation: a key of `NORMALISATIONS` ("zscore", "clip_zscore", "minmax",
            "ct_window", "none").
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
    settings = _settings(
        normalisation, normalisation_kwargs, spacing_mm, axis=axis, slice_shape=size
    )
    folder, key = _cache_identity("slices", cases, settings, cache_dir)
    if _read_index(folder, key) is None:
        logger.info("building slice cache %s from %d cases", folder, len(cases))
        _build_atomically(folder, lambda tmp: _write_slices(tmp, cases, settings, key))
    return SliceCache(folder)


def _write_slices(tmp: Path, cases: Sequence[Case], settings: dict, key: str) -> None:
    """Stage 1: preprocess each case into its own file. Stage 2: place into one array."""
    staged = []
    for number, case in enumerate(cases):
        image, label, source = _prepare(case, settings)
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


# ------------------------------------------------------------------------------ datasets


def _reseed_transform(transform: Any, seed: int) -> None:
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
            `medseg_helpers.augment.build_2d_augmentation` (image ``(H, W)`` for one
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
        _reseed_transform(self.transform, seed)

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


def _centre_candidates(label: np.ndarray, patient_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of foreground and background voxels, each subsampled to at most
    `MAX_CENTRE_CANDIDATES` (a uniform subset: same distribution of patch centres)."""
    rng = np.random.default_rng(int(_digest(patient_id)[:8], 16))
    flat = label.ravel() > 0
    out = []
    for indices in (np.flatnonzero(flat), np.flatnonzero(~flat)):
        if len(indices) > MAX_CENTRE_CANDIDATES:
            indices = np.sort(rng.choice(indices, MAX_CENTRE_CANDIDATES, replace=False))
        out.append(indices.astype(np.int64))
    return out[0], out[1]


def _prepare_patch_case(case: Case, settings: dict) -> dict[str, np.ndarray]:
    """Preprocessed case padded (image with its minimum, label with 0) to >= the patch."""
    image, label, _ = _prepare(case, settings)
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
        preset: `medseg_helpers.augment.build_3d_augmentation` preset applied after the
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

        from medseg_helpers.augment import build_3d_augmentation

        if samples_per_case < 1 or pos < 0 or neg < 0 or pos + neg <= 0:
            raise ValueError(
                f"need samples_per_case >= 1, pos, neg >= 0, pos + neg > 0; got "
                f"{samples_per_case}, {pos}, {neg}"
            )
        size = [int(n) for n in patch_size]
        settings = _settings(normalisation, normalisation_kwargs, spacing_mm, patch_size=size)
        self.patient_ids = [c.patient_id for c in cases]
        self.samples_per_case = samples_per_case
        self._folder: Path | None = None
        self._loaded: list[dict[str, np.ndarray]] | None = None
        if cache_dir is None:
            self._loaded = [_prepare_patch_case(c, settings) for c in cases]
        else:
            self._folder, key = _cache_identity("patches", cases, settings, cache_dir)
            if _read_index(self._folder, key) is None:
                _build_atomically(
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
        _reseed_transform(self._augment, seed + 2)

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
