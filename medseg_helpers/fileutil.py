"""Writing files: atomically (a reader never sees a half-written file), and JSON-ready.

`to_json_ready` is the package's one converter to plain JSON types: run metrics, course
records and reports, training configs written as YAML all go through it, so NaN and
infinities are written the same way everywhere (as ``null``).

Atomic writes (`atomic_path`) go through a hidden temporary file beside the target, named
``.<stem>.<pid>.<random>.tmp<suffixes>`` (e.g. ``.last.4242.k3j2h1g0.tmp.pt``): the pid of
the writing process lets `remove_stale_temporaries` tell the leftovers of a killed writer
from the file another process is still writing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: A temporary unchanged for this long, whose writer process is gone, is stale.
TEMPORARY_GRACE_S = 60.0
#: A temporary unchanged for this long is stale whatever its pid says (pids are reused).
TEMPORARY_MAX_AGE_S = 24 * 3600.0

# fsync errors that mean "not supported here" (a filesystem without fsync, a directory that
# cannot be opened, as on Windows): skipped. Others (EIO, ENOSPC...) are real and propagate.
_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP,
                                errno.ENOSYS, errno.EACCES, errno.EPERM, errno.EISDIR})


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> bool:
    """Flush a file's or a folder's contents to disk (``fsync``).

    Returns:
        True if flushed; False where this platform or filesystem cannot ``fsync`` it
        (e.g. ``EINVAL`` from some network and FUSE filesystems, folders on Windows).

    Raises:
        OSError: a real failure (``EIO``, ``ENOSPC``...): the data may not be on disk.
    """
    windows_file = os.name == "nt" and not os.path.isdir(path)  # needs a writable handle
    flags = os.O_RDWR if windows_file else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno in _FSYNC_UNSUPPORTED:
            return False
        raise
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno in _FSYNC_UNSUPPORTED:
            return False
        raise
    finally:
        os.close(fd)
    return True


def _temporary_suffix(path: Path, suffix: str | None) -> str:
    """The suffix `atomic_path` gives temporaries of ``path``: its full suffix by default."""
    return "".join(path.suffixes) if suffix is None else suffix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same directory (so the rename is atomic on POSIX)
    and keeps the destination's suffixes (``.nii.gz`` writers pick the format from
    the name). On any exception the temporary file is removed and ``path`` is left
    as it was. The file gets the permissions a plain ``open(path, "w")`` would give
    (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``.

    Durability: the temporary file is ``fsync``-ed before the rename and the folder
    after it. Without the first, a power loss can persist the rename but not the data
    (a 0-byte ``last.pt`` replacing a good one); without the second, the rename itself
    can be lost. The cost is two ``fsync`` calls per write: for a checkpoint, waiting
    for bytes that were being written anyway; for a small text file, milliseconds.
    Filesystems that cannot ``fsync`` (see `fsync_path`) are written without it.

    Args:
        path: final destination. Parent directories are created.
        suffix: suffix of the temporary file; defaults to the full suffix of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.",
                                    suffix=f".tmp{_temporary_suffix(path, suffix)}",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def _process_exists(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True where that cannot be checked)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def _temporary_pattern(path: Path, suffix: str | None) -> re.Pattern[str]:
    """Names of `atomic_path` temporaries of ``path``; group ``pid`` (absent in old names)."""
    return re.compile(rf"\.{re.escape(path.stem)}\.(?:(?P<pid>\d+)\.)?[a-z0-9_]+"
                      rf"\.tmp{re.escape(_temporary_suffix(path, suffix))}")


def _is_stale(tmp: Path, pid: int | None, now: float) -> bool:
    """Whether the temporary ``tmp`` of writer ``pid`` is a leftover (see `stale_temporaries`)."""
    try:
        age = now - tmp.stat().st_mtime
    except FileNotFoundError:  # renamed or removed meanwhile by its writer
        return False
    if age < TEMPORARY_GRACE_S:
        return False
    return age >= TEMPORARY_MAX_AGE_S or pid is None or not _process_exists(pid)


def stale_temporaries(path: str | os.PathLike, suffix: str | None = None) -> list[Path]:
    """Temporaries of ``path`` left by interrupted `atomic_path` writes (killed processes).

    A hidden temporary of this target (same name pattern, same ``suffix``) is stale when
    it has not changed for `TEMPORARY_GRACE_S` seconds and either its writer process no
    longer exists (or its name holds no pid: older versions), or it has not changed for
    `TEMPORARY_MAX_AGE_S` (a pid can be reused). A live writer keeps its file: it
    still runs, or it is still writing. Where processes cannot be checked (Windows, a
    writer in another container sharing the folder) only the age rules apply.
    """
    path = Path(path)
    pattern, now = _temporary_pattern(path, suffix), time.time()
    if not path.parent.is_dir():
        return []
    stale = []
    for candidate in sorted(path.parent.iterdir()):
        match = pattern.fullmatch(candidate.name)
        if match is None:
            continue
        pid = int(match["pid"]) if match["pid"] else None
        if _is_stale(candidate, pid, now):
            stale.append(candidate)
    return stale


def remove_stale_temporaries(path: str | os.PathLike, suffix: str | None = None) -> list[Path]:
    """Delete `stale_temporaries` of ``path`` (logged); returns the paths removed."""
    removed = []
    for tmp in stale_temporaries(path, suffix):
        with contextlib.suppress(FileNotFoundError):
            size = tmp.stat().st_size
            tmp.unlink()
            removed.append(tmp)
            logger.info("removed %s (%d bytes), left by an interrupted write", tmp, size)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def to_json_ready(value: Any) -> Any:
    """``value`` in plain JSON types, for ``json.dumps`` (strict JSON) and ``yaml.safe_dump``.

    * ``None``, ``bool``, ``int``, ``str`` and finite ``float`` pass through;
    * NaN, ``inf`` and ``-inf`` become ``None`` (JSON ``null``: "no value", which readers
      such as the course's threshold checks treat as missing);
    * NumPy scalars and arrays and torch tensors become Python numbers and (nested) lists
      (through their ``tolist``), then are converted like those;
    * mappings become dicts with ``str`` keys, lists and tuples become lists, converted
      recursively; ``os.PathLike`` becomes its ``str`` path.

    Example:
        >>> to_json_ready({"dice": float("nan"), 1: (np.float32(0.5), Path("a"))})
        {'dice': None, '1': [0.5, 'a']}

    Raises:
        TypeError: any other type (its name and value in the message, "not JSON-friendly").
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_ready(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(getattr(value, "tolist", None)):  # NumPy scalars and arrays, torch tensors
        return to_json_ready(value.tolist())
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-friendly")
