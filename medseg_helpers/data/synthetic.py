"""Deterministic synthetic phantoms: the course's embedded default dataset.

Each case is an abdomen-like scan with three label classes, 0 background, 1 organ
(a deformed ellipsoid, sometimes with a second lobe) and 2 lesion (0 to 3 ellipsoids
of varied size and contrast, inside or touching the organ). The organ never reaches
the first or last slice, and one case in every block of four consecutive case indices
(0-3, 4-7, ...) has no lesion, so stratified splits always have both kinds.

Two flavours:

* ``"mr"``: arbitrary units, roughly 0-1000, float32. Body with a bright fat rim,
  visceral fat, spine and aorta, a smooth multiplicative bias field, Rician noise,
  slices three times thicker than the pixels.
* ``"ct"``: Hounsfield units stored as int16, like real CT. Air -1000, fat about -100,
  soft tissue about 40, organ 58-78, hypodense lesions 10-30 (sometimes barely darker
  than the organ), spine and ribs at 700 HU and above, the patient table, bowel gas,
  and in about a third of the cases a 3000 HU metal clip with streaks, which is what
  breaks ``image / image.max()``.

Everything is drawn from ``numpy.random.default_rng`` seeded with
``(seed, flavour, split, case index)``, so a case depends only on those and on the
shape and spacing, never on how many cases are written. Geometry is drawn before any
voxel noise and evaluated in millimetres, so the same case at another shape shows the
same anatomy. ``SimpleITK`` writes gzip headers without a timestamp, so the same
arguments give byte-identical ``.nii.gz`` files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg_helpers.data.io import write_volume
from medseg_helpers.data.phantom import check_flavour, check_shape, make_phantom
from medseg_helpers.data.volume import Volume, check_spacing
from medseg_helpers.fileutil import write_text_atomic

#: Bumped whenever the same arguments would give different phantoms.
GENERATOR_VERSION = 1
LABELS: dict[int, str] = {0: "background", 1: "organ", 2: "lesion"}
DEFAULT_NUM_CASES = 20
DEFAULT_SHAPE: tuple[int, int, int] = (32, 64, 64)
#: Lesion-free cases: exactly one in each block of this many consecutive case indices.
LESION_FREE_BLOCK = 4

_FOV_MM = {"mr": 280.0, "ct": 360.0}  # in-plane field of view along the longer axis
_SLICE_RATIO = {"mr": 3.0, "ct": 2.0}  # slice spacing / pixel spacing
_FLAVOUR_CODE = {"mr": 0, "ct": 1}
_SPLIT_CODE = {"train": 0, "test": 1}
_MODALITY = {"mr": "MR", "ct": "CT"}


def default_spacing_mm(flavour: str, shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Voxel size used when none is given: anisotropic, scaled to the shape.

    Square pixels cover a fixed in-plane field of view (280 mm MR, 360 mm CT) along
    the longer in-plane axis; slices are 3x (MR) or 2x (CT) thicker than pixels.
    For example MR ``(32, 64, 64)`` gives ``(13.125, 4.375, 4.375)``.

    Args:
        flavour: ``"mr"`` or ``"ct"``.
        shape: ``(Z, Y, X)`` voxels.

    Returns:
        ``(sz, sy, sx)`` in mm.
    """
    check_flavour(flavour)
    pixel = _FOV_MM[flavour] / max(shape[1], shape[2])
    return (_SLICE_RATIO[flavour] * pixel, pixel, pixel)


