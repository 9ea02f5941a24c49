"""Numbers the prose quotes from a run are linked to their metric and checked against it."""

import json

import nbformat
import pytest

from medseg_helpers.cli import main
from medseg_helpers.course import prose, runner


def _markdown_notebook(path, *markdown, code=()):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell("PROFILE = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in code),
                *(nbformat.v4.new_markdown_cell(m) for m in markdown)]
    nbformat.write(nb, path)
    return path


def test_linked_numbers_read_number_metric_owner_and_tolerance(tmp_path):
    path = _markdown_notebook(
        tmp_path / "05_training.ipynb",
        "A Dice of 0.949<!-- metric: test_mean_dice --> in 150 s<!-- metric: "
        "course_model_seconds ±25% -->, a drop of \u22120.031 <!-- metric: drop ±0.01 -->.",
        "As 06 measured: 0.91<!-- metric: 06_evaluation/test_dice_lesion -->; 3 trials.")
    numbers = prose.linked_numbers(path)
    assert [(n.text, n.notebook_of_metric, n.metric, n.tolerance, n.relative)
            for n in numbers] == [
        ("0.949", "05_training", "test_mean_dice", None, False),
        ("150", "05_training", "course_model_seconds", 0.25, True),
        ("\u22120.031", "05_training", "drop", 0.01, False),
        ("0.91", "06_evaluation", "test_dice_lesion", None, False),
    ]
    assert numbers[2].value == -0.031
    assert numbers[3].cell == 2  # the cell index in the notebook (parameters cell is 0)


@pytest.mark.parametrize("text, tolerance, relative, recorded, agrees", [
    ("0.949", None, False, 0.94916, True),  # rounds to the digits typed
    ("0.95", None, False, 0.9451, True),
    ("0.95", None, False, 0.9449, False),  # rounds to 0.94
    ("16", None, False, 16, True),
    ("16", None, False, 17, False),
    ("150", 0.25, True, 190.0, True),  # |150 - 190| = 40 <= 0.25 * 190 = 47.5
    ("150", 0.25, True, 210.0, False),  # 60 > 52.5
    ("0.03", 0.01, False, 0.0399, True),
    ("0.03", 0.01, False, 0.041, False),
])
def test_a_linked_number_agrees_when_the_run_rounds_to_it(text, tolerance, relative, recorded,
                                                          agrees):
    number = prose.LinkedNumber("05_training", 1, text, "05_training", "m", tolerance, relative)
    assert number.agrees_with(recorded) is agrees


def test_disagreements_name_the_cell_the_number_and_what_the_run_recorded(tmp_path):
    path = _markdown_notebook(
        tmp_path / "06_evaluation.ipynb",
        "Dice 0.949<!-- metric: test_mean_dice -->, lesion 0.91<!-- metric: "
        "test_dice_lesion -->, HD95 6.3 mm<!-- metric: hd95_mm -->, n 16<!-- metric: n -->.")
    metrics = {"06_evaluation": {"test_mean_dice": 0.94916, "test_dice_lesion": 0.887,
                                 "hd95_mm": None}}
    assert prose.disagreements(prose.linked_numbers(path), metrics) == [
        "06_evaluation cell 1: 0.91 (test_dice_lesion): the run recorded 0.887",
        "06_evaluation cell 1: 6.3 (hd95_mm): the run recorded no such number",
        "06_evaluation cell 1: 16 (n): the run recorded no such number",
    ]


@pytest.mark.parametrize("markdown", [
    "a comment that follows no number <!-- metric: dice -->",
    "two names 0.9<!-- metric: dice lesion -->",
    "a misspelt tolerance 0.9<!-- metric: dice +-0.1 -->",
])
def test_a_malformed_link_is_an_error_not_silently_ignored(tmp_path, markdown):
    path = _markdown_notebook(tmp_path / "04_losses.ipynb", markdown)
    with pytest.raises(ValueError, match=r"04_losses.ipynb cell 1: a '<!-- metric"):
        prose.linked_numbers(path)


def test_reference_file_round_trip_and_the_cli_flags_a_drifted_number(tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _markdown_notebook(notebooks / "06_evaluation.ipynb",
                       "Dice 0.95<!-- metric: test_mean_dice -->")
    run_dir = tmp_path / "run"
    runner.record("06_evaluation", {"test_mean_dice": 0.9412}, run_dir=run_dir)
    assert main(["course", "prose", str(run_dir), "--notebook-dir", str(notebooks)]) == 1
    out = capsys.readouterr().out
    assert "06_evaluation cell 1: 0.95 (test_mean_dice): the run recorded 0.9412" in out
    assert "1 linked numbers in 1 notebooks, 1 disagree" in out
    reference = prose.write_reference(run_dir, {"model": "a CPU", "features": []},
                                      tmp_path / "reference.json")
    assert json.loads(reference.read_text(encoding="utf-8")) == {
        "cpu": {"features": [], "model": "a CPU"},
        "metrics": {"06_evaluation": {"test_mean_dice": 0.9412}}}
    assert prose.reference_metrics(reference) == {"06_evaluation": {"test_mean_dice": 0.9412}}


def test_the_default_profile_run_reports_prose_that_differs_but_still_passes(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _markdown_notebook(notebooks / "01_a.ipynb", "Measured 0.5<!-- metric: x -->.",
                       code=["from medseg_helpers.course.runner import record\n"
                             "record('01_a', {'x': 0.75})"])
    out = tmp_path / "run"
    [result] = runner.run_course("full", out, notebook_dir=notebooks)
    assert result.ok
    assert result.prose_differences == ["01_a cell 2: 0.5 (x): the run recorded 0.75"]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "- 01_a cell 2: 0.5 (x): the run recorded 0.75" in report
    assert "0.5 (x): the run recorded 0.75</li>" in (out / "report.html").read_text(
        encoding="utf-8")


def test_every_linked_number_in_the_course_agrees_with_the_reference_run():
    """The text quotes the reference full run; a recipe change that moves a quoted result
    fails here until prose and reference (``medseg course prose RUN --update-reference``)
    are updated together."""
    notebooks = runner.list_notebooks()
    reference = prose.reference_metrics()
    assert prose.prose_disagreements(notebooks, reference) == []
    linked = {nb.stem: len(prose.linked_numbers(nb)) for nb in notebooks}
    measuring = [nb.stem for nb in notebooks if set(reference.get(nb.stem, {})) - {"profile"}]
    assert [stem for stem in measuring if linked[stem] == 0] == [], \
        "every notebook that records results links the numbers its prose quotes"


def test_a_link_stays_an_invisible_comment_in_the_rendered_book():
    from medseg_helpers.course.book import markdown_to_html

    html = markdown_to_html("a Dice of 0.949<!-- metric: test_mean_dice --> on 16 patients")
    assert "0.949<!-- metric: test_mean_dice --> on 16" in html  # a comment, not escaped text
    assert "&lt;!--" not in html
