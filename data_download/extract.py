"""Safe extraction of tar and zip archives.

An archive is untrusted input: a member named ``/etc/x`` or ``../x``, a symbolic link to
``/etc`` followed by a member written through it, or a device file can write outside the
destination or worse. `safe_extract` checks every member *before* writing anything and
raises `UnsafeArchiveError` naming the first offending member. The checks stand on their
own; where Python's tarfile offers the ``"data"`` extraction filter (3.11.4+, 3.12+) it is
used as a second layer.

Extraction goes into a hidden temporary folder beside the destination, which is renamed
onto the destination only once everything is written: an interrupted extraction never
leaves a half-filled folder that looks complete.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ArchiveError", "UnsafeArchiveError", "is_resource_fork", "safe_extract"]


class ArchiveError(ValueError):
    """The archive cannot be read (not a tar/zip file, truncated, corrupt)."""


class UnsafeArchiveError(ArchiveError):
    """A member would write outside the destination or is not a plain file, folder or link.

    Attributes:
        member: the member's name as stored in the archive.
    """

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"unsafe archive member {member!r}: {reason}")
        self.member = member


def is_resource_fork(name: str) -> bool:
    """Whether ``name`` is macOS metadata (``._*`` AppleDouble files, ``__MACOSX/``).

    The Decathlon tars contain such members next to the real files; they are not NIfTI
    files and break loaders that glob ``*.nii.gz``, so extraction skips them.
    """
    parts = [p for p in re.split(r"[/\\]", name) if p]
    return bool(parts) and (parts[-1].startswith("._") or parts[0] == "__MACOSX")


def safe_extract(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    flatten_single_root: bool = False,
    skip_resource_forks: bool = True,
) -> Path:
    """Extract a tar (plain, gz, bz2, xz) or zip archive into ``dest``, refusing unsafe members.

    Refused (`UnsafeArchiveError`, nothing written): absolute names (``/x``, ``C:x``), names
    with a ``..`` component, a file or link named like the destination itself (``""``,
    ``"."``, ``"./"``), members stored under a symbolic link of the archive, symbolic
    links whose target is absolute or leaves the archive's tree, hard links to anything
    outside it, and device files or FIFOs. A *folder* entry for the destination itself
    (``./``, as ``tar -C dir .`` writes) is accepted: it creates nothing.

    Args:
        archive: the archive file.
        dest: folder to create; it must not exist yet. Its parent is created if needed.
        flatten_single_root: if the archive holds a single top-level folder (the Decathlon
            tars hold ``Task04_Hippocampus/``), ``dest`` receives that folder's contents.
        skip_resource_forks: leave out macOS metadata members (see `is_resource_fork`).

    Returns:
        ``dest``, now complete.

    Raises:
        FileExistsError: ``dest`` already exists.
        UnsafeArchiveError: a member fails the checks above (the message names it).
        ArchiveError: the file is not a readable tar or zip archive.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"extraction destination {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extracting-", dir=dest.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; it may become ``dest`` itself
        _extract_into(archive, staging, skip_resource_forks)
        _check_tree_stays_inside(staging)
        root = staging
        entries = list(staging.iterdir())
        if flatten_single_root and len(entries) == 1:
            if entries[0].is_dir() and not entries[0].is_symlink():
                root = entries[0]
        try:
            os.rename(root, dest)
        except OSError as exc:
            raise FileExistsError(f"could not move extracted files to {dest}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _extract_into(archive: Path, staging: Path, skip_resource_forks: bool) -> None:
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    _check_zip_member(info)
                for info in infos:
                    if not (skip_resource_forks and is_resource_fork(info.filename)):
                        zf.extract(info, staging)
            return
        with tarfile.open(archive, mode="r:*") as tf:
            members = tf.getmembers()
            _check_tar_members(members)
            keep = [m for m in members if not (skip_resource_forks and is_resource_fork(m.name))]
            tf.extractall(staging, members=keep, **_tar_filter_kwargs())
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error) as exc:
        raise ArchiveError(f"cannot read {archive} as a tar or zip archive: {exc}") from exc
    except EOFError as exc:
        raise ArchiveError(f"{archive} is truncated: {exc}") from exc


def _tar_filter_kwargs() -> dict[str, str]:
    """``{"filter": "data"}`` where tarfile supports extraction filters, else ``{}``."""
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _normalised(name: str, member: str) -> str:
    """``name`` as a clean relative POSIX path; raises for absolute names and ``..``."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(member, f"absolute path {name!r}")
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(member, f"path {name!r} contains '..'")
    return "/".join(parts)


def _refuse_root_entry(name: str, member: str, is_dir: bool) -> None:
    """Refuse a file or link whose normalised ``name`` is empty: it would replace the root.

    ``""``, ``"."`` and ``"./."`` all name the extraction folder itself; written as a file
    they would fail with a bare `IsADirectoryError`. As a folder entry they are harmless.
    """
    if not name and not is_dir:
        raise UnsafeArchiveError(member, "names the extraction folder itself, not a file in it")


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    name = _normalised(info.filename, info.filename)
    _refuse_root_entry(name, info.filename, info.is_dir())
    mode = info.external_attr >> 16
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        raise UnsafeArchiveError(info.filename, "device file or FIFO")


def _check_tar_members(members: Iterable[tarfile.TarInfo]) -> None:
    members = list(members)
    symlinks = {_normalised(m.name, m.name) for m in members if m.issym()}
    for member in members:
        name = _normalised(member.name, member.name)
        _refuse_root_entry(name, member.name, member.isdir())
        _refuse_through_symlink(name, symlinks, member.name, "is stored under the symbolic link")
        if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            raise UnsafeArchiveError(member.name, "device file or FIFO")
        if member.issym():
            target = member.linkname
            if target.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", target):
                raise UnsafeArchiveError(member.name, f"symbolic link to absolute path {target!r}")
            _check_symlink_target(name, target, symlinks, member.name)
        elif member.islnk():
            target = _normalised(member.linkname, member.name)
            if not target:
                raise UnsafeArchiveError(member.name, "hard link to the archive's root")
            _refuse_through_symlink(target, symlinks, member.name, "hard-links through")
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(member.name, f"unsupported member type {member.type!r}")


def _check_symlink_target(name: str, target: str, symlinks: set[str], member: str) -> None:
    """Walk ``target`` from the link's folder; refuse leaving the tree or passing a symlink."""
    parts = name.split("/")[:-1]
    for component in re.split(r"[/\\]", target):
        if component in ("", "."):
            continue
        if parts and "/".join(parts) in symlinks:
            raise UnsafeArchiveError(member, f"links through {'/'.join(parts)!r}")
        if component != "..":
            parts.append(component)
        elif parts:
            parts.pop()
        else:
            raise UnsafeArchiveError(member, f"symbolic link {target!r} leaves the tree")


def _refuse_through_symlink(path: str, symlinks: set[str], member: str, verb: str) -> None:
    """Refuse ``path`` if one of its parent folders is a symbolic link of the archive."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in symlinks:
            raise UnsafeArchiveError(member, f"{verb} {prefix!r}")


def _check_tree_stays_inside(root: Path) -> None:
    """Second line of defence: every extracted link must resolve inside ``root``."""
    real_root = root.resolve()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                raise UnsafeArchiveError(str(path.relative_to(root)), "link resolves outside")
