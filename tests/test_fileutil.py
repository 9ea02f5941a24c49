"""fileutil: atomic writes and the one converter to JSON types (NaN as null everywhere)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medseg_helpers.fileutil import to_json_ready, write_text_atomic
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


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_are_readable_as_the_umask_says(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "report.md", "# report\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode  # as open(path, "w") would have made it
