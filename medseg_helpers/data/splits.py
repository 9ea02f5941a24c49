"""Patient-level data splits: train/val/test and k-fold, stratified by lesion presence.

Split by patient, never by slice: neighbouring slices of one scan are nearly identical,
so a slice-level split puts the same patient in train and validation and inflates Dice.
Splits are deterministic from ``seed`` and independent of the order of the input ids,
and are saved as JSON (a list of ``{"train": [...], "val": [...], "test": [...]}``,
the layout of nnU-Net's ``splits_final.json`` plus a ``test`` key) so every notebook
and run reuses the same split.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_helpers.fileutil import write_text_atomic

_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".npz", ".dcm")


def extract_patient_id(filename: str | os.PathLike, strip_channel: bool = False) -> str:
    """Patient (case) id from a Decathlon-style file name.

    ``'imagesTr/hippocampus_001.nii.gz'`` gives ``'hippocampus_001'``. With
    ``strip_channel=True`` an nnU-Net channel suffix is removed too:
    ``'BRATS_001_0000.nii.gz'`` gives ``'BRATS_001'``.

    Args:
        filename: a path or a bare name.
        strip_channel: also drop a trailing ``_`` plus four digits.

    Raises:
        ValueError: for macOS metadata files (``._name``, found in Decathlon tarballs)
            and empty names.
    """
    name = Path(filename).name
    if name.startswith("._"):
        raise ValueError(f"{name!r} is a macOS metadata file, not an image; skip it")
    for ext in _EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    if strip_channel:
        name = re.sub(r"_\d{4}$", "", name)
    if not name:
        raise ValueError(f"no patient id in {str(filename)!r}")
    return name


@dataclass(frozen=True)
class PatientSplit:
    """Patient ids per split, each sorted; no id appears twice (checked on creation).

    Attributes:
        train: ids for training.
        val: ids for validation (model selection, early stopping).
        test: ids held out until the end (may be empty).
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            object.__setattr__(self, name, tuple(sorted(str(i) for i in getattr(self, name))))
        check_no_overlap({"train": self.train, "val": self.val, "test": self.test})


def check_no_overlap(groups: Mapping[str, Iterable[str]]) -> None:
    """Raise if any patient id appears in more than one group (or twice in one).

    Map file or slice names to ids first with `extract_patient_id` to catch a
    slice-level split.

    Args:
        groups: ``{"train": ids, "val": ids, ...}``.

    Raises:
        ValueError: naming each offending id and the groups it is in.
    """
    seen: dict[str, list[str]] = {}
    for group, ids in groups.items():
        for patient in ids:
            seen.setdefault(str(patient), []).append(group)
    repeated = {p: g for p, g in seen.items() if len(g) > 1}
    if repeated:
        listed = "; ".join(f"{p!r} in {' and '.join(g)}" for p, g in sorted(repeated.items()))
        raise ValueError(f"{len(repeated)} patient(s) appear more than once: {listed}")


def _validated(patient_ids: Sequence[str], has_lesion: Sequence[bool] | None) -> np.ndarray:
    ids = [str(i) for i in patient_ids]
    check_no_overlap({"patient_ids": ids})
    if has_lesion is None:
        return np.zeros(len(ids), dtype=bool)
    flags = np.asarray(has_lesion, dtype=bool)
    if flags.shape != (len(ids),):
        raise ValueError(f"has_lesion has shape {flags.shape}; expected ({len(ids)},)")
    return flags


def _shuffled_strata(
    patient_ids: Sequence[str], flags: np.ndarray, seed: int
) -> tuple[list[str], list[str]]:
    """(positives, negatives), each sorted then shuffled: independent of input order."""
    rng = np.random.default_rng(seed)
    pairs = sorted(zip((str(i) for i in patient_ids), flags.tolist(), strict=True))
    positives = [p for p, f in pairs if f]
    negatives = [p for p, f in pairs if not f]
    return (
        [positives[i] for i in rng.permutation(len(positives))],
        [negatives[i] for i in rng.permutation(len(negatives))],
    )


