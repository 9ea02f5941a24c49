"""Numbers in the prose that a run measures: linked to their metric, checked against it.

A sentence that quotes a measured number links it to the metric its notebook records
(`runner.record`) with an HTML comment right after it, invisible when rendered::

    a mean test Dice of 0.949<!-- metric: test_mean_dice --> on its 16 test patients
    trained in 150 s<!-- metric: course_model_seconds ±25% --> on 2 cores
    (notebook 05's 0.912<!-- metric: 06_evaluation/test_dice_lesion -->)

The number agrees with the run when it is the recorded value rounded to the digits typed
(0.949 agrees with 0.94916, 0.95 with anything in [0.945, 0.955]), or lies within the
tolerance given after ``±`` (absolute, or a percentage of the recorded value: for times,
which vary from run to run). A metric of another notebook is named ``<notebook>/<name>``.

Two checks use the links:

* `tests/test_prose.py` compares every linked number with the *reference run*
  (`REFERENCE_FILE`: the metrics of the full run the prose was written against), so a
  recipe change that moves a quoted result fails ``make test`` until the prose and the
  reference are updated together (``medseg course prose RUN_DIR --update-reference``);
* the course runner compares them with the run it just made and lists the numbers that
  differ in its report (expected on another CPU or a GPU: the text then says what our
  run measured, the output what yours did).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medseg_helpers.fileutil import write_text_atomic
from medseg_helpers.paths import repo_root

#: The metrics of the full run that the notebooks' prose quotes, ``{notebook: {name: value}}``.
REFERENCE_FILE = Path("notebooks") / "reference_run.json"

_LINK = re.compile(
    r"(?P<number>[-\u2212]?\d+(?:\.\d+)?)"  # the number as typed (U+2212 is a minus sign)
    r"(?:\s?(?:%|\u00d7|ms|mm|min|s))?"  # an optional unit between number and link
    r"\s*<!--\s*metric:\s*(?P<metric>(?:\d\d_\w+/)?\w+)"
    r"(?:\s*\u00b1\s*(?P<tolerance>\d+(?:\.\d+)?)(?P<percent>%)?)?\s*-->"
)
_UNLINKED_COMMENT = re.compile(r"<!--\s*metric:")


@dataclass(frozen=True)
class LinkedNumber:
    """A number in a notebook's Markdown linked to a recorded metric.

    Attributes:
        notebook: the notebook's stem, e.g. ``"06_evaluation"``.
        cell: index of the Markdown cell.
        text: the number as typed, e.g. ``"0.949"``.
        notebook_of_metric: the notebook that records the metric.
        metric: the metric's name in that notebook's record.
        tolerance: allowed absolute difference; None: the rounding of the digits typed.
        relative: ``tolerance`` is a fraction of the recorded value.
    """

    notebook: str
    cell: int
    text: str
    notebook_of_metric: str
    metric: str
    tolerance: float | None = None
    relative: bool = False

    @property
    def value(self) -> float:
        return float(self.text.replace("\u2212", "-"))

    def allowed_difference(self, recorded: float) -> float:
        """How far ``recorded`` may lie from the typed number and still agree."""
        if self.tolerance is None:
            decimals = len(self.text.partition(".")[2])
            return 0.5 * 10.0 ** -decimals + 1e-9
        return self.tolerance * abs(recorded) if self.relative else self.tolerance

    def agrees_with(self, recorded: float) -> bool:
        return abs(self.value - recorded) <= self.allowed_difference(recorded)

    def __str__(self) -> str:
        where = ("" if self.notebook_of_metric == self.notebook
                 else f"{self.notebook_of_metric}/")
        return f"{self.notebook} cell {self.cell}: {self.text} ({where}{self.metric})"


def _cell_source(cell: Mapping) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def linked_numbers(notebook: str | os.PathLike) -> list[LinkedNumber]:
    """Every linked number in the Markdown of ``notebook`` (an ``.ipynb`` file).

    Raises:
        ValueError: a ``<!-- metric: ... -->`` comment that does not follow a number or
            is malformed (it would silently link nothing).
    """
    path = Path(notebook)
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    found = []
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "markdown":
            continue
        text = _cell_source(cell)
        matches = list(_LINK.finditer(text))
        if len(matches) != len(_UNLINKED_COMMENT.findall(text)):
            raise ValueError(f"{path.name} cell {index}: a '<!-- metric: ... -->' comment "
                             "must follow a number and name one metric, e.g. "
                             "'0.95<!-- metric: test_mean_dice -->'")
        for match in matches:
            owner, _, name = match["metric"].rpartition("/")
            tolerance = match["tolerance"]
            percent = bool(match["percent"])
            found.append(LinkedNumber(
                path.stem, index, match["number"], owner or path.stem, name,
                None if tolerance is None else float(tolerance) / (100 if percent else 1),
                percent))
    return found


def disagreements(numbers: list[LinkedNumber],
                  metrics: Mapping[str, Mapping[str, object]]) -> list[str]:
    """One line per linked number that ``metrics`` (``{notebook: {name: value}}``)
    contradicts or lacks; an empty list when the prose and the run agree."""
    problems = []
    for number in numbers:
        recorded = metrics.get(number.notebook_of_metric, {}).get(number.metric)
        if not isinstance(recorded, (int, float)) or isinstance(recorded, bool) \
                or not math.isfinite(recorded):
            problems.append(f"{number}: the run recorded no such number")
        elif not number.agrees_with(float(recorded)):
            problems.append(f"{number}: the run recorded {recorded:.6g}")
    return problems


def run_metrics(run_dir: str | os.PathLike) -> dict[str, dict[str, object]]:
    """The metrics a course run recorded, ``{notebook: {name: value}}`` (its ``metrics/``)."""
    folder = Path(run_dir) / "metrics"
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(folder.glob("*.json"))}


def reference_metrics(path: str | os.PathLike | None = None) -> dict[str, dict[str, object]]:
    """The reference run's metrics (`REFERENCE_FILE`), ``{notebook: {name: value}}``."""
    path = Path(path) if path else repo_root() / REFERENCE_FILE
    return json.loads(path.read_text(encoding="utf-8"))["metrics"]


def write_reference(run_dir: str | os.PathLike, cpu: Mapping[str, object],
                    path: str | os.PathLike | None = None) -> Path:
    """Make the run in ``run_dir`` the reference the prose is checked against.

    Args:
        run_dir: a finished full course run (``runs/course-full``).
        cpu: where it ran (`device.cpu_description`), kept beside the numbers.
        path: default `REFERENCE_FILE` in the repository.
    """
    path = Path(path) if path else repo_root() / REFERENCE_FILE
    document = {"cpu": cpu, "metrics": run_metrics(run_dir)}
    return write_text_atomic(path, json.dumps(document, indent=1, sort_keys=True) + "\n")


def prose_disagreements(notebooks: list[Path],
                        metrics: Mapping[str, Mapping[str, object]]) -> list[str]:
    """`disagreements` of every linked number in ``notebooks`` with ``metrics``."""
    return [line for path in notebooks for line in disagreements(linked_numbers(path), metrics)]
