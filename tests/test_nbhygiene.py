"""`course check` enforces the notebook conventions; `course strip` fixes outputs."""

import json

import nbformat
import pytest

from medseg_helpers.cli import main
from medseg_helpers.course.hygiene import check_notebook, missing_imports, strip_notebook

BOOTSTRAP = "import sys\nif 'google.colab' in sys.modules:\n    pass"
PARAMETERS = "import os\nPROFILE = os.environ.get('MEDSEG_PROFILE', 'smoke')\nSOLUTIONS = None"
IMPORTS = ("%load_ext medseg_helpers.course.exercises\n"
           "from medseg_helpers.course.exercises import answer, check_exercise")
STARTER = "def double(x):\n    ...  # your code"
SOLUTION = "%%solution\ndef double(x):\n    return 2 * x"
CHECK = ("def test():\n    assert answer(double(2)) == 4\n"
         "check_exercise('1 · double', test)")


def _clean_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3", "language": "python"
    }  # fmt: skip
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    solution = nbformat.v4.new_code_cell(SOLUTION)
    solution.metadata["jupyter"] = {"source_hidden": True}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 99 · Example\n\n## You will learn\n- things"),
        nbformat.v4.new_code_cell(BOOTSTRAP),
        params,
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)"),
        nbformat.v4.new_markdown_cell("## Exercises\n1. try\n\n## Summary\n- done"),
        nbformat.v4.new_code_cell(IMPORTS),
        nbformat.v4.new_code_cell(STARTER),
        solution,
        nbformat.v4.new_code_cell(CHECK),
    ]
    return nb


def _unguard_solution(nb) -> None:
    nb.cells[7].source = nb.cells[7].source.removeprefix("%%solution\n")


def _solution_before_load(nb) -> None:
    nb.cells[5].source = "import math"


def _write(tmp_path, nb) -> object:
    path = tmp_path / "99_example.ipynb"
    nbformat.write(nb, path)
    return path


def test_clean_notebook_passes(tmp_path):
    assert check_notebook(_write(tmp_path, _clean_notebook())) == []


def _add_code(nb, source):
    nb.cells.insert(3, nbformat.v4.new_code_cell(source))


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda nb: _add_code(nb, "x = torch.zeros(1).to('cuda')"), "hard-coded CUDA"),
        (lambda nb: _add_code(nb, "model.cuda()"), "hard-coded CUDA"),
        (lambda nb: _add_code(nb, "open('/home/me/data.nii')"), "absolute path"),
        (lambda nb: _add_code(nb, "!pip install monai"), "pip install outside"),
        (lambda nb: nb.cells.pop(1), "first code cell must be the Colab bootstrap"),
        (lambda nb: nb.cells[2].metadata.pop("tags"), "exactly one 'parameters' cell, has 0"),
        (lambda nb: nb.cells[4].update(source="## Summary"), "missing a 'Exercises' heading"),
        (lambda nb: nb.metadata["kernelspec"].update(name="conda-env"), "kernelspec name"),
        (lambda nb: nb.cells[0].update(source="Intro"), "Markdown title"),
        (lambda nb: nb.cells[2].update(source=PARAMETERS.replace("SOLUTIONS = None", "")),
         "parameters cell must define SOLUTIONS"),
        (_unguard_solution, "a hidden (solution) cell must start with %%solution"),
        (_solution_before_load, "%%solution before '%load_ext medseg_helpers.course.exercises'"),
        (lambda nb: nb.cells.pop(8), "no exercise the learner codes and checks"),
    ],
)
def test_each_broken_convention_is_reported(tmp_path, break_it, message):
    nb = _clean_notebook()
    break_it(nb)
    problems = [str(p) for p in check_notebook(_write(tmp_path, nb))]
    assert any(message in p for p in problems), problems


def test_cells_without_an_id_or_with_a_repeated_one_are_reported(tmp_path):
    document = json.loads(nbformat.writes(_clean_notebook()))
    del document["cells"][3]["id"]
    document["cells"][5]["id"] = document["cells"][4]["id"]
    path = tmp_path / "99_example.ipynb"
    path.write_text(json.dumps(document), encoding="utf-8")
    problems = [str(p) for p in check_notebook(path)]
    assert "99_example.ipynb cell 3: cell has no id (nbformat 4.5: give it a unique 'id')" \
        in problems
    assert any(p.startswith("99_example.ipynb cell 5: cell id") and "used twice" in p
               for p in problems), problems


def test_outputs_outside_checked_cells_are_reported_and_stripped(tmp_path):
    nb = _clean_notebook()
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="leak")]
    nb.cells[2].execution_count = 4
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    path = _write(tmp_path, nb)
    assert any("has outputs" in str(p) for p in check_notebook(path))

    assert strip_notebook(path, check_only=True) is True
    assert strip_notebook(path) is True
    stripped = json.loads(path.read_text(encoding="utf-8"))
    assert stripped["cells"][2]["outputs"] == [] and stripped["cells"][2]["execution_count"] is None
    assert "".join(stripped["cells"][3]["outputs"][0]["text"]) == "1\n"  # checked cell kept
    assert check_notebook(path) == []
    assert strip_notebook(path) is False  # idempotent


