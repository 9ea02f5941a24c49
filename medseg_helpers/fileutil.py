"""Writing files: atomically (a reader never sees a half-written file), and JSON-ready.

`to_json_ready` is the package's one converter to plain JSON types: run metrics, course
records and reports, training configs written as YAML all go through it, so NaN and
infinities are written the same way everywhere (as ``null``).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same directory (so the rename is atomic on POSIX)
    and keeps the destination's suffixes (``.nii.gz`` writers pick the format from
    the name). On any exception the temporary file is removed and ``path`` is left
    as it was. The file gets the permissions a plain ``open(path, "w")`` would give
    (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``.

    Args:
        path: final destination. Parent directories are created.
        suffix: suffix of the temporary file; defaults to the full suffix of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