def split_patients(
    patient_ids: Sequence[str],
    has_lesion: Sequence[bool] | None = None,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> PatientSplit:
    """Random train/val/test split of patients, stratified by lesion presence.

    Split sizes are ``round(fraction * n)`` (train gets the rest). Positives are shared
    out by largest remainder, so each split holds ``floor`` or ``ceil`` of its
    proportional share of lesion cases (within one case of exact).

    Args:
        patient_ids: unique ids, e.g. from `extract_patient_id`.
        has_lesion: one bool per patient (any lesion voxel in the label); None = no
            stratification.
        val_fraction: share of patients for validation, in [0, 1).
        test_fraction: share for the held-out test set, in [0, 1).
        seed: same seed and ids give the same split, whatever the input order.

    Returns:
        The `PatientSplit`.

    Raises:
        ValueError: duplicate ids, bad fractions, or an empty training set.
    """
    flags = _validated(patient_ids, has_lesion)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise ValueError(
            f"fractions must be in [0, 1); got val={val_fraction}, test={test_fraction}"
        )
    n = len(flags)
    n_test = int(np.floor(test_fraction * n + 0.5))
    n_val = int(np.floor(val_fraction * n + 0.5))
    sizes = np.array([n - n_val - n_test, n_val, n_test])  # train, val, test
    if sizes[0] < 1:
        raise ValueError(f"no patients left for training: n={n}, val={n_val}, test={n_test}")
    quotas = sizes * flags.sum() / n
    pos_counts = np.floor(quotas).astype(int)
    order = np.argsort(-(quotas - pos_counts), kind="stable")
    pos_counts[order[: int(flags.sum()) - pos_counts.sum()]] += 1
    positives, negatives = _shuffled_strata(patient_ids, flags, seed)
    groups = []
    pos_start = neg_start = 0
    for size, n_pos in zip(sizes.tolist(), pos_counts.tolist(), strict=True):
        n_neg = size - n_pos
        groups.append(
            positives[pos_start : pos_start + n_pos] + negatives[neg_start : neg_start + n_neg]
        )
        pos_start += n_pos
        neg_start += n_neg
    return PatientSplit(train=tuple(groups[0]), val=tuple(groups[1]), test=tuple(groups[2]))


def kfold_patients(
    patient_ids: Sequence[str],
    has_lesion: Sequence[bool] | None = None,
    *,
    n_folds: int = 5,
    seed: int = 0,
) -> list[PatientSplit]:
    """Stratified k-fold cross-validation over patients.

    Positives, then negatives, are dealt round-robin to the folds, so fold sizes differ by
    at most one and each fold holds ``floor`` or ``ceil`` of ``positives / n_folds``.
    Hold out a test set first with `split_patients` (``val_fraction=0``) if you need one.

    Args:
        patient_ids: unique ids.
        has_lesion: one bool per patient; None = no stratification.
        n_folds: number of folds, 2 <= n_folds <= number of patients.
        seed: as in `split_patients`.

    Returns:
        ``n_folds`` `PatientSplit` objects; fold ``k`` validates on the k-th part, trains on
        the rest, and has an empty test set.

    Raises:
        ValueError: duplicate ids or a bad ``n_folds``.
    """
    flags = _validated(patient_ids, has_lesion)
    if not 2 <= n_folds <= len(flags):
        raise ValueError(f"n_folds must be in [2, {len(flags)}]; got {n_folds}")
    positives, negatives = _shuffled_strata(patient_ids, flags, seed)
    dealt = positives + negatives
    folds = [dealt[k::n_folds] for k in range(n_folds)]
    return [
        PatientSplit(
            train=tuple(p for j, fold in enumerate(folds) if j != k for p in fold),
            val=tuple(folds[k]),
        )
        for k in range(n_folds)
    ]


def save_splits(splits: PatientSplit | Sequence[PatientSplit], path: str | os.PathLike) -> Path:
    """Write one split or a list of folds to JSON atomically; returns the path."""
    if isinstance(splits, PatientSplit):
        splits = [splits]
    records = [{"train": list(s.train), "val": list(s.val), "test": list(s.test)} for s in splits]
    return write_text_atomic(path, json.dumps(records, indent=2) + "\n")


def load_splits(path: str | os.PathLike) -> list[PatientSplit]:
    """Read splits written by `save_splits` (or nnU-Net's ``splits_final.json``).

    Raises:
        ValueError: if the file is not a list of objects with ``train`` and ``val``, or a
            patient appears in two splits of one entry.
    """
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and {"train", "val"} <= r.keys() for r in records
    ):
        raise ValueError(f"{path}: expected a JSON list of {{'train': [...], 'val': [...]}}")
    return [
        PatientSplit(tuple(r["train"]), tuple(r["val"]), tuple(r.get("test", ()))) for r in records
    ]
