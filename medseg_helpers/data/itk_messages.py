"""What the C++ readers say about a file, turned into one short line.

SimpleITK's exceptions carry the C++ source location, ``ITK ERROR: NrrdImageIO(0x...)``
prefixes and teem's call chain around the one useful sentence; MetaIO, niftilib, GDCM and
VNL print their reasons straight to file descriptor 2, past Python's ``sys.stderr``, where
a notebook or a log never shows them next to the error. `native_stderr_captured` collects
that text around a read (logged as warnings when the read succeeds), and `itk_reason`
folds the exception and that text into the line `medseg_helpers.data.io` puts after
``cannot read <file>:``.

File descriptor 2 is borrowed only while this is the process's one Python thread
(`stderr_is_ours`): every thread writes there, e.g. a server's logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

_REASON_CHARS = 300  # longest reason quoted from a C++ reader
#: Lines of a C++ reader's error that repeat what our message says ("cannot read X").
_ITK_REDUNDANT = re.compile(r"trouble\b.*|Error reading .*|File cannot be read: .*"
                            r"|Reason: Success", re.IGNORECASE)
#: Lines that only say "it failed" (call-chain wrappers, errno text MetaIO never set).
_ITK_GENERIC = re.compile(r"MET_Read Failed|Error parsing file|Cannot parse file|Reason: .*",
                          re.IGNORECASE)


@contextlib.contextmanager
def native_stderr_captured(source: Path, lines: list[str]) -> Iterator[None]:
    """Collect what C/C++ readers (MetaIO, niftilib, GDCM, VNL) print straight to file
    descriptor 2 into ``lines``; if the block succeeds they are logged as warnings.

    Only when `stderr_is_ours`; otherwise the text is left on stderr.

    Args:
        source: the file or folder being read, named in the warnings.
        lines: extended with the non-blank lines printed (of the first 1,200 bytes), for
            `itk_reason` when the block raises.
    """
    if not stderr_is_ours():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                text = sink.read(4 * _REASON_CHARS).decode("utf-8", errors="replace")
                lines.extend(line.strip() for line in text.splitlines() if line.strip())
    finally:
        os.close(saved)
    for line in lines:
        logger.warning("%s: %s", source, line)


def stderr_is_ours() -> bool:
    """Whether file descriptor 2 may be borrowed for a read: only while this is the process's
    one Python thread (a command line), as every thread writes there (a server's logs)."""
    return threading.active_count() == 1


def itk_reason(err: RuntimeError, native: Sequence[str] = ()) -> str:
    """The useful part of a SimpleITK exception and of what its reader printed, one line.

    Drops the C++ source location, ``ITK ERROR: NrrdImageIO(0x...)`` prefixes, teem's
    ``[nrrd] function:`` call chain and MetaIO's generic "cannot parse" lines; keeps the
    specific cause (e.g. ``expected 1440 bytes but received 526``), non-printable bytes
    shown as ``?`` and at most 300 characters.

    Args:
        err: the exception SimpleITK raised (its first line is SimpleITK's own wrapper).
        native: what the reader printed on file descriptor 2 (`native_stderr_captured`).
    """
    lines = [_clean_itk_line(line) for line in [*str(err).splitlines()[1:], *native]]
    lines = [line for line in lines if line and not _ITK_REDUNDANT.fullmatch(line)]
    useful = [line for line in lines if not _ITK_GENERIC.fullmatch(line)]
    reason = ("; ".join(dict.fromkeys(useful or lines))
              or "no reason given (the C++ reader may have printed one on stderr)")
    reason = re.sub(r'"([^"]{20})[^"]+"', '"\\1..."', reason)  # e.g. a random "magic" line
    reason = "".join(char if char.isprintable() else "?" for char in reason)
    return reason[:_REASON_CHARS]


def _clean_itk_line(line: str) -> str:
    """One line of an ITK/teem/MetaIO message without its prefixes and pointer addresses."""
    line = re.sub(r"(itk::|ITK |sitk::)?ERROR:\s*", "", line.strip())
    line = re.sub(r"\w+\(0x[0-9a-fA-F]+\):\s*", "", line)  # NrrdImageIO(0x55e3...):
    line = re.sub(r"\[\w+\]\s*", "", line)  # [nrrd]
    line = re.sub(r"0x[0-9a-fA-F]{6,}", "0x...", line)
    if line.startswith("Reason: "):  # errno text, kept as such
        return line
    return re.sub(r"^([A-Za-z_]\w*:(\s+|$))+", "", line)  # nrrdLoad: _nrrdRead: MetaImage: Read:
