"""Verified, resumable downloads of the manifest's datasets.

``download_task("Task04_Hippocampus")`` goes through these steps, each safe to interrupt:

0. Deal with a ``.Task04_Hippocampus.stale-*`` copy left by a process killed while replacing
   the task folder (`_recover_stale_copies`).
1. If ``<data_dir>/Task04_Hippocampus/.medseg_complete.json`` records the manifest's checksum
   and every file it lists is there with its recorded size, return at once (no network).
   Otherwise log why (a warning) and rebuild the folder from the archive.
2. If ``<data_dir>/downloads/Task04_Hippocampus.tar`` exists (an earlier run, or copied there
   by hand on an offline machine), verify its checksum and go to step 4.
3. Download into ``downloads/Task04_Hippocampus.tar.part``, resuming with an HTTP ``Range``
   request when a ``.part`` exists, retrying connection errors, timeouts and 5xx answers with
   exponential backoff; verify MD5 (and SHA-256 when known) *before* renaming the ``.part``
   onto the archive's name, so an archive under its final name is always a verified one.
4. Extract safely (`data_download.extract.safe_extract`) into ``<data_dir>/Task04_Hippocampus/``
   and write the completion marker with the list of extracted files and their sizes. A task
   folder being replaced is moved aside first and moved back if the extraction fails.

The library never prints: progress goes to a tqdm bar on stderr (``progress=False`` hides it)
and retries are logged with `logging`.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from data_download.extract import safe_extract
from data_download.manifest import (
    Manifest,
    TaskEntry,
    format_manifest_table,
    format_size,
    load_manifest,
    parse_manifest,
)
from medseg_helpers.fileutil import write_text_atomic
from medseg_helpers.paths import get_data_dir

logger = logging.getLogger(__name__)

BASE_URL_ENV_VAR = "MEDSEG_DOWNLOAD_BASE_URL"
MARKER_NAME = ".medseg_complete.json"
STALE_INFIX = ".stale-"  # ".<task>.stale-<pid>-<time_ns>": a task folder moved aside
DOWNLOADS_DIR = "downloads"
CHUNK_BYTES = 256 * 1024
MAX_BACKOFF_S = 60.0
USER_AGENT = "medseg-data-download/0.1 (+python urllib)"
_sleep = time.sleep  # replaced in tests to record the backoff without waiting


class DownloadError(RuntimeError):
    """A download failed for good (after retries, or at once for 4xx answers)."""


class ChecksumMismatchError(DownloadError):
    """A file's checksum differs from the manifest's.

    Attributes:
        path: the file that was checked.
        algorithm: ``"md5"`` or ``"sha256"``.
        expected: hex digest from the manifest.
        actual: hex digest of the file.
    """

    def __init__(self, path: Path, algorithm: str, expected: str, actual: str, hint: str = ""):
        message = f"{algorithm} mismatch for {path}: expected {expected}, got {actual}"
        super().__init__(f"{message}. {hint}" if hint else message)
        self.path, self.algorithm, self.expected, self.actual = path, algorithm, expected, actual


class InsufficientDiskSpaceError(DownloadError):
    """Not enough free space for the download and its extraction."""


class _TransientError(Exception):
    """A failure worth retrying; ``offline`` when the host could not be reached at all."""

    def __init__(
        self,
        reason: str,
        *,
        offline: bool = False,
        progressed: bool = False,
        immediate: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason, self.offline = reason, offline
        self.progressed, self.immediate = progressed, immediate


def compute_checksums(path: str | os.PathLike, algorithms: Sequence[str] = ("md5",)) -> dict:
    """Hex digests of a file, read once in chunks: ``{"md5": "9d24...", ...}``."""
    hashers = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def verify_checksums(
    path: str | os.PathLike, *, md5: str | None = None, sha256: str | None = None, hint: str = ""
) -> None:
    """Check a file against the given digests (``None`` skips that algorithm).

    Raises:
        ChecksumMismatchError: naming the algorithm, expected and actual digests, and ``hint``.
    """
    expected = {k: v.lower() for k, v in (("md5", md5), ("sha256", sha256)) if v}
    actual = compute_checksums(path, tuple(expected))
    for algorithm, digest in expected.items():
        if actual[algorithm] != digest:
            raise ChecksumMismatchError(Path(path), algorithm, digest, actual[algorithm], hint)


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    size_hint: int | None = None,
    progress: bool = True,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, verified before the final rename.

    Args:
        url: http(s) URL of the file.
        dest: final path; ``<dest>.part`` holds the partial download and is resumed.
        md5: expected hex MD5; at least one of ``md5`` and ``sha256`` is required.
        sha256: expected hex SHA-256.
        size_hint: expected size in bytes for the progress bar when the server sends none.
        progress: show a tqdm bar on stderr.
        retries: retries after the first attempt for connection errors, timeouts and HTTP
            5xx/408/429, waiting ``backoff_s * 2**k`` seconds (at most 60 s). The count restarts
            whenever an attempt received data, so a flaky link still finishes a large file.
        backoff_s: first wait between attempts, in seconds.
        timeout_s: socket timeout per connection and per read, in seconds.

    Returns:
        ``dest``, verified.

    Raises:
        ValueError: neither checksum given.
        DownloadError: HTTP 4xx (at once), or still failing after the retries; the message
            says whether the machine seems offline and where to put the file by hand.
        ChecksumMismatchError: the downloaded file is not the expected one (the ``.part`` is
            deleted, ``dest`` is not created).
    """
    if not md5 and not sha256:
        raise ValueError("give md5 and/or sha256: every download is verified")
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(
        total=size_hint,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=dest.name,
        disable=not progress,
        leave=False,
    ) as bar:
        _fetch_with_retries(url, part, dest, bar, retries, backoff_s, timeout_s)
    try:
        hint = (
            f"The download was deleted; run again to fetch it afresh. If this happens again, "
            f"{url} serves a different file than the one expected."
        )
        verify_checksums(part, md5=md5, sha256=sha256, hint=hint)
    except ChecksumMismatchError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def _fetch_with_retries(
    url: str, part: Path, dest: Path, bar: tqdm, retries: int, backoff_s: float, timeout_s: float
) -> None:
    failures = attempts = 0
    while True:
        attempts += 1
        try:
            _fetch_once(url, part, bar, timeout_s)
            return
        except _TransientError as exc:
            failures = 0 if exc.progressed else failures + 1
            if failures > retries:
                raise DownloadError(_give_up_message(url, dest, attempts, exc)) from None
            delay = 0.0 if exc.progressed or exc.immediate else backoff_s * 2 ** (failures - 1)
            delay = min(delay, MAX_BACKOFF_S)
            logger.warning("download of %s: %s; retrying in %.1f s", url, exc.reason, delay)
            if delay > 0:
                _sleep(delay)


