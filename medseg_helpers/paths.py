"""Where the course keeps its files: the checkout, datasets and runs.

``MEDSEG_DATA_DIR`` and ``MEDSEG_RUN_DIR`` override the defaults ``<repo>/data`` and
``<repo>/runs``; both are git-ignored. The getters only compute paths; a caller that
writes straight into the folder asks for it with ``create=True`` (writers such as
`fileutil.atomic_path` create their parent folders themselves).
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


def get_data_dir(path: str | os.PathLike | None = None, *, create: bool = False) -> Path:
    """Where datasets live: ``path``, ``$MEDSEG_DATA_DIR``, or ``<repo>/data`` (absolute).

    Args:
        path: an explicit folder, which wins over the environment.
        create: make the folder (and its parents) if it does not exist; by default the
            path is only computed, nothing is written.
    """
    return _resolve_dir(path, DATA_DIR_ENV_VAR, "data", create)


def get_run_dir(path: str | os.PathLike | None = None, *, create: bool = False) -> Path:
    """Where runs write outputs: ``path``, ``$MEDSEG_RUN_DIR``, or ``<repo>/runs`` (absolute).

    Args:
        path: an explicit folder, which wins over the environment.
        create: make the folder (and its parents) if it does not exist; by default the
            path is only computed, nothing is written.
    """
    return _resolve_dir(path, RUN_DIR_ENV_VAR, "runs", create)


def _resolve_dir(path: str | os.PathLike | None, env_var: str, default_name: str,
                 create: bool) -> Path:
    chosen = path or os.environ.get(env_var) or repo_root() / default_name
    resolved = Path(chosen).expanduser().resolve()
    if create:
        resolved.mkdir(parents=True, exist_ok=True)
    return resolved
