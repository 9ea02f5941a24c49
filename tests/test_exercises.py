"""Exercises (`course.exercises`): checks say right / not attempted / wrong in one line and
are strict when solutions are on; ``%%solution`` cells run only when asked."""

from __future__ import annotations

import pytest

from medseg_helpers.course.exercises import (
    SOLUTIONS_ENV_VAR,
    NotAttempted,
    answer,
    check_exercise,
    load_ipython_extension,
    solutions_enabled,
)


def _double_test(double):
    def test():  # raises by hand: pytest would rewrite an assert's message
        if answer(double(2)) != 4:
            raise AssertionError(f"double(2) should be 4,\ngot {double(2)}")
    return test


def _starter(x):
    ...  # the learner's code goes here


@pytest.mark.parametrize("value, env, expected", [
    (True, "", True), (False, "1", False), (None, "1", True), (None, "yes", True),
    (None, "", False), (None, "0", False)])
def test_solutions_follow_the_parameter_then_the_environment(monkeypatch, value, env,
                                                             expected):
    monkeypatch.setenv(SOLUTIONS_ENV_VAR, env)
    assert solutions_enabled(value) is expected


def test_answer_passes_values_and_flags_the_starters_ellipsis():
    assert answer(0) == 0 and answer([]) == []
    for unanswered in (..., None):
        with pytest.raises(NotAttempted):
            answer(unanswered)


def test_a_check_prints_one_line_per_outcome(capsys):
    check_exercise("1 · double", _double_test(_starter), solutions=False)
    check_exercise("1 · double", _double_test(lambda x: x + 1), solutions=False)
    check_exercise("1 · double", _double_test(lambda x: 2 * x), solutions=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["… 1 · double: not attempted yet (replace the `...` above, then rerun "
                     "this cell)",
                     "✗ 1 · double: not yet. double(2) should be 4, got 3",
                     "✓ 1 · double: correct"]


def test_with_solutions_on_a_missing_or_wrong_answer_fails_the_run():
    with pytest.raises(AssertionError, match="the solution left the answer as `...`"):
        check_exercise("1 · double", _double_test(_starter), solutions=True)
    with pytest.raises(AssertionError, match="should be 4,\ngot 3"):
        check_exercise("1 · double", _double_test(lambda x: x + 1), solutions=True)


def test_the_solution_magic_runs_the_cell_only_when_solutions_are_on(capsys, monkeypatch):
    shell = pytest.importorskip("IPython.core.interactiveshell").InteractiveShell.instance()
    load_ipython_extension(shell)
    monkeypatch.delenv(SOLUTIONS_ENV_VAR, raising=False)
    shell.user_ns["SOLUTIONS"] = None
    shell.run_cell("%%solution\nsolved = 42")
    assert "solved" not in shell.user_ns
    assert "Solution not run" in capsys.readouterr().out
    shell.user_ns["SOLUTIONS"] = True
    shell.run_cell("%%solution\nsolved = 42")
    assert shell.user_ns["solved"] == 42
    failed = shell.run_cell("%%solution\n1 / 0")
    assert isinstance(failed.error_in_exec, ZeroDivisionError)  # a broken solution fails
