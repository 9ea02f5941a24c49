"""data_download: the manifest, verified resumable downloads, and safe extraction.

Every network test talks to a ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) that the
``server`` fixture starts in a daemon thread and shuts down after the test; its handler
follows a `ServerScript` (fail, drop, ignore Range, ...) and records every request.
Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import socket
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import data_download
from data_download import (
    MARKER_NAME,
    ArchiveError,
    ChecksumMismatchError,
    DownloadError,
    InsufficientDiskSpaceError,
    ManifestError,
    UnsafeArchiveError,
    download_task,
    load_manifest,
    parse_manifest,
    safe_extract,
)
from data_download import downloader as downloader_module
from data_download import extract as extract_module

TASK = "Task99_Test"
IMAGE_BYTES = bytes(range(256)) * 1200  # 307,200 bytes: several read chunks


# --------------------------------------------------------------------------- local server


@dataclass
class ServerScript:
    """What the test server does; the handler appends one dict per request to ``requests``."""

    files: dict[str, bytes] = field(default_factory=dict)
    fail_first: int = 0  # answer HTTP 500 to this many requests first
    status: int | None = None  # answer this status to every request
    drop_after: int | None = None  # first body: close the connection after this many bytes
    ignore_range: bool = False  # always answer 200 with the whole file
    stall_first_s: float = 0.0  # sleep before answering the first request
    base_url: str = ""
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bytes_sent(self) -> int:
        return sum(r["sent"] for r in self.requests)


def _make_handler(script: ServerScript) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            record = {"path": self.path, "range": self.headers.get("Range"), "sent": 0}
            with script.lock:
                index = len(script.requests)
                script.requests.append(record)
            if index == 0 and script.stall_first_s:
                time.sleep(script.stall_first_s)
            if script.status is not None or index < script.fail_first:
                record["status"] = script.status or 500
                self.send_error(record["status"])
                return
            body = script.files.get(self.path)
            if body is None:
                record["status"] = 404
                self.send_error(404)
                return
            start = 0
            if record["range"] and not script.ignore_range:
                start = int(record["range"].removeprefix("bytes=").rstrip("-"))
                if start >= len(body):
                    record["status"] = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            payload = body[start:]
            record["status"] = 206 if start else 200
            self.send_response(record["status"])
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if script.drop_after is not None:
                payload, script.drop_after = payload[: script.drop_after], None
                self.wfile.write(payload)
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)  # EOF before Content-Length
            else:
                self.wfile.write(payload)
            record["sent"] = len(payload)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that timed out is expected
        pass


@pytest.fixture
def server():
    """A scripted HTTP server on 127.0.0.1; yields its `ServerScript`, stops after the test."""
    script = ServerScript()
    httpd = _QuietServer(("127.0.0.1", 0), _make_handler(script))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    script.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield script
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_mirror_no_proxy(monkeypatch):
    monkeypatch.delenv(downloader_module.BASE_URL_ENV_VAR, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Backoff waits the downloader asked for (recorded instead of slept)."""
    waits: list[float] = []
    monkeypatch.setattr(downloader_module, "_sleep", waits.append)
    return waits


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{TASK}.tar"  # nothing listens there any more


# --------------------------------------------------------------------------- archives


