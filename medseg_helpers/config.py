"""Course profiles and data/run locations.

A *profile* picks sizes and budgets for the whole course:

* ``smoke``: seconds per notebook, for CI and a first look; nothing is learnt well.
* ``cpu``: minutes on a 2-core laptop; models really learn the synthetic task.
* ``gpu``: real training on a downloaded Medical Segmentation Decathlon task.

Notebooks read their defaults from `profile_defaults` inside the papermill
``parameters`` cell, so ``papermill -p SEED 1`` (or any other parameter) still
overrides any one value.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

PROFILE_ENV_VAR = "MEDSEG_PROFILE"
DATA_DIR_ENV_VAR = "MEDSEG_DATA_DIR"
RUN_DIR_ENV_VAR = "MEDSEG_RUN_DIR"
PROFILES = ("smoke", "cpu", "gpu")


@dataclass(frozen=True)
class Profile:
    """Budgets shared by all notebooks for one profile.

    Attributes:
        name: ``smoke`` | ``cpu`` | ``gpu``.
        dataset: ``"synthetic"`` or a Decathlon task name such as ``Task04_Hippocampus``.
        num_cases: synthetic cases to generate (ignored for downloaded tasks).
        volume_shape: synthetic volume shape ``(Z, Y, X)`` in voxels.
        max_epochs: training epochs for the main model of a notebook.
        batch_size: training batch size.
        base_channels: channels of the first U-Net level.
        patch_size_3d: 3D training patch ``(Z, Y, X)``.
        num_trials: hyper-parameter search trials.
        download: whether notebooks may fetch public data.
    """

    name: str
    dataset: str
    num_cases: int
    volume_shape: tuple[int, int, int]
    max_epochs: int
    batch_size: int
    base_channels: int
    patch_size_3d: tuple[int, int, int]
    num_trials: int
    download: bool

    def as_dict(self) -> dict:
        return asdict(self)


_PROFILES = {
    "smoke": Profile("smoke", "synthetic", 8, (16, 64, 64), 1, 8, 8, (16, 32, 32), 2, False),
    "cpu": Profile("cpu", "synthetic", 24, (32, 96, 96), 15, 16, 16, (32, 64, 64), 12, False),
    "gpu": Profile(
        "gpu", "Task04_Hippocampus", 24, (32, 96, 96), 200, 32, 32, (40, 56, 40), 40, True
    ),
}


def get_profile_name(name: str | None = None) -> str:
    """Return ``name`` or ``$MEDSEG_PROFILE`` (default ``smoke``), validated.

    Raises:
        ValueError: for an unknown profile name.
    """
    name = (name or os.environ.get(PROFILE_ENV_VAR) or "smoke").strip().lower()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return name


def profile_defaults(name: str | None = None) -> Profile:
    """The `Profile` for ``name`` (see `get_profile_name`)."""
    return _PROFILES[get_profile_name(name)]


def repo_root() -> Path:
    """The course checkout this package was imported from, else the working directory."""
    candidate = Path(__file__).resolve().parent.parent
    if (candidate / "notebooks").is_dir():
        return candidate
    return Path.cwd()


def get_data_dir(path: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``path``, ``$MEDSEG_DATA_DIR``, or ``<repo>/data``."""
    return _resolve_dir(path, DATA_DIR_ENV_VAR, "data")


def get_run_dir(path: str | os.PathLike | None = None) -> Path:
    """Where runs write outputs: ``path``, ``$MEDSEG_RUN_DIR``, or ``<repo>/runs``."""
    return _resolve_dir(path, RUN_DIR_ENV_VAR, "runs")


def _resolve_dir(path: str | os.PathLike | None, env_var: str, default_name: str) -> Path:
    chosen = path or os.environ.get(env_var) or repo_root() / default_name
    resolved = Path(chosen).expanduser().resolve()
    resolved.mkdir(parents=True, exist_ok=True)
    return resolved
