"""Refuse a bad path before ITK opens it, and the error every volume reader raises.

`VolumeReadError` says "this file or DICOM folder exists but holds no readable volume", in
one line naming the file and the problem. The checks here run before a reader or writer
touches the path, because what ITK does with such input is worse than an error:

* anything but a regular file (a FIFO, a device, a socket) is refused before it is opened
  (`check_regular_file`): reading a FIFO waits forever for a writer, a device streams
  without end;
* a NRRD file without its magic, a MetaImage file not starting with ``Key = value``
  (`check_header_start`): ITK's messages for these are C++ dumps;
* a detached header's data file must exist and be a regular file (`check_data_file`); one
  outside the header's folder is read with a warning (see the Security note of
  `medseg_helpers.data.io.read_volume`);
* a NIfTI extension mixing upper and lower case, which niftilib refuses
  (`mixed_case_nifti`), and writing onto an existing folder (`check_writable_name`).
"""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

_NIFTI_EXTENSIONS = (".nii", ".nii.gz")
_HEADER_TEXT_BYTES = 2**16  # most of a NRRD/MetaImage header searched for its data file


class VolumeReadError(ValueError):
    """A file or DICOM folder exists but holds no readable volume (message names it)."""


def check_regular_file(path: Path, what: str = "") -> None:
    """Refuse anything but a regular file (or a link to one) before it is opened: reading a
    FIFO would wait forever for a writer, a device would stream without end.

    Args:
        path: the file about to be read.
        what: how the message names ``path`` after ``cannot read``, e.g. a header's data
            file; default ``path`` itself.

    Raises:
        VolumeReadError: ``path`` is a FIFO, folder, device or socket.
    """
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        return
    kinds = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISDIR: "a folder",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket"}
    kind = next((text for test, text in kinds.items() if test(mode)), "not a file")
    raise VolumeReadError(f"cannot read {what or path}: it is {kind}, not a regular file")


def check_header_start(path: Path, image_io: str) -> None:
    """Refuse a NRRD file without the ``NRRD000x`` magic, a MetaImage file whose first line
    is not ``Key = value`` text: ITK's messages for these are C++ dumps.

    Args:
        image_io: the ITK ImageIO about to read ``path`` (``"NrrdImageIO"``,
            ``"MetaImageIO"``; any other is not checked).

    Raises:
        VolumeReadError: naming ``path`` and the format it is not.
    """
    with path.open("rb") as file:
        start = file.read(64)
    if image_io == "NrrdImageIO" and not re.match(rb"NRRD000\d", start):
        raise VolumeReadError(f"cannot read {path}: not a readable NRRD file: it does not start "
                              "with the magic NRRD000x")
    if image_io == "MetaImageIO" and not re.match(rb"\s*[A-Za-z_]\w*\s*=", start):
        raise VolumeReadError(f"cannot read {path}: not a readable MetaImage file: it does not "
                              "start with a 'Key = value' header line")


def check_data_file(header: Path, image_io: str) -> None:
    """Refuse a data file that is missing or not a regular file; warn when it lies outside
    the header's folder (see the Security note of `medseg_helpers.data.io.read_volume`).

    Args:
        header: a NRRD or MetaImage file, detached (``.nhdr``, ``.mhd``) or not.
        image_io: ``"NrrdImageIO"`` or ``"MetaImageIO"``: which field names the data file.

    Raises:
        VolumeReadError: the data file is missing, or not a regular file.
    """
    data = _named_data_file(header, image_io)
    if data is None:
        return
    if not data.exists():
        raise VolumeReadError(f"cannot read {header}: its data file {data} does not exist")
    check_regular_file(data, f"{header}: its data file {data}")
    if not data.resolve().is_relative_to(header.resolve().parent):
        logger.warning("%s: reads its voxels from %s, outside the header's folder; a detached "
                       "header may name any file: read only headers you trust", header, data)


def _named_data_file(header: Path, image_io: str) -> Path | None:
    """The one data file a NRRD (``data file:``) or MetaImage (``ElementDataFile =``) header
    names, relative to its folder; ``None`` for voxels in the same file, file lists and
    numbered file-name patterns."""
    with header.open("rb") as file:
        text = file.read(_HEADER_TEXT_BYTES).decode("latin-1")
    if image_io == "NrrdImageIO":
        text = re.split(r"\r?\n\r?\n", text, maxsplit=1)[0]  # the header ends at a blank line
        match = re.search(r"^data ?file\s*:=?\s*(.*?)\s*$", text, re.MULTILINE | re.IGNORECASE)
    else:
        match = re.search(r"^\s*ElementDataFile\s*=\s*(.*?)\s*$", text, re.MULTILINE)
    name = match.group(1) if match else ""
    if not name or name.split()[0].upper() in ("LOCAL", "LIST") or "%" in name:
        return None
    return header.parent / name


def check_writable_name(path: Path, ext: str) -> None:
    """Refuse a name ITK could not read back, or an existing folder.

    Args:
        ext: ``path``'s supported extension, lower case (see
            `medseg_helpers.data.io.detect_format`).

    Raises:
        ValueError: a mixed-case NIfTI extension (see `mixed_case_nifti`).
        IsADirectoryError: ``path`` is an existing folder.
    """
    mixed_case = mixed_case_nifti(path, ext)
    if mixed_case:
        raise ValueError(f"cannot write {path}: {mixed_case}")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is an existing folder; give a file "
                                "name inside it instead")


def mixed_case_nifti(path: Path, ext: str) -> str:
    """Why ``path``'s NIfTI extension is refused by niftilib (``".Nii"``, ``".NII.gz"``: mixed
    case), or ``""`` if it is not NIfTI or is all lower or all upper case.

    Args:
        ext: ``path``'s supported extension, lower case, e.g. ``".nii.gz"``.
    """
    suffix = path.name[-len(ext):]
    if ext not in _NIFTI_EXTENSIONS or suffix in (ext, ext.upper()):
        return ""
    return (f"the NIfTI extension {suffix!r} mixes upper and lower case, which NIfTI readers "
            f"(niftilib, ITK) refuse; use {ext} or {ext.upper()}")