def _fetch_once(url: str, part: Path, bar: tqdm, timeout_s: float) -> None:
    """One HTTP request appending to ``part``; returns when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout_s
        )
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and offset:
                _handle_range_not_satisfiable(exc, part, offset, bar)
                return
            if exc.code >= 500 or exc.code in (408, 429):
                raise _TransientError(f"HTTP {exc.code} {exc.reason}") from None
            raise DownloadError(
                f"{url} answered HTTP {exc.code} {exc.reason}; not retrying. "
                "Check the task name and the URL (or mirror) it is fetched from."
            ) from None
    except urllib.error.URLError as exc:
        raise _TransientError(str(exc.reason), offline=True) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _TransientError(f"{type(exc).__name__}: {exc}") from None
    with response:
        status = getattr(response, "status", None) or 200
        length = _int_or_none(response.headers.get("Content-Length"))
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _TransientError(
                    f"server resumed at byte {start}, not {offset}", immediate=True
                )
            mode = "ab"
        else:
            if offset:
                logger.info("%s ignored the Range request; restarting from byte 0", url)
            offset, mode, total = 0, "wb", None
        if total is None and length is not None:
            total = offset + length
        bar.reset(total=total)
        bar.update(offset)
        received = _copy_body(response, part, mode, bar)
    if total is not None and offset + received < total:
        raise _TransientError(
            f"connection closed after {offset + received} of {total} bytes", progressed=received > 0
        )


def _copy_body(response: http.client.HTTPResponse, part: Path, mode: str, bar: tqdm) -> int:
    """Append the response body to ``part``; returns the byte count (kept on failure too)."""
    received = 0
    with open(part, mode) as f:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as exc:
                raise _TransientError(
                    f"connection lost after {received} new bytes: {exc!r}", progressed=received > 0
                ) from None
            if not chunk:
                return received
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))


def _handle_range_not_satisfiable(
    exc: urllib.error.HTTPError, part: Path, offset: int, bar: tqdm
) -> None:
    """HTTP 416: the ``.part`` is complete (size equals the file's) or unusable (restart)."""
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", exc.headers.get("Content-Range") or "")
    total = int(match.group(1)) if match else None
    if total == offset:
        bar.reset(total=total)
        bar.update(offset)
        return
    part.unlink(missing_ok=True)
    raise _TransientError(
        f"server cannot resume at byte {offset} (HTTP 416, size {total}); restarting from byte 0",
        immediate=True,
    )


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``"bytes 100-199/200"`` -> ``(100, 200)``; unknown parts are ``None``."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    total = match.group(2)
    return int(match.group(1)), (int(total) if total != "*" else None)


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


def _give_up_message(url: str, dest: Path, attempts: int, last: _TransientError) -> str:
    if last.offline:
        head = (
            f"could not reach {urlparse(url).hostname} after {attempts} attempts "
            f"({last.reason}): this machine seems to be offline, or the server is unreachable."
        )
    else:
        head = f"downloading {url} failed after {attempts} attempts: {last.reason}."
    return (
        f"{head}\nTo install it by hand, download\n  {url}\non a machine with internet "
        f"access and copy it to\n  {dest}\nthen run this again: the file is verified against "
        "its checksum and used without the network."
    )


def resolve_url(entry: TaskEntry, url: str | None = None) -> str:
    """The URL to fetch: ``url``, else ``$MEDSEG_DOWNLOAD_BASE_URL/<file>``, else the manifest's."""
    if url:
        return url
    base = os.environ.get(BASE_URL_ENV_VAR, "").strip()
    return f"{base.rstrip('/')}/{entry.filename}" if base else entry.url


def download_task(
    task: str,
    data_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    progress: bool = True,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    manifest: Manifest | Mapping | str | os.PathLike | None = None,
    keep_archive: bool = True,
) -> Path:
    """Download, verify and extract a dataset of the manifest; a no-op when already done.

    Layout under ``data_dir``: ``downloads/<archive>`` (and ``.part`` while downloading) and
    ``<task>/`` with the archive's top folder's contents (``dataset.json``, ``imagesTr/``, ...)
    plus the marker ``.medseg_complete.json`` recording the verified checksum and the size of
    every extracted file. An existing ``<task>/`` whose marker is missing or from an older
    archive, or one of whose listed files is missing or has another size (deleted, truncated),
    is rebuilt from the verified archive (downloaded again if it was deleted), with a warning
    saying why. If that extraction fails, the previous ``<task>/`` is put back unchanged.

    Args:
        task: task name in the manifest, e.g. ``"Task04_Hippocampus"``.
        data_dir: data root; default ``$MEDSEG_DATA_DIR`` or ``<repo>/data`` (`get_data_dir`).
        url: fetch from here instead (a mirror, or a local server in tests); the manifest's
            checksums still apply. Default ``$MEDSEG_DOWNLOAD_BASE_URL/<archive>`` if set,
            else the manifest's URL.
        progress: show a tqdm progress bar on stderr.
        retries: see `download_file`.
        backoff_s: see `download_file`.
        timeout_s: see `download_file`.
        manifest: a `Manifest`, a manifest dictionary or JSON path; default the package's.
        keep_archive: keep ``downloads/<archive>`` after extraction, so the folder can be
            rebuilt without the network.

    Returns:
        The task folder ``<data_dir>/<task>``.

    Raises:
        ValueError: unknown task, or one that must be fetched by hand (BraTS, LIDC-IDRI).
        DownloadError: network failure; offline, the message says where to put the archive.
        ChecksumMismatchError: the downloaded or hand-placed archive is not the expected one.
        InsufficientDiskSpaceError: not enough free space for download plus extraction.
        UnsafeArchiveError: the archive tries to write outside the task folder.
        ArchiveError: the verified archive cannot be read (the previous folder is kept).
    """
    entry = _as_manifest(manifest).task(task)
    root = get_data_dir(data_dir, create=True)  # disk space is measured on it
    folder = root / entry.name
    _recover_stale_copies(folder)
    problem = _why_incomplete(folder, entry)
    if problem is None:
        return folder
    archive = root / DOWNLOADS_DIR / entry.filename
    if _exists(folder):
        _warn_rebuild(folder, problem, archive)
    source = resolve_url(entry, url)
    if archive.exists():
        verify_checksums(
            archive,
            md5=entry.md5,
            sha256=entry.sha256,
            hint=(
                f"This is not the expected {entry.name} archive: delete it, or replace it with "
                f"the file from {entry.url}."
            ),
        )
        _check_disk_space(root, archive.stat().st_size, f"extracting {entry.name}")
    else:
        part = archive.with_name(archive.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        remaining = max(entry.size_bytes - have, 0)
        _check_disk_space(
            root,
            remaining + entry.size_bytes,
            f"{entry.name} (download {format_size(remaining)} + extraction)",
        )
        download_file(
            source,
            archive,
            md5=entry.md5,
            sha256=entry.sha256,
            size_hint=entry.size_bytes,
            progress=progress,
            retries=retries,
            backoff_s=backoff_s,
            timeout_s=timeout_s,
        )
    _extract(archive, folder, entry, source)
    if not keep_archive:
        archive.unlink()
    return folder


def _as_manifest(manifest: Manifest | Mapping | str | os.PathLike | None) -> Manifest:
    if isinstance(manifest, Manifest):
        return manifest
    if isinstance(manifest, Mapping):
        return parse_manifest(manifest)
    return load_manifest(manifest)


def _exists(path: Path) -> bool:
    """Whether ``path`` exists, counting a dangling symbolic link."""
    return path.exists() or path.is_symlink()


def _why_incomplete(folder: Path, entry: TaskEntry) -> str | None:
    """Why ``folder`` is not a complete extraction of ``entry``'s archive; ``None`` if it is.

    Complete: the marker names this task and the manifest's checksums, and every file in its
    ``files`` list is a regular file of the recorded size. Only ``stat`` is used (no hashing),
    so the check stays instant for multi-GB tasks. Files added to the folder later are
    ignored. A marker without a file list (written by an older version) is not complete.
    """
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable completion marker {MARKER_NAME}"
    if not isinstance(marker, dict):
        return f"{MARKER_NAME} is not a JSON object"
    recorded = (marker.get("task"), marker.get("md5"), marker.get("sha256"))
    if recorded != (entry.name, entry.md5, entry.sha256):
        return f"{MARKER_NAME} records another archive (md5 {marker.get('md5')})"
    files = marker.get("files")
    if not _is_file_list(files):
        return f"{MARKER_NAME} has no file list (written by an older version)"
    return _first_file_problem(folder, files)


def _is_file_list(files: object) -> bool:
    """Whether ``files`` is a marker's ``{relative name: size in bytes}`` mapping."""
    return isinstance(files, dict) and all(
        isinstance(name, str) and isinstance(size, int) and not isinstance(size, bool)
        for name, size in files.items()
    )


def _first_file_problem(folder: Path, files: Mapping[str, int]) -> str | None:
    """The first listed file that is missing, not a regular file or of another size."""
    for name, size in files.items():
        try:
            info = (folder / name).lstat()
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            return f"{name} cannot be checked ({exc.strerror})"
        if not stat.S_ISREG(info.st_mode):
            return f"{name} is not a regular file"
        if info.st_size != size:
            return f"{name} has {info.st_size} bytes, expected {size}"
    return None


def _warn_rebuild(folder: Path, problem: str, archive: Path) -> None:
    """Log (warning) why ``folder`` is rebuilt and from where."""
    how = f"re-extracting it from {archive}" if archive.exists() else "downloading it again"
    logger.warning("%s is not ready: %s; %s", folder, problem, how)


def _file_sizes(folder: Path) -> dict[str, int]:
    """Size in bytes of every regular file under ``folder``, by relative POSIX name, sorted.

    Symbolic links are neither followed nor listed; the marker itself is left out.
    """
    sizes = {}
    for parent, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(parent, name)
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                sizes[path.relative_to(folder).as_posix()] = info.st_size
    sizes.pop(MARKER_NAME, None)
    return dict(sorted(sizes.items()))


def _write_marker(folder: Path, archive: Path, entry: TaskEntry, source: str) -> None:
    """Write ``folder``'s completion marker: checksums, provenance and the file list."""
    record = {
        "task": entry.name,
        "md5": entry.md5,
        "sha256": entry.sha256,
        "archive": archive.name,
        "source_url": source,
        "licence": entry.licence,
        "extracted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": _file_sizes(folder),
    }
    write_text_atomic(folder / MARKER_NAME, json.dumps(record, indent=2) + "\n")


def _extract(archive: Path, folder: Path, entry: TaskEntry, source: str) -> None:
    """Extract ``archive`` into ``folder`` and write the marker; if that fails, lose nothing.

    An existing ``folder`` is first renamed aside (`_move_aside`). If the extraction or the
    marker fails (an unreadable or unsafe archive, a full disk, Ctrl-C), ``folder`` is renamed
    back, unchanged, and the error re-raised; the copy aside is deleted only after success.
    """
    stale = _move_aside(folder)
    try:
        safe_extract(archive, folder, flatten_single_root=True)
        _write_marker(folder, archive, entry, source)
    except BaseException:
        if stale is not None:
            _put_back(stale, folder)
        raise
    if stale is not None:
        _remove_path(stale)


def _move_aside(folder: Path) -> Path | None:
    """Rename ``folder`` to a hidden ``.<name>.stale-<pid>-<time_ns>``; ``None`` if absent."""
    if not _exists(folder):
        return None
    stale = folder.with_name(f".{folder.name}{STALE_INFIX}{os.getpid()}-{time.time_ns()}")
    logger.info("moving %s aside to %s while extracting", folder, stale.name)
    os.rename(folder, stale)
    return stale


def _put_back(stale: Path, folder: Path) -> None:
    """Rename ``stale`` back to ``folder`` after a failed extraction, replacing what it left.

    Never raises: the caller is handling the extraction's error. If the rename fails, the copy
    stays where it is and the next `download_task` restores it (`_recover_stale_copies`).
    """
    try:
        if _exists(folder):
            _remove_path(folder)
        os.rename(stale, folder)
        logger.warning("extraction failed; %s is back as it was", folder)
    except OSError as exc:
        logger.error("could not put %s back from %s: %s", folder, stale, exc)


def _remove_path(path: Path) -> None:
    """Delete ``path``: a folder with its contents, or a file or symbolic link itself."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _recover_stale_copies(folder: Path) -> None:
    """Deal with ``.<task>.stale-*`` copies of ``folder`` left by a killed process.

    `_extract` renames the task folder aside before extracting and puts it back on failure, but
    a process killed outright (SIGKILL, power loss) leaves the copy behind. The policy:

    * ``folder`` is missing: the newest copy (by the time in its name) is renamed back to
      ``folder``, with a warning. It is then checked like any task folder: a complete one is
      used as is, an incomplete or outdated one is rebuilt (moved aside again first), so a
      killed update never loses a good folder. Older copies are deleted.
    * ``folder`` exists: every copy is deleted. ``folder`` is the newer state: `safe_extract`
      only renames a finished extraction into place, and a folder whose marker was never
      written is rebuilt anyway.

    Two processes extracting the same task into the same data folder at once are not
    supported (one could delete the other's copy).
    """
    prefix = f".{folder.name}{STALE_INFIX}"
    copies = sorted(
        (p for p in folder.parent.iterdir() if p.name.startswith(prefix)), key=_stale_time
    )
    if copies and not _exists(folder):
        newest = copies.pop()
        os.rename(newest, folder)
        logger.warning("restored %s from %s, left by an interrupted update", folder, newest.name)
    for copy in copies:
        logger.info("deleting %s, left by an interrupted update", copy)
        _remove_path(copy)


def _stale_time(path: Path) -> int:
    """The ``time_ns`` at the end of a ``.<task>.stale-<pid>-<time_ns>`` name (0 if none)."""
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _check_disk_space(folder: Path, needed: int, what: str) -> None:
    free = _free_bytes(folder)
    if free < needed:
        raise InsufficientDiskSpaceError(
            f"not enough disk space in {folder}: {what} needs about {format_size(needed)}, "
            f"only {format_size(free)} free. Free some space, or put the data on another disk "
            "with --data-dir or $MEDSEG_DATA_DIR."
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m data_download TASK [--data-dir DIR] [--url URL]`` or ``--list``.

    Returns:
        0 on success, 2 on an error (printed to stderr as one clear message).
    """
    parser = argparse.ArgumentParser(
        prog="python -m data_download",
        description="Download, verify and safely extract a Medical Segmentation Decathlon task.",
    )
    parser.add_argument("task", nargs="?", help="e.g. Task04_Hippocampus")
    parser.add_argument("--list", action="store_true", help="list datasets, sizes and licences")
    parser.add_argument("--data-dir", default=None, help="default $MEDSEG_DATA_DIR or ./data")
    parser.add_argument("--url", default=None, help="mirror URL for the archive")
    parser.add_argument("--manifest", default=None, help="manifest JSON (default: built in)")
    parser.add_argument("--retries", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per read")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--delete-archive", action="store_true", help="delete the archive after extraction"
    )
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
        if args.list:
            print(format_manifest_table(manifest))
            return 0
        if not args.task:
            parser.error("give a task name, or --list to see them")
        folder = download_task(
            args.task,
            args.data_dir,
            url=args.url,
            progress=not args.no_progress,
            retries=args.retries,
            timeout_s=args.timeout,
            manifest=manifest,
            keep_archive=not args.delete_archive,
        )
    except (DownloadError, ValueError, OSError) as exc:
        print(f"data_download: error: {exc}", file=sys.stderr)
        return 2
    entry = manifest.task(args.task)
    print(f"{entry.name} ready: {folder}")
    print(f"Licence: {entry.licence}. Please cite:")
    for reference in entry.citation:
        print(f"  - {reference}")
    return 0
