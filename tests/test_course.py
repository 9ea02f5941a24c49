"""The course runner executes notebooks in order, collects metrics and fails loudly."""

import json

import nbformat
import pytest

from medseg_helpers.cli import main
from medseg_helpers.course import profiles, runner


def _notebook(path, *sources, parameters="PROFILE = 'smoke'"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3", "language": "python"
    }  # fmt: skip
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nbformat.write(nb, path)


RECORD = "from medseg_helpers.course.runner import record\nrecord({name!r}, {metrics!r})"


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    return folder


def test_record_writes_json_under_the_run_dir(tmp_path):
    import numpy as np

    path = runner.record("07_x", {"dice": np.float32(0.5), "n": np.int64(3)}, run_dir=tmp_path)
    assert path == tmp_path / "metrics" / "07_x.json"
    assert json.loads(path.read_text(encoding="utf-8")) == {"dice": 0.5, "n": 3}


def test_record_rejects_values_that_are_not_json():
    with pytest.raises(TypeError, match="not JSON-friendly"):
        runner.record("07_x", {"model": object()})


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"val_dice": 0.9}, []),
        ({"val_dice": 0.8}, ["val_dice = 0.8, needs >= 0.85"]),
        ({}, ["val_dice missing (needs >= 0.85)"]),
        ({"val_dice": None}, ["val_dice missing (needs >= 0.85)"]),  # NaN, as recorded
    ],
)
def test_thresholds(monkeypatch, metrics, expected):
    monkeypatch.setitem(profiles.THRESHOLDS, "full", {"05_training": {"val_dice": (">=", 0.85)}})
    assert runner.check_thresholds("full", "05_training", metrics) == expected


def test_a_recorded_nan_is_null_and_fails_its_threshold_as_missing(tmp_path, monkeypatch):
    import math

    import numpy as np

    path = runner.record("05_training", {"val_dice": np.float64("nan"), "hd95_mm": math.inf},
                         run_dir=tmp_path)
    assert path.read_text(encoding="utf-8") == '{\n  "hd95_mm": null,\n  "val_dice": null\n}\n'
    monkeypatch.setitem(profiles.THRESHOLDS, "full", {"05_training": {"val_dice": (">=", 0.85)}})
    metrics = json.loads(path.read_text(encoding="utf-8"))
    assert runner.check_thresholds("full", "05_training", metrics) == [
        "val_dice missing (needs >= 0.85)"]
    assert runner.threshold_checks("full", "05_training", metrics)[0]["value"] is None


