"""The dataset manifest: which archives exist, their checksums, sizes, licences and citations.

The manifest is a JSON file (``data_download/manifest.json`` by default) with two tables:

* ``tasks``: archives `download_task` fetches and verifies (Medical Segmentation Decathlon).
* ``manual``: datasets that need registration or a dedicated client (BraTS, LIDC-IDRI);
  they are only described, so the course can print where to get them and under which licence.

`load_manifest` validates every entry and raises `ManifestError` naming the entry and the
field, so a typo in a checksum is caught when the manifest is read, not after a download.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

DEFAULT_MANIFEST_PATH = Path(__file__).with_name("manifest.json")
_HEX = {"md5": 32, "sha256": 64}
_TASK_REQUIRED = ("url", "md5", "size_bytes", "licence", "citation", "description")
_MANUAL_REQUIRED = ("licence", "url", "access", "citation", "description")


class ManifestError(ValueError):
    """The manifest is malformed: the message names the entry and the field."""


@dataclass(frozen=True)
class TaskEntry:
    """One downloadable archive.

    Attributes:
        name: task name, also the folder the archive extracts to (``Task04_Hippocampus``).
        url: where the archive is published (``https://`` or ``http://``).
        md5: lower-case hex MD5 of the archive, verified before the archive is kept.
        sha256: lower-case hex SHA-256 of the archive, verified too when known, else ``None``.
        size_bytes: archive size in bytes; approximate when ``size_is_approximate``. Used for
            the disk-space check and the progress bar, never for verification.
        size_is_approximate: whether ``size_bytes`` is an estimate.
        licence: licence of the data, e.g. ``CC-BY-SA 4.0``.
        licence_url: link to the licence text ('' if unknown).
        citation: references to cite when using the data.
        description: one or two sentences on what the images show.
        modality: channel index (as a string) to modality name, as in ``dataset.json``.
        labels: label value (as a string) to structure name, as in ``dataset.json``.
        num_training: number of labelled training cases, if known.
        num_test: number of unlabelled test cases, if known.
    """

    name: str
    url: str
    md5: str
    sha256: str | None
    size_bytes: int
    size_is_approximate: bool
    licence: str
    licence_url: str
    citation: tuple[str, ...]
    description: str
    modality: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    num_training: int | None = None
    num_test: int | None = None

    @property
    def filename(self) -> str:
        """The archive's file name, the last component of ``url`` (``Task04_Hippocampus.tar``)."""
        return PurePosixPath(urlparse(self.url).path).name


@dataclass(frozen=True)
class ManualDataset:
    """A dataset the course describes but does not download (registration or special client).

    Attributes:
        name: short name (``BraTS``).
        licence: licence or data use agreement.
        url: where to get it.
        access: how to get it, in one or two sentences.
        citation: references to cite.
        description: what the images show.
        modality: imaging modality, free text.
    """

    name: str
    licence: str
    url: str
    access: str
    citation: tuple[str, ...]
    description: str
    modality: str = ""


@dataclass(frozen=True)
class Manifest:
    """All known datasets, keyed by name.

    Attributes:
        tasks: downloadable archives by task name.
        manual: datasets to fetch by hand, by name.
    """

    tasks: Mapping[str, TaskEntry]
    manual: Mapping[str, ManualDataset] = field(default_factory=dict)

    def task(self, name: str) -> TaskEntry:
        """The entry for ``name``.

        Raises:
            ValueError: ``name`` is a manual dataset (the message says where to get it) or is
                unknown (the message lists the known tasks).
        """
        if name in self.tasks:
            return self.tasks[name]
        if name in self.manual:
            entry = self.manual[name]
            raise ValueError(
                f"{name} cannot be downloaded automatically: {entry.access} "
                f"Get it from {entry.url} (licence: {entry.licence})."
            )
        known = ", ".join(sorted(self.tasks))
        raise ValueError(f"unknown task {name!r}; known tasks: {known}")


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    """Read and validate a manifest JSON file.

    Args:
        path: manifest file; defaults to the ``manifest.json`` shipped with this package.

    Returns:
        The validated `Manifest`.

    Raises:
        ManifestError: invalid JSON or an entry with a missing or malformed field.
    """
    path = Path(path) if path is not None else DEFAULT_MANIFEST_PATH
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    return parse_manifest(raw)


def parse_manifest(raw: Mapping[str, Any]) -> Manifest:
    """Validate a manifest already loaded as a dictionary (see ``manifest.json``).

    Args:
        raw: ``{"tasks": {name: {...}}, "manual": {name: {...}}}``; other keys are ignored.

    Returns:
        The validated `Manifest`.

    Raises:
        ManifestError: an entry misses a field or has a malformed url, checksum or size.
    """
    if not isinstance(raw, Mapping) or not isinstance(raw.get("tasks"), Mapping):
        raise ManifestError("manifest must be an object with a 'tasks' object")
    tasks = {name: _parse_task(name, entry) for name, entry in raw["tasks"].items()}
    manual = {name: _parse_manual(name, entry) for name, entry in raw.get("manual", {}).items()}
    return Manifest(tasks=tasks, manual=manual)


def _parse_task(name: str, entry: Any) -> TaskEntry:
    _require(name, entry, _TASK_REQUIRED)
    url = entry["url"]
    parsed = urlparse(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ManifestError(f"task {name}: url must be an http(s) URL, got {url!r}")
    if not PurePosixPath(parsed.path).name:
        raise ManifestError(f"task {name}: url must end with the archive's file name: {url!r}")
    md5 = _checksum(name, "md5", entry["md5"])
    sha256 = _checksum(name, "sha256", entry["sha256"]) if entry.get("sha256") else None
    size = entry["size_bytes"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ManifestError(f"task {name}: size_bytes must be a positive integer, got {size!r}")
    return TaskEntry(
        name=name,
        url=url,
        md5=md5,
        sha256=sha256,
        size_bytes=size,
        size_is_approximate=bool(entry.get("size_is_approximate", True)),
        licence=_text(name, entry, "licence"),
        licence_url=str(entry.get("licence_url", "")),
        citation=_citations(name, entry["citation"]),
        description=_text(name, entry, "description"),
        modality=dict(entry.get("modality", {})),
        labels=dict(entry.get("labels", {})),
        num_training=entry.get("num_training"),
        num_test=entry.get("num_test"),
    )


def _parse_manual(name: str, entry: Any) -> ManualDataset:
    _require(name, entry, _MANUAL_REQUIRED)
    return ManualDataset(
        name=name,
        licence=_text(name, entry, "licence"),
        url=_text(name, entry, "url"),
        access=_text(name, entry, "access"),
        citation=_citations(name, entry["citation"]),
        description=_text(name, entry, "description"),
        modality=str(entry.get("modality", "")),
    )


def _require(name: str, entry: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(entry, Mapping):
        raise ManifestError(f"entry {name}: must be an object, got {type(entry).__name__}")
    missing = [key for key in keys if entry.get(key) in (None, "", [])]
    if missing:
        raise ManifestError(f"entry {name}: missing {', '.join(missing)}")


def _text(name: str, entry: Mapping[str, Any], key: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"entry {name}: {key} must be a non-empty string, got {value!r}")
    return value


def _checksum(name: str, algorithm: str, value: Any) -> str:
    length = _HEX[algorithm]
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-fA-F]{{{length}}}", value):
        raise ManifestError(
            f"task {name}: {algorithm} must be {length} hexadecimal digits, got {value!r}"
        )
    return value.lower()


def _citations(name: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(c, str) and c for c in items):
        raise ManifestError(f"entry {name}: citation must be a string or a list of strings")
    return tuple(items)


def format_size(num_bytes: float) -> str:
    """Human-readable binary size: ``format_size(28_300_000) == '27.0 MiB'``."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_manifest_table(manifest: Manifest | None = None) -> str:
    """A plain-text table of every dataset: name, size, licence, modality / how to get it.

    Args:
        manifest: defaults to the package's manifest.

    Returns:
        Lines for the downloadable tasks, then the manual datasets.
    """
    manifest = manifest if manifest is not None else load_manifest()
    rows = [("task", "size", "licence", "modality / labels")]
    for entry in manifest.tasks.values():
        size = ("~" if entry.size_is_approximate else "") + format_size(entry.size_bytes)
        labels = ", ".join(v for k, v in entry.labels.items() if k != "0")
        modality = "/".join(entry.modality.values())
        rows.append((entry.name, size, entry.licence, f"{modality}: {labels}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]
    if manifest.manual:
        lines += ["", "Not downloaded automatically (get them by hand):"]
        for entry in manifest.manual.values():
            lines.append(f"{entry.name}  [{entry.licence}]  {entry.url}")
    return "\n".join(lines)
