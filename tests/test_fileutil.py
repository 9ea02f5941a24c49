"""fileutil: atomic, durable writes, their leftovers, and the one converter to JSON types."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medseg_helpers import fileutil
from medseg_helpers.fileutil import (
    atomic_path,
    fsync_path,
    remove_stale_temporaries,
    to_json_ready,
    write_text_atomic,
)
from medseg_helpers.training.checkpoint import save_checkpoint
from medseg_helpers.training.history import write_config_yaml, write_metrics_json


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (3, 3),
        (0.25, 0.25),
        ("nan", "nan"),  # a string stays a string
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
        (np.float32(0.5), 0.5),
        (np.float64("nan"), None),
        (np.int64(7), 7),
        (np.bool_(True), True),
        (torch.tensor(2.5), 2.5),
        (torch.tensor([1.0, math.inf]), [1.0, None]),
        (np.array([[1, 2], [3, 4]], np.uint8), [[1, 2], [3, 4]]),
        ((1, (2, 3)), [1, [2, 3]]),
        (Path("runs") / "a", str(Path("runs") / "a")),
        ({1: {"x": math.nan}, "y": [np.float32(1.5)]}, {"1": {"x": None}, "y": [1.5]}),
    ],
)
def test_to_json_ready_by_hand(value, expected):
    converted = to_json_ready(value)
    assert converted == expected
    assert json.loads(json.dumps(converted, allow_nan=False)) == expected  # strict JSON


def test_to_json_ready_gives_builtin_types():
    converted = to_json_ready({"a": np.float32(0.5), "b": np.int64(2), "c": np.bool_(False)})
    assert [type(v) for v in converted.values()] == [float, int, bool]


def test_to_json_ready_names_what_it_cannot_convert():
    with pytest.raises(TypeError, match=r"^object <object object at .*> is not JSON-friendly$"):
        to_json_ready({"model": [object()]})


def test_training_metrics_and_config_write_nan_as_null(tmp_path):
    metrics = json.loads(write_metrics_json({"best_val_dice": math.nan, "epoch": np.int64(3)},
                                            tmp_path / "m.json").read_text(encoding="utf-8"))
    assert metrics == {"best_val_dice": None, "epoch": 3}
    config = yaml.safe_load(write_config_yaml({"patch": (8, 16), "lr": math.inf,
                                               "dir": tmp_path}, tmp_path / "c.yaml").read_text())
    assert config == {"patch": [8, 16], "lr": None, "dir": str(tmp_path)}


def test_write_text_atomic_creates_the_folder_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "new" / "a.txt", "hello")
    assert path.read_text(encoding="utf-8") == "hello"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def _write_text(path: Path) -> Path:
    return write_text_atomic(path, "# report\n")


def _write_checkpoint(path: Path) -> Path:
    return save_checkpoint({"model": {"w": torch.ones(2)}}, path)


def _write_through_atomic_path(path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"onnx bytes")  # as exporters write: to the temporary path
    return path


@pytest.mark.parametrize("write", [_write_text, _write_checkpoint, _write_through_atomic_path],
                         ids=["write_text_atomic", "save_checkpoint", "atomic_path"])
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_are_readable_as_the_umask_says(tmp_path, write, umask, mode):
    """The Docker image runs as another user: a model exported on the host under the usual
    umask 0o022 must be readable by others (0o644), as ``open(path, "w")`` would make it,
    not ``mkstemp``'s private 0o600; a private umask (0o077) keeps it private."""
    old = os.umask(umask)
    try:
        path = write(tmp_path / "model.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_temporaries_are_hidden_and_name_their_target_and_writer(tmp_path):
    with atomic_path(tmp_path / "last.pt") as tmp:
        assert tmp.parent == tmp_path
        assert re.fullmatch(rf"\.last\.{os.getpid()}\.[a-z0-9_]+\.tmp\.pt", tmp.name)
        tmp.write_bytes(b"x")
    with atomic_path(tmp_path / "model.onnx", suffix=".onnx") as tmp:
        assert re.fullmatch(rf"\.model\.{os.getpid()}\.[a-z0-9_]+\.tmp\.onnx", tmp.name)
        tmp.write_bytes(b"x")


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(
        tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    synced = []

    def recording_fsync(path):
        kind = "folder" if Path(path) == tmp_path else "temporary"
        synced.append((kind, Path(path).read_bytes() if kind == "temporary" else None,
                       target.exists()))
        return True

    monkeypatch.setattr(fileutil, "fsync_path", recording_fsync)
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"weights")
    assert synced == [("temporary", b"weights", False),  # data on disk, then renamed
                      ("folder", None, True)]  # then the rename itself on disk


def test_fsync_path_flushes_files_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    assert fsync_path(tmp_path / "a.txt") is True
    assert fsync_path(tmp_path) is (os.name != "nt")  # Windows cannot open a folder


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EBADF, errno.ENOTSUP])
def test_filesystems_without_fsync_are_written_without_it(tmp_path, monkeypatch, code):
    def unsupported(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", unsupported)
    assert fsync_path(tmp_path) is False
    path = write_text_atomic(tmp_path / "a.txt", "hello")
    assert path.read_text(encoding="utf-8") == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_fsync_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_text_atomic(tmp_path / "a.txt", "old")

    def io_error(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", io_error)
    with pytest.raises(OSError, match="Input/output error"):
        write_text_atomic(path, "new")
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def _dead_pid() -> int:
    """The pid of a child process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _touch(path: Path, age_s: float) -> None:
    path.write_bytes(b"partial checkpoint")
    moment = time.time() - age_s
    os.utime(path, (moment, moment))


@pytest.mark.skipif(os.name == "nt", reason="writer processes are not checked on Windows")
def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    dead, live = _dead_pid(), os.getppid()  # a finished child; pytest's parent still runs
    ages = {
        f".last.{dead}.abcd1234.tmp.pt": 120,  # writer killed: removed
        ".last.k3j2h1g0.tmp.pt": 120,  # older name without a pid: removed
        f".last.{live}.abcd1234.tmp.pt": 2 * 24 * 3600,  # unchanged for days: removed
        f".last.{live}.efgh5678.tmp.pt": 120,  # writer still runs: kept
        f".last.{dead}.efgh5678.tmp.pt": 10,  # written seconds ago: kept (grace period)
        f".best.{dead}.abcd1234.tmp.pt": 120,  # another target: kept
        f".last.{dead}.abcd1234.tmp.onnx": 120,  # another suffix: kept
        "last.pt": 120,
    }
    for name, age in ages.items():
        _touch(tmp_path / name, age)
    removed = remove_stale_temporaries(tmp_path / "last.pt")
    assert sorted(p.name for p in removed) == sorted([
        f".last.{dead}.abcd1234.tmp.pt", ".last.k3j2h1g0.tmp.pt",
        f".last.{live}.abcd1234.tmp.pt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        f".last.{live}.efgh5678.tmp.pt", f".last.{dead}.efgh5678.tmp.pt",
        f".best.{dead}.abcd1234.tmp.pt", f".last.{dead}.abcd1234.tmp.onnx", "last.pt"])


def test_removing_stale_temporaries_of_a_new_folder_removes_nothing(tmp_path):
    assert remove_stale_temporaries(tmp_path / "missing" / "last.pt") == []
