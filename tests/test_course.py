"""The course runner executes notebooks in order, collects metrics and fails loudly."""

import json

import nbformat
import pytest

from medseg_helpers import course
from medseg_helpers.cli import main


def _notebook(path, *sources, parameters="PROFILE = 'smoke'"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3", "language": "python"
    }  # fmt: skip
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nbformat.write(nb, path)


RECORD = "from medseg_helpers.course import record\nrecord({name!r}, {metrics!r})"


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    return folder


def test_record_writes_json_under_the_run_dir(tmp_path):
    import numpy as np

    path = course.record("07_x", {"dice": np.float32(0.5), "n": np.int64(3)}, run_dir=tmp_path)
    assert path == tmp_path / "metrics" / "07_x.json"
    assert json.loads(path.read_text()) == {"dice": 0.5, "n": 3}


def test_record_rejects_values_that_are_not_json():
    with pytest.raises(TypeError, match="not JSON-friendly"):
        course.record("07_x", {"model": object()})


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"val_dice": 0.9}, []),
        ({"val_dice": 0.8}, ["val_dice = 0.8, needs >= 0.85"]),
        ({}, ["val_dice missing (needs >= 0.85)"]),
        ({"val_dice": "nan"}, ["val_dice missing (needs >= 0.85)"]),
    ],
)
def test_thresholds(monkeypatch, metrics, expected):
    monkeypatch.setitem(course.THRESHOLDS, "cpu", {"05_training": {"val_dice": (">=", 0.85)}})
    assert course.check_thresholds("cpu", "05_training", metrics) == expected


@pytest.mark.slow
def test_run_course_runs_in_order_and_reports(notebooks, tmp_path):
    _notebook(notebooks / "00_a.ipynb", RECORD.format(name="00_a", metrics={"x": 1}))
    _notebook(notebooks / "01_b.ipynb", "raise RuntimeError('boom in 01')")
    _notebook(notebooks / "02_c.ipynb", RECORD.format(name="02_c", metrics={"y": 2.5}))
    out = tmp_path / "run"
    results = course.run_course("smoke", out, notebook_dir=notebooks)

    assert [(r.notebook, r.status) for r in results] == [
        ("00_a", "passed"), ("01_b", "failed"), ("02_c", "passed"),
    ]  # fmt: skip
    assert "boom in 01" in results[1].error
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["passed"] is False
    assert summary["notebooks"]["02_c"]["metrics"] == {"y": 2.5}
    assert (out / "notebooks" / "01_b.ipynb").exists()  # executed copy kept for debugging
    assert "| 01_b | failed |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_parameters_cell_receives_the_profile(notebooks, tmp_path):
    _notebook(notebooks / "00_a.ipynb", "from medseg_helpers.course import record\n"
              "record('00_a', {'profile': PROFILE})")  # fmt: skip
    results = course.run_course("cpu", tmp_path / "run", notebook_dir=notebooks)
    assert results[0].metrics == {"profile": "cpu"}


@pytest.mark.slow
def test_timeout_stops_the_notebook(notebooks, tmp_path):
    _notebook(notebooks / "00_slow.ipynb", "import time\ntime.sleep(60)")
    [result] = course.run_course("smoke", tmp_path / "run", notebook_dir=notebooks, timeout_s=8)
    assert result.status == "timeout" and result.seconds < 30


@pytest.mark.slow
def test_cli_exits_non_zero_when_a_notebook_fails(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "00_bad.ipynb", "assert False, 'threshold not met'")
    monkeypatch.setattr(course, "list_notebooks", lambda _=None: sorted(folder.glob("*.ipynb")))
    code = main(["course", "run", "--profile", "smoke", "--out", str(tmp_path / "run")])
    assert code == 1
    assert "FAILED: 00_bad" in capsys.readouterr().err


def test_unknown_notebook_selection_lists_what_exists(notebooks, tmp_path):
    _notebook(notebooks / "00_a.ipynb", "pass")
    with pytest.raises(ValueError, match="no notebook matches \\['42'\\]; available: 00_a"):
        course.run_course("smoke", tmp_path, notebooks=["42"], notebook_dir=notebooks)
