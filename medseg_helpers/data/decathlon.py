"""Decathlon datasets: read a task folder's ``dataset.json`` into labelled `Case`s.

Only the listing is read here (paths checked to exist); `medseg_helpers.data.slice_cache` and
`medseg_helpers.data.patch_dataset` read, check and preprocess the volumes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from medseg_helpers.data.splits import extract_patient_id

PathLike = str | os.PathLike


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
    Files are only checked to exist here; `slice_cache.build_slice_cache` reads and
    validates them.

    Args:
        dataset_dir: the task folder holding ``dataset.json``, ``imagesTr/``, ``labelsTr/``.

    Returns:
        One `Case` per training entry; ``label_values`` are the keys of ``"labels"``.

    Raises:
        FileNotFoundError: no ``dataset.json``, or listed files missing (names them).
        ValueError: ``dataset.json`` is not valid JSON or lacks ``training``/``labels``.
    """
    root = Path(dataset_dir)
    path, meta = _load_dataset_json(root)
    training = meta.get("training")
    if not isinstance(training, list):
        raise ValueError(f"{path}: needs a 'training' list and a 'labels' object (Decathlon)")
    label_values = tuple(sorted(_labels(path, meta)))
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


def read_class_names(dataset_dir: PathLike) -> list[str]:
    """Class names in label order from ``dataset.json``'s ``"labels"``.

    Args:
        dataset_dir: the task folder holding ``dataset.json``, e.g. with
            ``"labels": {"0": "background", "1": "organ", "2": "lesion"}``.

    Returns:
        ``K`` names, background first: ``names[v]`` names label value ``v``
        (``["background", "organ", "lesion"]`` above).

    Raises:
        FileNotFoundError: no ``dataset.json``.
        ValueError: not valid JSON, no ``labels`` object, keys that are not integers, or
            values that are not ``0..K-1`` (remap them with `labels.remap_labels`).
    """
    path, meta = _load_dataset_json(Path(dataset_dir))
    labels = _labels(path, meta)
    if sorted(labels) != list(range(len(labels))):
        raise ValueError(f"{path}: labels {sorted(labels)} are not 0..K-1; remap them "
                         "(labels.remap_labels) before training")
    return [labels[k] for k in range(len(labels))]


def _load_dataset_json(root: Path) -> tuple[Path, dict]:
    """``(path, parsed content)`` of ``root/dataset.json``; a non-object parses as ``{}``."""
    path = root / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"no dataset.json in {root}: not a Decathlon dataset folder")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    return path, meta if isinstance(meta, dict) else {}


def _labels(path: Path, meta: dict) -> dict[int, str]:
    """``{label value: class name}`` from the ``labels`` object of ``meta`` (read from ``path``)."""
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        raise ValueError(f"{path}: needs a 'training' list and a 'labels' object (Decathlon)")
    try:
        return {int(k): str(v) for k, v in labels.items()}
    except ValueError as err:
        raise ValueError(f"{path}: 'labels' keys must be integers; got {list(labels)}") from err
