"""Preprocess a case once and keep the result in a cache folder that rebuilds itself.

Shared by `medseg_helpers.data.slice_cache` (2D slices) and `medseg_helpers.data.patch_dataset`
(3D patches):

* `prepare_case` reads one `Case` (geometry and label checks), optionally resamples it
  and normalises each channel with one of `NORMALISATIONS`; errors name the case.
* A cache folder ``<cache_dir>/<prefix>-<hash>/`` is named by `cache_identity`: the hash
  covers the settings and the case list, and the key stored in its ``index.json`` also
  covers each source file's size and mtime, so changed settings or sources trigger a
  rebuild (`read_index` returns None). `build_atomically` builds the folder under a
  temporary name and renames it when complete: an interrupted build never leaves a
  cache that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg_helpers.data.decathlon import Case
from medseg_helpers.data.io import load_image_label_pair
from medseg_helpers.data.volume import Volume
from medseg_helpers.fileutil import current_umask
from medseg_helpers.transforms import preprocess
from medseg_helpers.transforms.labels import check_label_values

PathLike = str | os.PathLike
CACHE_FORMAT_VERSION = 1

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


def preprocessing_settings(
    normalisation: str, kwargs: Mapping | None, spacing_mm, **extra
) -> dict:
    """The JSON-able settings `prepare_case` reads (and a cache folder's hash covers).

    Args:
        normalisation: a key of `NORMALISATIONS`.
        kwargs: keyword arguments for it, or None.
        spacing_mm: ``(sz, sy, sx)`` mm to resample to, or None to keep each case's grid.
        **extra: further settings of the caller (e.g. ``axis``, ``patch_size``).

    Raises:
        ValueError: unknown ``normalisation`` (the known ones are listed).
    """
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


def prepare_case(case: Case, settings: dict) -> tuple[Volume, Volume, Volume]:
    """Read, check, resample and normalise one case.

    Returns ``(image (C, Z, Y, X) float32, label (Z, Y, X) uint8, source image)``.
    """
    try:
        image, label = load_image_label_pair(case.image_path, case.label_path)
        if case.label_values is not None:
            check_label_values(label.array, case.label_values)
        if label.array.min() < 0 or label.array.max() > 255:
            raise ValueError("label values must lie in [0, 255] to be stored as uint8")
        prepared = prepare_image(image, settings["spacing_mm"], settings["normalisation"],
                                 settings["normalisation_kwargs"])
        if settings["spacing_mm"] is not None:
            label = preprocess.resample_to_spacing(label, settings["spacing_mm"], is_label=True)
    except (ValueError, OSError) as err:
        raise _with_case(err, case) from err
    return prepared, label.with_array(label.array.astype(np.uint8)), image


def prepare_image(image: Volume, spacing_mm: Sequence[float] | None, normalisation: str,
                  normalisation_kwargs: dict[str, Any]) -> Volume:
    """Resample (linear) to ``spacing_mm`` if given, then normalise each channel.

    The one image preprocessing of the course: training caches (`prepare_case`) and the
    service (`deploy.preprocessing.Preprocessing.apply`) both call it.

    Args:
        image: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` scan with its geometry (raw intensities).
        spacing_mm: target voxel size ``(sz, sy, sx)`` in mm; None keeps the grid.
        normalisation: a name in `NORMALISATIONS` (e.g. ``"zscore"``).
        normalisation_kwargs: its keyword arguments.

    Returns:
        ``(C, Z', Y', X')`` float32 with the (resampled) geometry.
    """
    if spacing_mm is not None:
        image = preprocess.resample_to_spacing(image, spacing_mm)
    normalise = NORMALISATIONS[normalisation]
    channels = image.array if image.array.ndim == 4 else image.array[np.newaxis]
    return image.with_array(np.stack([normalise(c, **normalisation_kwargs) for c in channels]))


# ------------------------------------------------------------------------ cache folders


def digest(value: Any) -> str:
    """SHA-256 hex digest of ``value`` as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _stat(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def cache_identity(
    prefix: str, cases: Sequence[Case], settings: dict, cache_dir: PathLike
) -> tuple[Path, str]:
    """``(folder, key)``: the folder depends on settings + case list, the key also on the
    sources' sizes and mtimes (FileNotFoundError names a missing case)."""
    listing = [[c.patient_id, str(c.image_path), str(c.label_path), c.label_values] for c in cases]
    try:
        stats = [[_stat(Path(c.image_path)), _stat(Path(c.label_path))] for c in cases]
    except FileNotFoundError as err:
        raise FileNotFoundError(f"source file missing: {err.filename}") from err
    identity = {"version": CACHE_FORMAT_VERSION, "settings": settings, "cases": listing}
    folder = Path(cache_dir) / f"{prefix}-{digest(identity)[:16]}"
    return folder, digest({**identity, "stats": stats})


def read_index(folder: Path, key: str) -> dict | None:
    """The folder's index if it is complete and was built for ``key``, else None."""
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("key") == key else None


def build_atomically(folder: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp)`` in a temporary sibling folder, then swap it in for ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp's folder is private; the cache need not be
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