def test_unreadable_notebook_is_a_problem_not_a_crash(tmp_path):
    path = tmp_path / "00_broken.ipynb"
    path.write_text("{not json")
    [problem] = check_notebook(path)
    assert "cannot be read as JSON" in str(problem)


def test_course_check_cli_fails_on_problems(tmp_path, capsys):
    nb = _clean_notebook()
    _add_code(nb, "device = 'cuda'")
    _write(tmp_path, nb)
    assert main(["course", "check", "--notebook-dir", str(tmp_path)]) == 1
    assert "1 problems" in capsys.readouterr().out


def test_copy_checked_outputs_refreshes_only_checked_cells(tmp_path):
    source = _write(tmp_path, _clean_notebook())
    executed = _clean_notebook()
    for cell, given in zip(executed.cells, nbformat.read(source, 4).cells, strict=True):
        cell.id = given.id
    executed.cells[2].outputs = [nbformat.v4.new_output("stream", text="not kept")]
    executed.cells[3].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    executed.cells[3].execution_count = 3
    nbformat.write(executed, tmp_path / "executed.ipynb")

    from medseg_helpers.course.hygiene import copy_checked_outputs

    assert copy_checked_outputs(source, tmp_path / "executed.ipynb") == 1
    cells = json.loads(source.read_text(encoding="utf-8"))["cells"]
    assert cells[2]["outputs"] == []
    assert cells[3]["execution_count"] == 3  # nbval refuses checked outputs without it
    assert check_notebook(source) == []


def test_course_check_requires_one_bootstrap_text_in_every_notebook(tmp_path):
    from medseg_helpers.course.hygiene import check_course

    first = tmp_path / "00_first.ipynb"
    nbformat.write(_clean_notebook(), first)
    second = _clean_notebook()
    second.cells[1].source = BOOTSTRAP.replace("pass", "print('old text')")
    nbformat.write(second, tmp_path / "01_second.ipynb")
    same = tmp_path / "02_same.ipynb"
    nbformat.write(_clean_notebook(), same)

    problems = [str(p) for p in check_course(sorted(tmp_path.glob("*.ipynb")))]
    assert problems == [
        "01_second.ipynb: Colab bootstrap differs from 00_first.ipynb's at line 3; "
        "copy it exactly (one tested text for every notebook)"
    ]


def test_course_check_reports_unstripped_outputs_once_per_notebook(tmp_path):
    from medseg_helpers.course.hygiene import check_course

    nb = _clean_notebook()
    nb.cells[3].execution_count = 1  # checked cell: allowed
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nb.cells[3].metadata["execution"] = {"iopub.status.busy": "2026-01-01"}  # strip removes it
    path = _write(tmp_path, nb)
    assert [str(p) for p in check_course([path])] == [
        "99_example.ipynb: outputs not stripped (run 'medseg course strip')"
    ]


def test_bootstrap_source_names_a_notebook_without_one(tmp_path):
    from medseg_helpers.course.hygiene import bootstrap_source

    nb = _clean_notebook()
    assert bootstrap_source(_write(tmp_path, nb)) == BOOTSTRAP
    nb.cells.pop(1)
    with pytest.raises(ValueError, match="99_example.ipynb: first code cell is not the Colab"):
        bootstrap_source(_write(tmp_path, nb))


def test_committed_notebooks_share_the_bootstrap_of_00():
    from medseg_helpers.course.hygiene import bootstrap_source
    from medseg_helpers.course.runner import list_notebooks

    texts = {path.name: bootstrap_source(path) for path in list_notebooks()}
    reference = texts.pop("00_setup.ipynb")
    assert "KEEP_TORCH" in reference  # the tested text pins Colab's torch
    assert {name for name, text in texts.items() if text != reference} == set()


def test_check_reports_imports_of_modules_and_names_that_do_not_exist():
    source = ("from medseg_helpers.data import io\n"
              "from medseg_helpers import viz\n"
              "%matplotlib inline\n"
              "from medseg_helpers.viz import show_slice\n"
              "from medseg_helpers import course_model\n"
              "from medseg_helpers.datasets import SliceDataset\n"
              "import medseg_helpers.train_job\n"
              "from medseg_helpers.data.io import no_such_reader\n")
    assert missing_imports(source) == [
        "imports course_model from medseg_helpers, which has no such name",
        "imports from medseg_helpers.datasets, which does not exist",
        "imports medseg_helpers.train_job, which does not exist",
        "imports no_such_reader from medseg_helpers.data.io, which has no such name",
    ]
