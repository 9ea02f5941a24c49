"""Where the course keeps its files: the checkout, datasets and runs.

``MEDSEG_DATA_DIR`` and ``MEDSEG_RUN_DIR`` override the defaults ``<repo>/data`` and
``<repo>/runs``; both are git-ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV_VAR = "MEDSEG_DATA_DIR"
RUN_DIR_ENV_VAR = "MEDSEG_RUN_DIR"


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
