"""Verified, resumable downloads of public segmentation datasets.

``download_task("Task04_Hippocampus")`` fetches a Medical Segmentation Decathlon task with
resume and retries, checks its MD5 before keeping it, extracts it safely and returns the task
folder; a second call returns at once without the network. ``python -m data_download --list``
prints every dataset with its size and licence. See ``data_download/README.md``.
"""

from data_download.downloader import (
    BASE_URL_ENV_VAR,
    MARKER_NAME,
    ChecksumMismatchError,
    DownloadError,
    InsufficientDiskSpaceError,
    compute_checksums,
    download_file,
    download_task,
    main,
    verify_checksums,
)
from data_download.extract import ArchiveError, UnsafeArchiveError, is_resource_fork, safe_extract
from data_download.manifest import (
    Manifest,
    ManifestError,
    ManualDataset,
    TaskEntry,
    format_manifest_table,
    load_manifest,
    parse_manifest,
)

__all__ = [
    "BASE_URL_ENV_VAR",
    "MARKER_NAME",
    "ArchiveError",
    "ChecksumMismatchError",
    "DownloadError",
    "InsufficientDiskSpaceError",
    "Manifest",
    "ManifestError",
    "ManualDataset",
    "TaskEntry",
    "UnsafeArchiveError",
    "compute_checksums",
    "download_file",
    "download_task",
    "format_manifest_table",
    "is_resource_fork",
    "load_manifest",
    "main",
    "parse_manifest",
    "safe_extract",
    "verify_checksums",
]
