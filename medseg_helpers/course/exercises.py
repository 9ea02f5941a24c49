"""Exercises the learner types: a starter cell, a check cell, and a solution that runs only
when asked.

Every notebook ends with exercises in one shape, three cells each, in this order:

1. a **starter** cell the learner completes: a function or value left as ``...``
   (Ellipsis), so "Run all" still runs to the end;
2. a **solution** cell starting with ``%%solution`` (source hidden): it runs only when the
   notebook's ``SOLUTIONS`` parameter is true, or, with ``SOLUTIONS = None``, when
   ``$MEDSEG_SOLUTIONS`` is ``1``, and then replaces the starter's definitions. ``make
   test`` (nbval) and ``make book`` switch solutions on; "Run all" and ``make course``
   leave them off, so a learner sees a solution only by opening it or running it on
   purpose;
3. a **check** cell, ``check_exercise("1 · Dice from scratch", test)``: ``test`` raises
   `NotAttempted` (use `answer`) while the answer is still ``...``, or an
   ``AssertionError`` whose message says what is wrong. It prints one line: right, not
   attempted yet, or not yet right and why. With solutions on (CI) a wrong or missing
   answer raises, so every solution is checked.

Load the cell magic once per notebook with ``%load_ext medseg_helpers.course.exercises``.
`medseg course check` enforces the shape (`course.hygiene`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["SOLUTIONS_ENV_VAR", "NotAttempted", "answer", "check_exercise",
           "load_ipython_extension", "solutions_enabled"]

#: Environment variable that switches solution cells on (``1``) when a notebook's
#: ``SOLUTIONS`` parameter is None.
SOLUTIONS_ENV_VAR = "MEDSEG_SOLUTIONS"
_TRUE = ("1", "true", "yes", "on")


class NotAttempted(Exception):  # noqa: N818 (a state, not an error of the learner)
    """The learner has not replaced the starter's ``...`` yet."""


def solutions_enabled(value: bool | None = None) -> bool:
    """``value`` if given, else whether ``$MEDSEG_SOLUTIONS`` is 1/true/yes/on."""
    if value is not None:
        return bool(value)
    return os.environ.get(SOLUTIONS_ENV_VAR, "").strip().lower() in _TRUE


def answer(value: Any) -> Any:
    """``value``, or `NotAttempted` while it is the starter's ``...`` (or None, what a
    function whose body is only ``...`` returns)."""
    if value is Ellipsis or value is None:
        raise NotAttempted
    return value


def check_exercise(title: str, test: Callable[[], None],
                   solutions: bool | None = None) -> None:
    """Run an exercise's ``test`` and print in one line how the learner's answer fares.

    Args:
        title: the exercise, e.g. ``"1 · Dice from scratch"``.
        test: raises `NotAttempted` (not answered yet) or ``AssertionError`` (wrong, its
            message saying why); returns normally when the answer is right.
        solutions: whether solutions are on (see `solutions_enabled`); then an answer
            that is missing or wrong raises, so CI checks every solution.

    Raises:
        AssertionError: with solutions on, a wrong or missing answer.
    """
    strict = solutions_enabled(solutions)
    try:
        test()
    except NotAttempted:
        if strict:
            raise AssertionError(f"exercise {title}: the solution left the answer as `...`"
                                 ) from None
        print(f"… {title}: not attempted yet (replace the `...` above, then rerun this cell)")
        return
    except AssertionError as error:
        if strict:
            raise
        reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"✗ {title}: not yet. {reason or 'the check failed'}")
        return
    print(f"✓ {title}: correct")


def _solution(line: str, cell: str) -> None:
    """``%%solution``: run the cell only when solutions are on (see the module docstring)."""
    from IPython import get_ipython

    shell = get_ipython()
    if not solutions_enabled(shell.user_ns.get("SOLUTIONS")):
        print("Solution not run: open this cell to read it, or set SOLUTIONS = True in the "
              "parameters cell and rerun it.")
        return
    result = shell.run_cell(cell)
    result.raise_error()


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%%solution`` cell magic (``%load_ext medseg_helpers.course.exercises``)."""
    ipython.register_magic_function(_solution, magic_kind="cell", magic_name="solution")