def make_case(
    seed: int,
    flavour: str,
    case_index: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing_mm: tuple[float, float, float] | None = None,
    split: str = "train",
) -> tuple[Volume, Volume]:
    """One case of a dataset, in memory: what `generate_dataset` writes for it.

    Args:
        seed: dataset seed, an integer >= 0.
        flavour: ``"mr"`` or ``"ct"``.
        case_index: index within its split (>= 0); training and test cases come from
            separate streams, so the test set does not change with ``num_cases``.
        shape: ``(Z, Y, X)`` voxels.
        spacing_mm: ``(sz, sy, sx)`` mm; default `default_spacing_mm`.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(image, label)`` volumes sharing one geometry: identity direction, an origin
        (LPS mm) that varies a little between cases like a scanner table position.
        Exactly one case in each block of `LESION_FREE_BLOCK` consecutive indices has no
        lesion; the others have 1-3 (probabilities 0.4, 0.35, 0.25).

    Raises:
        ValueError: unknown split or flavour, negative seed or index, bad shape/spacing.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    _check_seed(seed)
    if case_index < 0:
        raise ValueError(f"case_index must be >= 0; got {case_index}")
    check_flavour(flavour)
    shape = check_shape(shape)
    spacing = default_spacing_mm(flavour, shape) if spacing_mm is None else spacing_mm
    spacing = check_spacing(spacing)
    codes = [int(seed), _FLAVOUR_CODE[flavour], _SPLIT_CODE[split]]
    rng = np.random.default_rng([*codes, 0, case_index])
    block = np.random.default_rng([*codes, 1, case_index // LESION_FREE_BLOCK])
    lesion_free = case_index % LESION_FREE_BLOCK == block.integers(LESION_FREE_BLOCK)
    num_lesions = 0 if lesion_free else int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    half = [n * s / 2 for n, s in zip(shape, spacing, strict=True)]
    table_z = rng.uniform(-60, 60) if flavour == "mr" else rng.uniform(-450, -150)
    origin = (
        -half[2] + spacing[2] / 2 + rng.uniform(-10, 10),
        -half[1] + spacing[1] / 2 + rng.uniform(-10, 10),
        table_z - half[0] + spacing[0] / 2,
    )
    image, label = make_phantom(rng, flavour, shape, spacing, num_lesions)  # type: ignore[arg-type]
    return Volume(image, spacing, origin), Volume(label, spacing, origin)


def generate_dataset(
    out_dir: str | os.PathLike,
    flavour: str = "mr",
    num_cases: int = DEFAULT_NUM_CASES,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    num_test: int = 0,
    spacing_mm: tuple[float, float, float] | None = None,
) -> Path:
    """Write a Medical Segmentation Decathlon folder of phantoms.

    Layout: ``imagesTr/phantom_<flavour>_NNN.nii.gz`` with the matching
    ``labelsTr/...`` (uint8, `LABELS`), ``imagesTs/phantom_<flavour>_test_NNN.nii.gz``
    (images only, as in the Decathlon) and ``dataset.json`` in the Decathlon schema,
    plus a ``"medseg_synthetic"`` key with the generator settings and per-case facts
    (lesion count and voxels, organ voxels, metal) for stratified splits.

    ``dataset.json`` is written atomically and last, and removed first when a folder is
    regenerated, so a folder with ``dataset.json`` is complete. Calling again with the
    same arguments on a complete folder writes nothing. Stale ``phantom_*`` files not
    listed in the new ``dataset.json`` are removed.

    Args:
        out_dir: dataset folder (created).
        flavour: ``"mr"`` or ``"ct"``.
        num_cases: training cases (with labels), >= 1.
        shape: ``(Z, Y, X)`` voxels per case.
        seed: integer >= 0; same arguments, same files.
        num_test: unlabelled test cases, >= 0.
        spacing_mm: ``(sz, sy, sx)`` mm; default `default_spacing_mm`.

    Returns:
        ``out_dir`` as a `Path`.

    Raises:
        ValueError: invalid arguments (nothing is written).
        FileExistsError: ``out_dir`` holds a ``dataset.json`` of another dataset.
    """
    check_flavour(flavour)
    shape = check_shape(shape)
    _check_seed(seed)
    if num_cases < 1 or num_test < 0:
        raise ValueError(f"need num_cases >= 1 and num_test >= 0; got {num_cases}, {num_test}")
    spacing = check_spacing(
        default_spacing_mm(flavour, shape) if spacing_mm is None else spacing_mm
    )
    out = Path(out_dir)
    settings = {
        "generator_version": GENERATOR_VERSION,
        "flavour": flavour,
        "seed": int(seed),
        "num_cases": int(num_cases),
        "num_test": int(num_test),
        "shape": list(shape),
        "spacing_mm": list(spacing),
    }
    train = [f"phantom_{flavour}_{i:03d}" for i in range(num_cases)]
    test = [f"phantom_{flavour}_test_{i:03d}" for i in range(num_test)]
    files = [f"imagesTr/{n}.nii.gz" for n in train] + [f"labelsTr/{n}.nii.gz" for n in train]
    files += [f"imagesTs/{n}.nii.gz" for n in test]
    if _is_complete(out, settings, files):
        return out
    _check_ours(out / "dataset.json")
    (out / "dataset.json").unlink(missing_ok=True)
    cases = []
    for split, names in (("train", train), ("test", test)):
        for index, name in enumerate(names):
            image, label = make_case(seed, flavour, index, shape, spacing, split)
            if split == "test":
                write_volume(image, out / "imagesTs" / f"{name}.nii.gz")
                continue
            write_volume(image, out / "imagesTr" / f"{name}.nii.gz")
            write_volume(label, out / "labelsTr" / f"{name}.nii.gz")
            cases.append({"name": name, **_describe_case(image.array, label.array)})
    _remove_stale(out, set(files))
    description = (
        "Synthetic abdomen-like phantoms (organ + lesions) generated by "
        "medseg_helpers.data.synthetic for the medseg course; deterministic from the seed."
    )
    dataset = {
        "name": f"Synthetic{_MODALITY[flavour]}",
        "description": description,
        "reference": "medseg course, medseg_helpers.data.synthetic",
        "licence": "CC0 1.0",
        "release": f"generator {GENERATOR_VERSION}",
        "tensorImageSize": "3D",
        "modality": {"0": _MODALITY[flavour]},
        "labels": {str(k): v for k, v in LABELS.items()},
        "numTraining": settings["num_cases"],
        "numTest": settings["num_test"],
        "training": [
            {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in train
        ],
        "test": [f"./imagesTs/{n}.nii.gz" for n in test],
        "medseg_synthetic": {**settings, "cases": cases},
    }
    write_text_atomic(out / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------- helpers


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")


def _is_complete(out: Path, settings: dict, files: list[str]) -> bool:
    try:
        recorded = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
        meta = recorded["medseg_synthetic"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    same = all(meta.get(key) == value for key, value in settings.items())
    return same and all((out / f).is_file() for f in files)


def _check_ours(path: Path) -> None:
    """Refuse to replace a ``dataset.json`` this module did not write (e.g. a real task)."""
    if not path.exists():
        return
    try:
        ours = "medseg_synthetic" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise FileExistsError(
            f"{path} was not written by medseg_helpers.data.synthetic; refusing to overwrite "
            "that folder (choose another out_dir or delete it)"
        )


def _remove_stale(out: Path, keep: set[str]) -> None:
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        for path in (out / folder).glob("phantom_*.nii.gz"):
            if f"{folder}/{path.name}" not in keep:
                path.unlink()


def _describe_case(image: np.ndarray, label: np.ndarray) -> dict:
    """Facts a split can stratify on, computed from the arrays as written."""
    _, num_lesions = ndimage.label(label == 2)
    return {
        "num_lesions": int(num_lesions),
        "lesion_voxels": int(np.count_nonzero(label == 2)),
        "organ_voxels": int(np.count_nonzero(label == 1)),
        "metal": bool(image.dtype == np.int16 and image.max() >= 2000),
    }