def _tar_bytes(members: list[tuple], mode: str = "w") -> bytes:
    """Tar with ``(name, kind, data_or_linkname)`` members; kind: file dir sym hard chr fifo."""
    kinds = {
        "dir": tarfile.DIRTYPE,
        "sym": tarfile.SYMTYPE,
        "hard": tarfile.LNKTYPE,
        "chr": tarfile.CHRTYPE,
        "fifo": tarfile.FIFOTYPE,
        "file": tarfile.REGTYPE,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind in ("sym", "hard"):
                info.linkname = value
            if kind == "file":
                info.size = len(value)
                tf.addfile(info, io.BytesIO(value))
            else:
                tf.addfile(info)
    return buffer.getvalue()


def _task_members() -> list[tuple]:
    """A tiny Decathlon-style task, with the macOS ``._`` members the real tars contain."""
    dataset = json.dumps({"name": "Test", "labels": {"0": "background", "1": "organ"}}).encode()
    return [
        (f"._{TASK}", "file", b"\x00\x05\x16\x07 AppleDouble"),
        (TASK, "dir", None),
        (f"{TASK}/dataset.json", "file", dataset),
        (f"{TASK}/imagesTr", "dir", None),
        (f"{TASK}/imagesTr/x.nii.gz", "file", IMAGE_BYTES),
        (f"{TASK}/imagesTr/._x.nii.gz", "file", b"\x00\x05\x16\x07 junk"),
    ]


@pytest.fixture
def archive_bytes() -> bytes:
    return _tar_bytes(_task_members())


def _manifest(url: str, data: bytes, md5: str | None = None) -> dict:
    return {
        "tasks": {
            TASK: {
                "url": url,
                "md5": md5 or hashlib.md5(data).hexdigest(),
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_bytes": len(data),
                "licence": "CC-BY-SA 4.0",
                "citation": ["A test archive (2024)."],
                "description": "Generated in tmp_path.",
            }
        }
    }


@pytest.fixture
def serve_task(server, archive_bytes, tmp_path):
    """``fetch(**kwargs) -> folder``: download_task for the served Task99_Test archive."""
    server.files[f"/{TASK}.tar"] = archive_bytes
    manifest = _manifest(f"{server.base_url}/{TASK}.tar", archive_bytes)

    def fetch(**kwargs):
        options = {"progress": False, "backoff_s": 0.0, "timeout_s": 5.0, "manifest": manifest}
        return download_task(TASK, tmp_path / "data", **(options | kwargs))

    return fetch


def _archive_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "downloads" / f"{TASK}.tar"


# --------------------------------------------------------------------------- manifest


def test_manifest_lists_all_ten_decathlon_tasks_with_url_md5_and_licence():
    manifest = load_manifest()
    assert sorted(manifest.tasks) == [
        "Task01_BrainTumour",
        "Task02_Heart",
        "Task03_Liver",
        "Task04_Hippocampus",
        "Task05_Prostate",
        "Task06_Lung",
        "Task07_Pancreas",
        "Task08_HepaticVessel",
        "Task09_Spleen",
        "Task10_Colon",
    ]
    for name, entry in manifest.tasks.items():
        assert entry.url == f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{name}.tar"
        assert entry.filename == f"{name}.tar"
        assert len(entry.md5) == 32 and entry.sha256 is None
        assert entry.licence == "CC-BY-SA 4.0"
        assert entry.labels["0"] == "background" and entry.modality


def test_manifest_md5_of_hippocampus_matches_datasets_md():
    assert load_manifest().task("Task04_Hippocampus").md5 == "9d24dba78a72977dbd1d2e110310f31b"


def test_manifest_sizes_are_approximate_and_hippocampus_is_about_27_mib():
    manifest = load_manifest()
    hippocampus = manifest.task("Task04_Hippocampus").size_bytes
    assert 26 * 2**20 < hippocampus < 28 * 2**20
    assert all(e.size_is_approximate and e.size_bytes > 0 for e in manifest.tasks.values())
    assert manifest.task("Task01_BrainTumour").size_bytes > 2**30  # "large (GBs)"


def test_manifest_cites_both_decathlon_papers():
    for entry in load_manifest().tasks.values():
        text = " ".join(entry.citation)
        assert "Nature Communications 13, 4128 (2022)" in text and "arXiv:1902.09063" in text


def test_brats_and_lidc_are_described_but_not_downloadable(tmp_path):
    manifest = load_manifest()
    assert manifest.manual["LIDC-IDRI"].licence == "CC-BY 3.0"
    assert "Synapse" in manifest.manual["BraTS"].url + manifest.manual["BraTS"].licence + (
        manifest.manual["BraTS"].access
    )
    with pytest.raises(ValueError, match="BraTS cannot be downloaded automatically"):
        download_task("BraTS", tmp_path)


def test_unknown_task_error_lists_the_known_tasks(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'Task04_Hipocampus'.*Task04_Hippocampus"):
        download_task("Task04_Hipocampus", tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"md5": None}, "missing md5"),
        ({"md5": "abc"}, "md5 must be 32 hexadecimal digits"),
        ({"sha256": "xyz"}, "sha256 must be 64 hexadecimal digits"),
        ({"url": "ftp://example.org/a.tar"}, "url must be an http"),
        ({"licence": ""}, "missing licence"),
        ({"size_bytes": -1}, "size_bytes must be a positive integer"),
    ],
)
def test_malformed_manifest_entry_is_rejected_naming_the_field(change, message):
    raw = _manifest("https://example.org/Task99_Test.tar", b"data")
    raw["tasks"][TASK].update(change)
    with pytest.raises(ManifestError, match=f"{TASK}.*{message}"):
        parse_manifest(raw)


