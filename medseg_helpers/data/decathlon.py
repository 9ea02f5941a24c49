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
