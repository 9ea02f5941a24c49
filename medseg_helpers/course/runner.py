"""Running the course: notebooks in order, metrics collected, thresholds checked.

Each notebook ends with ``record("05_training", {"val_dice": 0.93, ...})``, which
writes ``<run dir>/metrics/05_training.json``. `run_course` executes the notebooks
with papermill (one subprocess each, so a per-notebook timeout really stops it),
then checks the thresholds that the profile sets (`course.profiles.THRESHOLDS`) and writes
``metrics.json``, ``report.md`` and a self-contained ``report.html`` (`report`). Under the
default profile, which the prose describes, the report also lists the numbers the prose
links to a metric that this run measured differently (`course.prose`; expected on
another machine, so they inform and do not fail the run).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg_helpers.course.profiles import (
    DEFAULT_PROFILE,
    DEFAULT_TIMEOUT_S,
    PROFILE_ENV_VAR,
    THRESHOLDS,
    get_profile_name,
    profile_defaults,
)
from medseg_helpers.course.prose import disagreements, linked_numbers, run_metrics
from medseg_helpers.course.report import write_report
from medseg_helpers.fileutil import to_json_ready, write_text_atomic
from medseg_helpers.paths import DATA_DIR_ENV_VAR, RUN_DIR_ENV_VAR, get_run_dir, repo_root

logger = logging.getLogger(__name__)


@dataclass
class NotebookResult:
    """Outcome of one notebook in a course run."""

    notebook: str
    status: str  # "passed" | "failed" | "timeout"
    seconds: float
    metrics: dict = field(default_factory=dict)
    failed_thresholds: list[str] = field(default_factory=list)
    error: str = ""
    checks: list[dict] = field(default_factory=list)  # `threshold_checks`, as dicts
    prose_differences: list[str] = field(default_factory=list)  # `prose.disagreements`

    @property
    def ok(self) -> bool:
        return self.status == "passed" and not self.failed_thresholds


def record(notebook: str, metrics: dict, run_dir: str | os.PathLike | None = None) -> Path:
    """Save a notebook's headline metrics for the course runner and return the file.

    Args:
        notebook: the notebook's stem, e.g. ``"05_training"``.
        metrics: JSON-serialisable scalars (NumPy and torch scalars are converted). NaN
            and infinities are written as ``null`` (`to_json_ready`); a threshold on such a
            metric then fails as missing.
        run_dir: defaults to `get_run_dir` (``$MEDSEG_RUN_DIR``).

    Raises:
        TypeError: a value that is not JSON-friendly (`to_json_ready`).
    """
    clean = to_json_ready(dict(metrics))
    path = get_run_dir(run_dir) / "metrics" / f"{notebook}.json"
    return write_text_atomic(path, json.dumps(clean, indent=2, sort_keys=True) + "\n")


def list_notebooks(notebook_dir: str | os.PathLike | None = None) -> list[Path]:
    """The course notebooks ``NN_name.ipynb`` in order."""
    folder = Path(notebook_dir) if notebook_dir else repo_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def threshold_checks(profile: str, notebook: str, metrics: dict) -> list[dict]:
    """Judge every threshold of ``THRESHOLDS[profile][notebook]`` against ``metrics``.

    Returns:
        One dict per threshold: ``metric``, ``rule`` (e.g. ``">= 0.85"``), ``value``
        (None when missing, ``null`` as `record` writes NaN, or not a number) and
        ``passed``; a missing metric fails.
    """
    checks = []
    for name, (op, bound) in THRESHOLDS.get(profile, {}).get(notebook, {}).items():
        value = metrics.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            value = None
        passed = value is not None and (value >= bound if op == ">=" else value <= bound)
        checks.append({"metric": name, "rule": f"{op} {bound}", "value": value, "passed": passed})
    return checks


def check_thresholds(profile: str, notebook: str, metrics: dict) -> list[str]:
    """Return a description of every threshold the metrics miss (empty = all met)."""
    return [
        f"{c['metric']} missing (needs {c['rule']})"
        if c["value"] is None
        else f"{c['metric']} = {c['value']:.4g}, needs {c['rule']}"
        for c in threshold_checks(profile, notebook, metrics)
        if not c["passed"]
    ]


def run_course(
    profile: str | None = None,
    out_dir: str | os.PathLike | None = None,
    notebooks: Sequence[str] | None = None,
    timeout_s: float | None = None,
    data_dir: str | os.PathLike | None = None,
    notebook_dir: str | os.PathLike | None = None,
    on_result: Callable[[NotebookResult], None] | None = None,
) -> list[NotebookResult]:
    """Execute the course notebooks in order and write metrics and a report.

    Args:
        profile: ``full`` | ``smoke`` | ``decathlon`` (default ``$MEDSEG_PROFILE``, else full).
        out_dir: run directory; holds ``notebooks/`` (executed copies), ``metrics/``,
            ``metrics.json`` and ``report.md``. Default ``<runs>/course-<profile>``.
        notebooks: stems or prefixes to run (e.g. ``["00", "05_training"]``); all if None.
            The report still lists the other notebooks, with the results an earlier run
            of the same profile left in ``out_dir`` (`with_earlier_results`).
        timeout_s: wall-clock limit per notebook; default depends on the profile.
        data_dir: ``MEDSEG_DATA_DIR`` for the notebooks (default: inherited).
        notebook_dir: where the source notebooks are (default ``<repo>/notebooks``).
        on_result: called after each notebook, e.g. to print progress.

    A profile that trains on downloaded data (``decathlon``: Task04_Hippocampus) fetches and
    verifies it first (`course_data.ensure_course_dataset`), so a network problem stops
    the run at once with the downloader's message instead of failing every notebook.

    The report also shows the environment (`device.describe_environment`, taken in this
    process, which runs the notebooks' kernels with the same interpreter) and the
    profile's settings.

    Returns:
        One `NotebookResult` per notebook run, in order. A notebook that fails stops
        nothing: later notebooks still run, since each one also runs standalone.

    Raises:
        ValueError: unknown profile, or no notebook matches ``notebooks``.
        data_download.DownloadError: the profile's dataset cannot be fetched or verified.
    """
    profile = get_profile_name(profile)
    out = Path(out_dir) if out_dir else get_run_dir() / f"course-{profile}"
    out = out.resolve()
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    every_source = list_notebooks(notebook_dir)
    sources = _select(every_source, notebooks)
    timeout_s = timeout_s or DEFAULT_TIMEOUT_S[profile]
    env = {**os.environ, PROFILE_ENV_VAR: profile, RUN_DIR_ENV_VAR: str(out)}
    if data_dir:
        env[DATA_DIR_ENV_VAR] = str(Path(data_dir).resolve())
    if profile_defaults(profile).download:
        from medseg_helpers.course.data import ensure_course_dataset

        ensure_course_dataset(profile, env.get(DATA_DIR_ENV_VAR))
    results = []
    for source in sources:
        result = _run_notebook(source, out, profile, timeout_s, env)
        results.append(result)
        if on_result:
            on_result(result)
    write_course_report(with_earlier_results(results, out, profile,
                                             [s.stem for s in every_source]), profile, out)
    return results


def with_earlier_results(results: Sequence[NotebookResult], out: Path, profile: str,
                         order: Sequence[str]) -> list[NotebookResult]:
    """``results`` completed with the earlier results in ``out/metrics.json`` of the
    notebooks this run skipped, in course ``order``.

    Only a ``metrics.json`` of the same profile counts; a result it holds that this
    version cannot read (another format) is left out rather than guessed.
    """
    try:
        earlier = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = {}
    kept = earlier.get("notebooks", {}) if earlier.get("profile") == profile else {}
    fresh = {r.notebook: r for r in results}
    merged = []
    for name in order:
        if name in fresh:
            merged.append(fresh[name])
        elif name in kept:
            try:
                merged.append(NotebookResult(**kept[name]))
            except TypeError:
                logger.warning("left %s out of the report: its earlier result is unreadable",
                               name)
    return merged


def _select(sources: list[Path], wanted: Sequence[str] | None) -> list[Path]:
    if not wanted:
        return sources
    chosen = [p for p in sources if any(p.stem.startswith(w) for w in wanted)]
    if not chosen:
        names = ", ".join(p.stem for p in sources)
        raise ValueError(f"no notebook matches {list(wanted)}; available: {names}")
    return chosen


def _run_notebook(
    source: Path, out: Path, profile: str, timeout_s: float, env: dict
) -> NotebookResult:
    executed = out / "notebooks" / source.name
    metrics_file = out / "metrics" / f"{source.stem}.json"
    metrics_file.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "papermill", str(source), str(executed),
        "-p", "PROFILE", profile, "--cwd", str(source.parent),
        "-k", "python3", "--no-progress-bar", "--log-level", "WARNING",
    ]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        log, _ = process.communicate(timeout=timeout_s)
        status = "passed" if process.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        status = "timeout"
    seconds = time.perf_counter() - start
    (out / "logs").mkdir(exist_ok=True)
    write_text_atomic(out / "logs" / f"{source.stem}.log", log or "")
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.exists() else {}
    passed = status == "passed"
    checks = threshold_checks(profile, source.stem, metrics) if passed else []
    failed = check_thresholds(profile, source.stem, metrics) if passed else []
    error = "" if passed else _last_error(log or "", status, timeout_s)
    differences = (disagreements(linked_numbers(source), run_metrics(out))
                   if passed and profile == DEFAULT_PROFILE else [])
    return NotebookResult(source.stem, status, seconds, metrics, failed, error, checks,
                          differences)


def _last_error(log: str, status: str, timeout_s: float) -> str:
    if status == "timeout":
        return f"stopped after {timeout_s:.0f} s"
    lines = [line for line in log.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or ["no output"])[-1][:300]


def write_course_report(results: list[NotebookResult], profile: str, out: Path) -> Path:
    """Write ``metrics.json``, ``report.md`` and ``report.html``; return the Markdown path."""
    from medseg_helpers.course.model import course_model_config
    from medseg_helpers.device import describe_environment
    from medseg_helpers.training.config import learning_fields

    return write_report(results, profile, out, environment=describe_environment(),
                        profile_settings=profile_defaults(profile).as_dict(),
                        course_model=learning_fields(course_model_config(profile)))