@pytest.mark.slow
def test_run_course_runs_in_order_and_reports(notebooks, tmp_path):
    _notebook(notebooks / "00_a.ipynb", RECORD.format(name="00_a", metrics={"x": 1}))
    _notebook(notebooks / "01_b.ipynb", "raise RuntimeError('boom in 01')")
    _notebook(notebooks / "02_c.ipynb", RECORD.format(name="02_c", metrics={"y": 2.5}))
    out = tmp_path / "run"
    results = runner.run_course("smoke", out, notebook_dir=notebooks)

    assert [(r.notebook, r.status) for r in results] == [
        ("00_a", "passed"), ("01_b", "failed"), ("02_c", "passed"),
    ]  # fmt: skip
    assert "boom in 01" in results[1].error
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert summary["passed"] is False
    assert summary["notebooks"]["02_c"]["metrics"] == {"y": 2.5}
    assert (out / "notebooks" / "01_b.ipynb").exists()  # executed copy kept for debugging
    assert "| 01_b | failed |" in (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "boom in 01" in page and summary["environment"]["torch"] in page


@pytest.mark.slow
def test_parameters_cell_receives_the_profile(notebooks, tmp_path):
    _notebook(notebooks / "00_a.ipynb", "from medseg_helpers.course.runner import record\n"
              "record('00_a', {'profile': PROFILE})")  # fmt: skip
    results = runner.run_course("full", tmp_path / "run", notebook_dir=notebooks)
    assert results[0].metrics == {"profile": "full"}


@pytest.mark.slow
def test_timeout_stops_the_notebook(notebooks, tmp_path):
    _notebook(notebooks / "00_slow.ipynb", "import time\ntime.sleep(60)")
    [result] = runner.run_course("smoke", tmp_path / "run", notebook_dir=notebooks, timeout_s=8)
    assert result.status == "timeout" and result.seconds < 30


@pytest.mark.slow
def test_cli_exits_non_zero_when_a_notebook_fails(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "00_bad.ipynb", "assert False, 'threshold not met'")
    monkeypatch.setattr(runner, "list_notebooks", lambda _=None: sorted(folder.glob("*.ipynb")))
    code = main(["course", "run", "--profile", "smoke", "--out", str(tmp_path / "run")])
    assert code == 1
    assert "FAILED: 00_bad" in capsys.readouterr().err


def test_unknown_notebook_selection_lists_what_exists(notebooks, tmp_path):
    _notebook(notebooks / "00_a.ipynb", "pass")
    with pytest.raises(ValueError, match="no notebook matches \\['42'\\]; available: 00_a"):
        runner.run_course("smoke", tmp_path, notebooks=["42"], notebook_dir=notebooks)


def test_threshold_checks_judge_each_metric(monkeypatch):
    monkeypatch.setitem(profiles.THRESHOLDS, "full", {"05_training": {
        "val_dice": (">=", 0.85), "hd95_mm": ("<=", 5.0), "lesion_dice": (">=", 0.5)}})
    checks = runner.threshold_checks("full", "05_training", {"val_dice": 0.9, "hd95_mm": 7.5})
    assert checks == [
        {"metric": "val_dice", "rule": ">= 0.85", "value": 0.9, "passed": True},
        {"metric": "hd95_mm", "rule": "<= 5.0", "value": 7.5, "passed": False},
        {"metric": "lesion_dice", "rule": ">= 0.5", "value": None, "passed": False},
    ]


# ------------------------------------------------------------------------------ the report

PNG_1PX = bytes.fromhex(  # a valid 1x1 RGBA PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5d6d1b70000000049454e44ae426082"
)


def _results(monkeypatch):
    monkeypatch.setitem(profiles.THRESHOLDS, "full", {"05_training": {
        "best_val_dice": (">=", 0.85), "hd95_mm": ("<=", 5.0)}})
    metrics = {"best_val_dice": 0.91, "epochs": 15}
    good = runner.NotebookResult(
        "05_training", "passed", 62.5, metrics,
        runner.check_thresholds("full", "05_training", metrics),
        checks=runner.threshold_checks("full", "05_training", metrics),
    )  # fmt: skip
    bad = runner.NotebookResult("06_evaluation", "failed", 3.0, error="ValueError: x < 0 & y")
    return [good, bad]


def test_report_html_is_self_contained_with_metrics_thresholds_and_figures(tmp_path, monkeypatch):
    import base64

    from medseg_helpers.course.report import write_report

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "05_training_curves.png").write_bytes(PNG_1PX)
    (tmp_path / "figures" / "050_other.png").write_bytes(PNG_1PX)  # another notebook's
    env = {"torch": "2.13.0+cpu", "device": "cpu"}
    md = write_report(_results(monkeypatch), "full", tmp_path, environment=env,
                      profile_settings={"max_epochs": 15, "volume_shape": (32, 96, 96)})

    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1  # only 05_training's figure
    assert base64.b64encode(PNG_1PX).decode() in page
    assert "<figcaption>curves</figcaption>" in page
    for external in ('src="figures', "<link", "<script", "http://", "https://"):
        assert external not in page
    assert "<td>best_val_dice</td><td class=\"num\">0.91</td><td>&gt;= 0.85</td>" in page
    assert "<td>hd95_mm</td><td>missing</td><td>&lt;= 5.0</td>" in page
    assert "ValueError: x &lt; 0 &amp; y" in page  # escaped, not markup
    assert "2.13.0+cpu" in page and "[32, 96, 96]" in page
    assert '<span class="fail">FAILED</span>' in page

    text = md.read_text(encoding="utf-8")
    assert "| best_val_dice | 0.91 | >= 0.85 | pass |" in text
    assert "| hd95_mm | missing | <= 5.0 | FAIL |" in text
    assert "![05_training_curves](figures/05_training_curves.png)" in text
    assert "| 05_training | passed | 62.5 |" in text and "hd95_mm missing" in text
    summary = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert summary["passed"] is False and summary["total_seconds"] == 65.5
    assert summary["environment"] == env
    assert summary["notebooks"]["05_training"]["checks"][0]["passed"] is True


