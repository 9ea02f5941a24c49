"""Which dataset a profile uses, and making sure it is on disk.

``full`` and ``smoke`` use the synthetic phantoms (generated in seconds, no network);
``decathlon`` uses a downloaded Decathlon task. Notebooks call `ensure_course_dataset`
once, so each of them also runs on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg_helpers.course.profiles import profile_defaults
from medseg_helpers.paths import get_data_dir


def synthetic_dataset_dir(
    profile: str | None = None, flavour: str = "mr", data_dir: str | os.PathLike | None = None
) -> Path:
    """``<data dir>/Synthetic_<FLAVOUR>_<profile>``: one folder per profile and flavour."""
    name = profile_defaults(profile).name
    return get_data_dir(data_dir) / f"Synthetic_{flavour.upper()}_{name}"


def ensure_synthetic_dataset(
    profile: str | None = None,
    flavour: str = "mr",
    data_dir: str | os.PathLike | None = None,
    num_cases: int | None = None,
    shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> Path:
    """Generate the synthetic dataset for a profile unless it is already complete.

    `synthetic.generate_dataset` writes nothing when the folder already holds the
    same dataset (its ``dataset.json``, written last, records the settings), so
    calling this at the top of every notebook costs milliseconds.

    Args:
        profile: sizes come from this profile (`profile_defaults`) unless overridden.
        flavour: ``"mr"`` or ``"ct"``.
        data_dir: root for the default folder (`synthetic_dataset_dir`).
        num_cases: training cases; default from the profile.
        shape: ``(Z, Y, X)`` voxels; default from the profile.
        seed: generator seed (same seed, same files).
        out_dir: exact folder to use instead of the default one.

    Returns:
        The dataset folder (Decathlon layout with ``dataset.json``).
    """
    from medseg_helpers.data.synthetic import generate_dataset

    defaults = profile_defaults(profile)
    folder = Path(out_dir) if out_dir else synthetic_dataset_dir(profile, flavour, data_dir)
    return generate_dataset(
        folder,
        flavour=flavour,
        num_cases=num_cases or defaults.num_cases,
        shape=tuple(shape or defaults.volume_shape),
        seed=seed,
    )


def ensure_course_dataset(
    profile: str | None = None, data_dir: str | os.PathLike | None = None
) -> Path:
    """The dataset folder the profile trains on, generated or downloaded if missing."""
    defaults = profile_defaults(profile)
    if defaults.dataset == "synthetic":
        return ensure_synthetic_dataset(defaults.name, data_dir=data_dir)
    from data_download import download_task

    return download_task(defaults.dataset, data_dir=data_dir)


#: Patients of the study dataset (`ensure_study_dataset`): 14 train, 5 validation, 5 test.
STUDY_CASES = 24


def ensure_study_dataset(
    profile: str | None = None, data_dir: str | os.PathLike | None = None
) -> Path:
    """The synthetic MR dataset of the notebooks that train many short models (07, 10).

    Each of their trainings validates after every epoch or two, so validation on the
    course dataset's 16 patients would cost more than the training itself. They use the
    same phantoms with at most `STUDY_CASES` patients instead: the profile's own
    dataset when it is no larger (``smoke``), else ``Synthetic_MR_<profile>_24``. The
    test scores of these notebooks therefore rest on 5 test patients, not 16.
    """
    defaults = profile_defaults(profile)
    if defaults.num_cases <= STUDY_CASES:
        return ensure_synthetic_dataset(defaults.name, data_dir=data_dir)
    folder = synthetic_dataset_dir(defaults.name, "mr", data_dir)
    return ensure_synthetic_dataset(defaults.name, num_cases=STUDY_CASES,
                                    out_dir=folder.with_name(f"{folder.name}_{STUDY_CASES}"))