def test_list_prints_sizes_and_licences(capsys):
    assert data_download.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "Task04_Hippocampus" in out and "~27.0 MiB" in out and "CC-BY-SA 4.0" in out
    assert "LIDC-IDRI" in out and "CC-BY 3.0" in out


# --------------------------------------------------------------------------- downloads


def test_download_extracts_the_task_and_skips_resource_forks(serve_task, tmp_path):
    folder = serve_task()
    assert folder == (tmp_path / "data" / TASK).resolve()
    assert (folder / "imagesTr" / "x.nii.gz").read_bytes() == IMAGE_BYTES
    assert json.loads((folder / "dataset.json").read_text())["name"] == "Test"
    assert not [p for p in (tmp_path / "data").rglob("._*")]
    assert _archive_path(tmp_path).is_file()  # kept to rebuild the folder offline
    assert not list((tmp_path / "data" / "downloads").glob("*.part"))


def test_completion_marker_records_the_verified_checksum(serve_task, archive_bytes):
    marker = json.loads((serve_task() / MARKER_NAME).read_text())
    assert marker["task"] == TASK and marker["md5"] == hashlib.md5(archive_bytes).hexdigest()


def test_second_call_returns_without_any_request(serve_task, server):
    first = serve_task()
    count = len(server.requests)
    assert count == 1
    assert serve_task() == first
    assert serve_task(url=_closed_port_url()) == first  # not even an offline error
    assert len(server.requests) == count


def test_interrupted_download_resumes_with_range_and_fetches_only_the_rest(
    serve_task, server, archive_bytes
):
    server.drop_after = 100_000
    serve_task()
    first, second = server.requests
    assert first["range"] is None and first["sent"] == 100_000
    assert second["range"] == "bytes=100000-" and second["status"] == 206
    assert second["sent"] == len(archive_bytes) - 100_000
    assert server.bytes_sent() == len(archive_bytes)


def test_server_ignoring_range_restarts_from_zero(serve_task, server, tmp_path, archive_bytes):
    part = _archive_path(tmp_path).with_suffix(".tar.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from another file")
    server.ignore_range = True
    folder = serve_task()
    [request] = server.requests
    assert request["range"] == "bytes=29-" and request["status"] == 200
    assert (folder / "imagesTr" / "x.nii.gz").read_bytes() == IMAGE_BYTES