def test_report_writes_a_missing_metric_as_null_and_shows_it_as_n_a(tmp_path):
    from medseg_helpers.course.report import format_value, write_report

    result = runner.NotebookResult("06_evaluation", "passed", 1.0, {"hd95_mm": None})
    md = write_report([result], "smoke", tmp_path, profile_settings={"patch": (8, 16)})
    summary = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert summary["notebooks"]["06_evaluation"]["metrics"] == {"hd95_mm": None}
    assert summary["profile_settings"] == {"patch": [8, 16]}
    assert format_value(None) == "n/a" and "| hd95_mm | n/a |" in md.read_text(encoding="utf-8")


def test_report_says_when_a_notebook_has_no_thresholds(tmp_path):
    from medseg_helpers.course.report import format_summary_table, write_report

    result = runner.NotebookResult("03_unet", "passed", 1.0, {"params": 123})
    write_report([result], "smoke", tmp_path)
    assert "| 03_unet | passed | 1.0 | params=123 | none set |" in format_summary_table([result])
    assert "| params | 123 |  |  |" in (tmp_path / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_bless_stores_only_checked_outputs_and_keeps_its_run_folder(notebooks, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setenv("MEDSEG_RUN_DIR", str(tmp_path / "runs"))
    _notebook(notebooks / "00_a.ipynb", "# NBVAL_CHECK_OUTPUT\nprint(6 * 7)", "print('noise')")
    assert main(["course", "bless", "--notebook-dir", str(notebooks), "--timeout", "120"]) == 0
    cells = nbformat.read(notebooks / "00_a.ipynb", as_version=4).cells
    assert cells[1].outputs[0]["text"] == "42\n" and cells[1].execution_count is not None
    assert cells[2].outputs == []  # unchecked cells stay stripped
    assert (tmp_path / "runs" / "course-bless" / "logs" / "00_a.log").exists()

    _notebook(notebooks / "01_b.ipynb", "raise RuntimeError('boom in 01')")
    assert main(["course", "bless", "--notebook-dir", str(notebooks)]) == 1
    err = capsys.readouterr().err
    assert "01_b" in err and str(tmp_path / "runs" / "course-bless") in err
    assert (tmp_path / "runs" / "course-bless" / "logs" / "01_b.log").exists()  # kept


def test_a_partial_run_reports_the_other_notebooks_from_the_earlier_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    first = [runner.NotebookResult("00_a", "passed", 3.0, {"x": 1}),
             runner.NotebookResult("01_b", "passed", 4.0, {"y": 2}),
             runner.NotebookResult("02_c", "failed", 5.0, error="boom")]
    runner.write_course_report(first, "smoke", out)
    rerun = [runner.NotebookResult("01_b", "passed", 6.0, {"y": 3})]
    merged = runner.with_earlier_results(rerun, out, "smoke", ["00_a", "01_b", "02_c", "03_d"])
    assert [(r.notebook, r.seconds, r.metrics) for r in merged] == [
        ("00_a", 3.0, {"x": 1}), ("01_b", 6.0, {"y": 3}), ("02_c", 5.0, {})]
    assert merged[2].error == "boom"
    # an earlier run of another profile, or none, adds nothing
    assert runner.with_earlier_results(rerun, out, "full", ["00_a", "01_b"]) == rerun
    assert runner.with_earlier_results(rerun, tmp_path / "none", "smoke", ["01_b"]) == rerun


def test_the_report_shows_the_course_model_recipe_that_overrides_the_profile(tmp_path):
    runner.write_course_report([runner.NotebookResult("05_training", "passed", 1.0)], "full",
                               tmp_path)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    profile_part, recipe = text.split("## Course model recipe")
    assert "| max_epochs | 16 |" in profile_part  # the profile's budget...
    assert "| max_epochs | 10 |" in recipe and "| cpu_bf16 | False |" in recipe  # ...overridden
    assert "<h2>Course model recipe</h2>" in (tmp_path / "report.html").read_text(encoding="utf-8")
    summary = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert summary["course_model"]["crop_size"] == [64, 64]