def test_complete_part_answered_with_416_is_verified_not_fetched_again(
    serve_task, server, tmp_path, archive_bytes
):
    part = _archive_path(tmp_path).with_suffix(".tar.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(archive_bytes)  # e.g. interrupted between download and rename
    serve_task()
    assert [(r["range"], r["status"]) for r in server.requests] == [
        (f"bytes={len(archive_bytes)}-", 416)
    ]


def test_oversized_part_answered_with_416_restarts_from_zero(
    serve_task, server, tmp_path, archive_bytes
):
    part = _archive_path(tmp_path).with_suffix(".tar.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(archive_bytes + b"trailing garbage")
    serve_task()
    assert [r["status"] for r in server.requests] == [416, 200]
    assert server.requests[1]["range"] is None


def test_server_errors_are_retried_with_exponential_backoff(serve_task, server, sleeps):
    server.fail_first = 3
    serve_task(retries=4, backoff_s=0.5)
    assert [r["status"] for r in server.requests] == [500, 500, 500, 200]
    assert sleeps == [0.5, 1.0, 2.0]  # backoff_s * 2**k


def test_server_errors_give_up_after_the_retries(serve_task, server, sleeps, tmp_path):
    server.fail_first = 100
    with pytest.raises(DownloadError, match="failed after 3 attempts: HTTP 500"):
        serve_task(retries=2)
    assert len(server.requests) == 3
    assert not _archive_path(tmp_path).exists()


@pytest.mark.parametrize("status", [403, 404])
def test_client_errors_fail_at_once_without_retry(serve_task, server, sleeps, tmp_path, status):
    server.status = status
    with pytest.raises(DownloadError, match=f"HTTP {status} .*not retrying"):
        serve_task(retries=4)
    assert len(server.requests) == 1 and sleeps == []
    assert not (tmp_path / "data" / "downloads").exists() or not any(
        (tmp_path / "data" / "downloads").iterdir()
    )


def test_read_timeout_is_retried(serve_task, server):
    server.stall_first_s = 1.0
    serve_task(timeout_s=0.2, retries=2)
    assert len(server.requests) == 2


def test_bad_checksum_deletes_the_part_and_names_expected_and_actual(
    server, archive_bytes, tmp_path
):
    server.files[f"/{TASK}.tar"] = archive_bytes
    manifest = _manifest(f"{server.base_url}/{TASK}.tar", archive_bytes, md5="0" * 32)
    actual = hashlib.md5(archive_bytes).hexdigest()
    with pytest.raises(ChecksumMismatchError, match=f"expected {'0' * 32}, got {actual}"):
        download_task(TASK, tmp_path / "data", manifest=manifest, progress=False)
    assert not any((tmp_path / "data" / "downloads").iterdir())  # no .part, no archive
    assert not (tmp_path / "data" / TASK).exists()


def test_offline_error_says_so_and_where_to_put_the_archive(serve_task, tmp_path, sleeps):
    with pytest.raises(DownloadError, match="after 3 attempts.*seems to be offline") as info:
        serve_task(url=_closed_port_url(), retries=2, backoff_s=0.01)
    assert str(_archive_path(tmp_path).resolve()) in str(info.value)
    assert sleeps == [0.01, 0.02]


def test_archive_placed_by_hand_is_extracted_without_network(
    serve_task, server, tmp_path, archive_bytes
):
    _archive_path(tmp_path).parent.mkdir(parents=True)
    _archive_path(tmp_path).write_bytes(archive_bytes)
    folder = serve_task(url=_closed_port_url())
    assert (folder / "dataset.json").is_file() and server.requests == []


def test_wrong_archive_placed_by_hand_is_refused(serve_task, tmp_path):
    _archive_path(tmp_path).parent.mkdir(parents=True)
    _archive_path(tmp_path).write_bytes(b"not the archive")
    with pytest.raises(ChecksumMismatchError, match="md5 mismatch.*not the expected Task99"):
        serve_task()


def test_not_enough_disk_space_fails_before_any_request(serve_task, server, monkeypatch):
    monkeypatch.setattr(downloader_module, "_free_bytes", lambda folder: 1000)
    with pytest.raises(InsufficientDiskSpaceError, match="not enough disk space.*1000 B free"):
        serve_task()
    assert server.requests == []


def test_incomplete_task_folder_is_replaced(serve_task, tmp_path):
    leftover = tmp_path / "data" / TASK / "imagesTr" / "half_written.nii.gz"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    folder = serve_task()
    assert not leftover.exists() and (folder / MARKER_NAME).is_file()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        TASK,
        "downloads",
    ]  # stale copy removed


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative POSIX name, with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _warnings(caplog) -> list[str]:
    """The messages the downloader logged at WARNING or above."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == downloader_module.__name__ and r.levelno >= logging.WARNING
    ]


def test_completion_marker_lists_every_extracted_file_with_its_size(serve_task):
    marker = json.loads((serve_task() / MARKER_NAME).read_text())
    dataset = json.dumps({"name": "Test", "labels": {"0": "background", "1": "organ"}})
    assert marker["files"] == {"dataset.json": len(dataset), "imagesTr/x.nii.gz": len(IMAGE_BYTES)}


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (Path.unlink, "imagesTr/x.nii.gz is missing"),
        (
            lambda p: p.write_bytes(IMAGE_BYTES[:1000]),
            "imagesTr/x.nii.gz has 1000 bytes, expected 307200",
        ),
        (lambda p: (p.unlink(), p.mkdir()), "imagesTr/x.nii.gz is not a regular file"),
    ],
    ids=["deleted", "truncated", "replaced-by-a-folder"],
)
def test_damaged_task_is_re_extracted_from_the_archive_saying_why(
    serve_task, server, tmp_path, caplog, damage, problem
):
    folder = serve_task()
    damage(folder / "imagesTr" / "x.nii.gz")
    assert serve_task(url=_closed_port_url()) == folder  # no network needed: the archive is kept
    assert (folder / "imagesTr" / "x.nii.gz").read_bytes() == IMAGE_BYTES
    assert len(server.requests) == 1
    archive = _archive_path(tmp_path).resolve()
    assert _warnings(caplog) == [
        f"{folder} is not ready: {problem}; re-extracting it from {archive}"
    ]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [TASK, "downloads"]


def test_damaged_task_without_its_archive_is_downloaded_again(serve_task, server, caplog):
    folder = serve_task(keep_archive=False)
    (folder / "dataset.json").unlink()
    serve_task(keep_archive=False)
    assert json.loads((folder / "dataset.json").read_text())["name"] == "Test"
    assert [r["status"] for r in server.requests] == [200, 200]
    assert _warnings(caplog) == [
        f"{folder} is not ready: dataset.json is missing; downloading it again"
    ]


def test_marker_without_a_file_list_counts_as_incomplete(serve_task, tmp_path, caplog):
    folder = serve_task()
    marker = json.loads((folder / MARKER_NAME).read_text())
    del marker["files"]  # as written before the file list existed
    (folder / MARKER_NAME).write_text(json.dumps(marker))
    serve_task(url=_closed_port_url())
    assert "files" in json.loads((folder / MARKER_NAME).read_text())
    assert _warnings(caplog) == [
        f"{folder} is not ready: {MARKER_NAME} has no file list (written by an older version); "
        f"re-extracting it from {_archive_path(tmp_path).resolve()}"
    ]


def test_files_added_to_a_complete_task_are_ignored_and_kept(serve_task, server):
    folder = serve_task()
    (folder / "notes.txt").write_text("mine")
    assert serve_task(url=_closed_port_url()) == folder
    assert (folder / "notes.txt").read_text() == "mine" and len(server.requests) == 1


def _update_to(server, tmp_path, members: list[tuple]) -> dict:
    """Serve a new Task99_Test archive of ``members``; return a manifest whose md5 is its."""
    data = _tar_bytes(members)
    server.files[f"/{TASK}.tar"] = data
    return _manifest(f"{server.base_url}/{TASK}.tar", data)


def test_failed_update_puts_the_previous_task_folder_back_unchanged(
    serve_task, server, tmp_path, caplog
):
    folder = serve_task(keep_archive=False)
    before = _contents(folder)
    old_md5 = json.loads((folder / MARKER_NAME).read_text())["md5"]
    manifest = _update_to(server, tmp_path, [*_task_members(), (".", "file", b"x")])
    message = "unsafe archive member '.': names the extraction folder itself, not a file in it"
    with pytest.raises(UnsafeArchiveError, match=f"^{re.escape(message)}$"):
        serve_task(manifest=manifest)
    assert _contents(folder) == before  # marker of the previous archive included
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [TASK, "downloads"]
    assert _warnings(caplog) == [
        f"{folder} is not ready: {MARKER_NAME} records another archive (md5 {old_md5}); "
        "downloading it again",
        f"extraction failed; {folder} is back as it was",
    ]


def test_update_interrupted_after_extraction_puts_the_previous_folder_back(
    serve_task, server, tmp_path, monkeypatch
):
    folder = serve_task(keep_archive=False)
    before = _contents(folder)
    changed = [(n, k, b"new" if n.endswith(".json") else v) for n, k, v in _task_members()]
    manifest = _update_to(server, tmp_path, changed)

    def ctrl_c(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(downloader_module, "_write_marker", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        serve_task(manifest=manifest)
    assert _contents(folder) == before  # the new, unmarked extraction is gone
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [TASK, "downloads"]


def _stale_name(pid: int, time_ns: int) -> str:
    return f".{TASK}.stale-{pid}-{time_ns}"


def test_copy_left_by_a_killed_update_is_restored_when_the_task_folder_is_missing(
    serve_task, server, tmp_path, caplog
):
    folder = serve_task()
    before = _contents(folder)
    data = tmp_path / "data"
    folder.rename(data / _stale_name(4242, 2_000))  # killed after moving the folder aside
    (data / _stale_name(4241, 1_000)).mkdir()  # an older copy: deleted
    assert serve_task(url=_closed_port_url()) == folder
    assert _contents(folder) == before and len(server.requests) == 1
    assert sorted(p.name for p in data.iterdir()) == [TASK, "downloads"]
    assert _warnings(caplog) == [
        f"restored {folder} from {_stale_name(4242, 2_000)}, left by an interrupted update"
    ]


def test_copy_left_by_a_killed_update_is_deleted_when_the_task_folder_exists(
    serve_task, server, tmp_path
):
    folder = serve_task()
    old = tmp_path / "data" / _stale_name(4242, 2_000)
    (old / "imagesTr").mkdir(parents=True)
    (old / "imagesTr" / "x.nii.gz").write_bytes(b"old")
    assert serve_task(url=_closed_port_url()) == folder
    assert not old.exists() and len(server.requests) == 1
    assert (folder / "imagesTr" / "x.nii.gz").read_bytes() == IMAGE_BYTES


def test_base_url_env_var_points_downloads_at_a_mirror(
    server, archive_bytes, tmp_path, monkeypatch
):
    server.files[f"/mirror/{TASK}.tar"] = archive_bytes
    monkeypatch.setenv(downloader_module.BASE_URL_ENV_VAR, f"{server.base_url}/mirror/")
    manifest = _manifest(_closed_port_url(), archive_bytes)
    download_task(TASK, tmp_path / "data", manifest=manifest, progress=False)
    assert [r["path"] for r in server.requests] == [f"/mirror/{TASK}.tar"]


def test_progress_bar_writes_to_stderr_only(serve_task, capsys):
    serve_task(progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and f"{TASK}.tar" in captured.err


def test_cli_downloads_and_reminds_of_the_licence(server, archive_bytes, tmp_path, capsys):
    server.files[f"/{TASK}.tar"] = archive_bytes
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(_manifest(_closed_port_url(), archive_bytes)))
    argv = [
        TASK,
        "--data-dir",
        str(tmp_path / "data"),
        "--manifest",
        str(manifest),
        "--url",
        f"{server.base_url}/{TASK}.tar",
        "--no-progress",
    ]
    assert data_download.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{TASK} ready" in out and "Licence: CC-BY-SA 4.0" in out


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    assert data_download.main(["Task00_Nothing", "--data-dir", str(tmp_path)]) == 2
    assert "error: unknown task 'Task00_Nothing'" in capsys.readouterr().err


# --------------------------------------------------------------------------- safe extraction

MALICIOUS = {
    "absolute path": ([("{tmp}/abs_evil.txt", "file", b"x")], "absolute path"),
    "dot-dot": ([("Task/../../evil.txt", "file", b"x")], "contains '..'"),
    "symlink to /etc": ([("etc", "sym", "/etc")], "absolute path '/etc'"),
    "symlink out of tree": ([("d/up", "sym", "../../outside")], "leaves the tree"),
    "hardlink outside": ([("h", "hard", "../outside.txt")], "contains '..'"),
    "hardlink absolute": ([("h", "hard", "/etc/passwd")], "absolute path"),
    "write through symlink": (
        [("sub", "dir", None), ("link", "sym", "sub"), ("link/evil.txt", "file", b"x")],
        "stored under the symbolic link 'link'",
    ),
    "symlink through symlink": ([("a", "sym", "."), ("b", "sym", "a/..")], "links through 'a'"),
    "character device": ([("null", "chr", None)], "device file"),
    "fifo": ([("pipe", "fifo", None)], "device file or FIFO"),
}


@pytest.mark.parametrize("tarfile_filter", [True, False], ids=["with-data-filter", "own-checks"])
@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_tar_is_refused_and_nothing_is_written(
    tmp_path, monkeypatch, case, tarfile_filter
):
    if not tarfile_filter:  # the package's checks alone, as on Python < 3.11.4
        monkeypatch.setattr(extract_module, "_tar_filter_kwargs", dict)
    members, reason = MALICIOUS[case]
    members = [(name.format(tmp=tmp_path), kind, value) for name, kind, value in members]
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar_bytes([("ok.txt", "file", b"fine"), *members]))
    (tmp_path / "outside.txt").write_text("precious")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchiveError, match=f"unsafe archive member .*{reason}"):
        safe_extract(archive, tmp_path / "out" / "dest")
    assert sorted(tmp_path.rglob("*")) == sorted([*before, tmp_path / "out"])  # empty parent
    assert (tmp_path / "outside.txt").stat().st_nlink == 1
    assert (tmp_path / "outside.txt").read_text() == "precious"


ROOT_NAMED = {
    "file ''": ("", "file", b"x"),
    "file '.'": (".", "file", b"x"),
    "file './.'": ("./.", "file", b"x"),
    "symlink '.'": (".", "sym", "ok.txt"),
    "hard link '.'": (".", "hard", "ok.txt"),
}


@pytest.mark.parametrize("tarfile_filter", [True, False], ids=["with-data-filter", "own-checks"])
@pytest.mark.parametrize("case", sorted(ROOT_NAMED))
def test_tar_member_naming_the_root_is_refused_as_unsafe(
    tmp_path, monkeypatch, case, tarfile_filter
):
    if not tarfile_filter:
        monkeypatch.setattr(extract_module, "_tar_filter_kwargs", dict)
    member = ROOT_NAMED[case]
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar_bytes([("ok.txt", "file", b"fine"), member]))
    message = (
        f"unsafe archive member {member[0]!r}: names the extraction folder itself, not a file in it"
    )
    with pytest.raises(UnsafeArchiveError, match=f"^{re.escape(message)}$") as info:
        safe_extract(archive, tmp_path / "out" / "dest")
    assert info.value.member == member[0]
    assert sorted(os.listdir(tmp_path)) == ["evil.tar", "out"]
    assert os.listdir(tmp_path / "out") == []  # no dest, no hidden staging folder


def test_zip_member_named_dot_is_refused_as_unsafe(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr(".", "x")
    message = "unsafe archive member '.': names the extraction folder itself, not a file in it"
    with pytest.raises(UnsafeArchiveError, match=f"^{re.escape(message)}$"):
        safe_extract(archive, tmp_path / "out" / "dest")
    assert os.listdir(tmp_path / "out") == []


def test_folder_entry_for_the_root_is_accepted_as_tar_c_dir_dot_writes_it(tmp_path):
    archive = tmp_path / "dot.tar"
    archive.write_bytes(_tar_bytes([(".", "dir", None), ("./ok.txt", "file", b"fine")]))
    dest = safe_extract(archive, tmp_path / "dest")
    assert os.listdir(dest) == ["ok.txt"] and (dest / "ok.txt").read_bytes() == b"fine"


def test_unsafe_error_names_the_member(tmp_path):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar_bytes([("Task/../../evil.txt", "file", b"x")]))
    with pytest.raises(UnsafeArchiveError, match="'Task/../../evil.txt'") as info:
        safe_extract(archive, tmp_path / "dest")
    assert info.value.member == "Task/../../evil.txt"


def test_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "x")
    with pytest.raises(UnsafeArchiveError, match="'../evil.txt'.*contains '..'"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip"])
def test_tar_gz_and_zip_extract_with_resource_forks_skipped(tmp_path, kind):
    archive = tmp_path / f"task.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for name, member_kind, data in _task_members():
                if member_kind == "file":
                    zf.writestr(name, data)
            zf.writestr(f"__MACOSX/{TASK}/._dataset.json", b"junk")
    else:
        archive.write_bytes(_tar_bytes(_task_members(), "w:gz" if kind == "tar.gz" else "w"))
    dest = safe_extract(archive, tmp_path / "dest")
    names = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert names == [TASK, f"{TASK}/dataset.json", f"{TASK}/imagesTr", f"{TASK}/imagesTr/x.nii.gz"]


def test_single_root_folder_is_flattened_on_request(tmp_path, archive_bytes):
    archive = tmp_path / "task.tar"
    archive.write_bytes(archive_bytes)
    dest = safe_extract(archive, tmp_path / "dest", flatten_single_root=True)
    assert (dest / "dataset.json").is_file() and (dest / "imagesTr" / "x.nii.gz").is_file()


def test_links_inside_the_tree_are_kept(tmp_path):
    archive = tmp_path / "links.tar"
    archive.write_bytes(
        _tar_bytes(
            [
                ("imagesTr/x.nii.gz", "file", b"image"),
                ("latest.nii.gz", "sym", "imagesTr/x.nii.gz"),
                ("copy.nii.gz", "hard", "imagesTr/x.nii.gz"),
            ]
        )
    )
    dest = safe_extract(archive, tmp_path / "dest")
    assert (dest / "latest.nii.gz").is_symlink()
    assert (dest / "latest.nii.gz").read_bytes() == (dest / "copy.nii.gz").read_bytes() == b"image"


def test_interrupted_extraction_leaves_no_folder_behind(tmp_path, archive_bytes):
    archive = tmp_path / "truncated.tar"
    archive.write_bytes(archive_bytes[: len(archive_bytes) // 2])  # cut inside x.nii.gz
    with pytest.raises(ArchiveError, match="truncated|cannot read"):
        safe_extract(archive, tmp_path / "out" / "dest")
    assert list((tmp_path / "out").iterdir()) == []  # no dest, no hidden staging folder


def test_existing_destination_is_refused(tmp_path, archive_bytes):
    archive = tmp_path / "task.tar"
    archive.write_bytes(archive_bytes)
    (tmp_path / "dest").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        safe_extract(archive, tmp_path / "dest")


def test_not_an_archive_raises_archive_error(tmp_path):
    archive = tmp_path / "plain.txt"
    archive.write_text("hello")
    with pytest.raises(ArchiveError, match="cannot read .*plain.txt"):
        safe_extract(archive, tmp_path / "dest")
    assert sorted(os.listdir(tmp_path)) == ["plain.txt"]
