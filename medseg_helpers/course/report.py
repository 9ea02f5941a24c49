"""The course run's report: ``metrics.json``, ``report.md`` and a self-contained ``report.html``.

`medseg_helpers.course.runner.run_course` calls `write_report` once all notebooks have run. The
HTML page is what an instructor shows: one file (figures embedded as base64 PNG, no
external CSS or scripts) with the verdict, the environment and profile, a summary table
with run times, and per notebook its metrics with the threshold each must meet and
every figure it saved with `viz.save_figure` (``<run dir>/figures/<notebook>_*.png``).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg_helpers.fileutil import to_json_ready, write_text_atomic

if TYPE_CHECKING:
    from medseg_helpers.course.runner import NotebookResult

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#11691d;font-weight:600} .fail{color:#b00020;font-weight:600}
figure{display:inline-block;margin:.4em;max-width:48%} figure img{max-width:100%}
figcaption{font-size:.85em;color:#555} code{background:#f5f5f5;padding:0 .2em}
"""


def write_report(
    results: Sequence[NotebookResult],
    profile: str,
    out: str | Path,
    environment: Mapping[str, str] | None = None,
    profile_settings: Mapping[str, Any] | None = None,
    course_model: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``metrics.json``, ``report.md`` and ``report.html`` into ``out``.

    Args:
        results: one `NotebookResult` per notebook run, in order.
        profile: the profile the course ran with.
        out: the run directory (figures are read from ``out/figures``).
        environment: ``{name: version}`` (`device.describe_environment`); shown as a table.
        profile_settings: the profile's budgets (`config.Profile.as_dict`).
        course_model: the course model's recipe (`training.config.learning_fields` of
            `course.model.course_model_config`), which overrides some of those budgets.

    Returns:
        The path of ``report.md`` (``report.html`` sits next to it).
    """
    out = Path(out)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    payload = to_json_ready({
        "profile": profile,
        "created": created,
        "passed": all(r.ok for r in results),
        "total_seconds": round(sum(r.seconds for r in results), 1),
        "environment": dict(environment or {}),
        "profile_settings": dict(profile_settings or {}),
        "course_model": dict(course_model or {}),
        "notebooks": {r.notebook: asdict(r) for r in results},
    })
    write_text_atomic(out / "metrics.json", json.dumps(payload, indent=2) + "\n")
    write_text_atomic(out / "report.html", render_html(results, payload, out))
    return write_text_atomic(out / "report.md", render_markdown(results, payload, out))


def format_summary_table(results: Sequence[NotebookResult]) -> str:
    """A Markdown table: notebook, status, time, headline metrics, thresholds."""
    rows = [
        "| notebook | status | time (s) | metrics | thresholds |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        shown = ", ".join(f"{k}={format_value(v)}" for k, v in list(sorted(r.metrics.items()))[:4])
        rows.append(f"| {r.notebook} | {r.status} | {r.seconds:.1f} | {shown} | {_verdict(r)} |")
    return "\n".join(rows)


def format_value(value: Any) -> str:
    """Floats to 4 significant digits, None (a NaN recorded as ``null``) as ``n/a``, anything
    else as ``str``."""
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _verdict(result: NotebookResult) -> str:
    if result.failed_thresholds:
        return "; ".join(result.failed_thresholds)
    if result.status != "passed":
        return "-"
    return "met" if result.checks else "none set"


def _metric_rows(result: NotebookResult) -> list[tuple[str, str, str, bool | None]]:
    """``(metric, value, rule, passed)``: every metric, then thresholded ones it lacks."""
    checks = {c["metric"]: c for c in result.checks}
    rows: list[tuple[str, str, str, bool | None]] = []
    for name, value in sorted(result.metrics.items()):
        check = checks.pop(name, None)
        rule = check["rule"] if check else ""
        rows.append((name, format_value(value), rule, check["passed"] if check else None))
    rows += [(name, "missing", c["rule"], False) for name, c in sorted(checks.items())]
    return rows


def _figures(out: Path, notebook: str) -> list[Path]:
    return sorted((out / "figures").glob(f"{notebook}_*.png"))


# ---------------------------------------------------------------------------- Markdown


_PROSE_NOTE = ("Numbers the text quotes from the reference run that this run measured "
               "differently (another CPU or a GPU changes them; on the reference machine "
               "it means the text needs updating):")


def render_markdown(results: Sequence[NotebookResult], payload: Mapping, out: Path) -> str:
    """The Markdown report (figures linked as ``figures/<name>.png``, relative to ``out``)."""
    verdict = "all thresholds met" if payload["passed"] else "**FAILED**"
    lines = [
        f"# medseg course run: profile `{payload['profile']}`",
        "",
        f"{payload['created']} · {len(results)} notebooks in {payload['total_seconds']:.0f} s"
        f" · {verdict}",
        "",
        format_summary_table(results),
        "",
    ]
    if payload["environment"]:
        lines += ["## Environment", "", _md_pairs(payload["environment"]), ""]
    if payload["profile_settings"]:
        lines += ["## Profile", "", _md_pairs(payload["profile_settings"]), ""]
    if payload["course_model"]:
        lines += ["## Course model recipe", "", _md_pairs(payload["course_model"]), ""]
    for r in results:
        lines += [f"## {r.notebook}", "", f"{r.status} in {r.seconds:.1f} s", ""]
        if r.error:
            lines += [f"**{r.status}**: `{r.error}` (log: `logs/{r.notebook}.log`)", ""]
        rows = _metric_rows(r)
        if rows:
            lines += ["| metric | value | threshold | verdict |", "|---|---|---|---|"]
            lines += [f"| {n} | {v} | {rule} | {_word(ok)} |" for n, v, rule, ok in rows]
        else:
            lines.append("no metrics recorded")
        if r.prose_differences:
            lines += ["", _PROSE_NOTE, ""] + [f"- {d}" for d in r.prose_differences]
        lines += [f"\n![{p.stem}](figures/{p.name})" for p in _figures(out, r.notebook)]
        lines.append("")
    return "\n".join(lines)


def _md_pairs(values: Mapping[str, Any]) -> str:
    rows = ["| | |", "|---|---|"]
    return "\n".join(rows + [f"| {k} | {format_value(v)} |" for k, v in values.items()])


def _word(passed: bool | None) -> str:
    return "" if passed is None else ("pass" if passed else "FAIL")


# -------------------------------------------------------------------------------- HTML


def render_html(results: Sequence[NotebookResult], payload: Mapping, out: Path) -> str:
    """The report as one self-contained HTML page (figures inlined as base64 PNG)."""
    e = html.escape
    ok = payload["passed"]
    verdict = _span(ok, "all thresholds met" if ok else "FAILED")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>medseg course run: {e(payload['profile'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>medseg course run: profile <code>{e(payload['profile'])}</code></h1>",
        f"<p>{e(payload['created'])} · {len(results)} notebooks in "
        f"{payload['total_seconds']:.0f} s · {verdict}</p>",
        _html_summary(results),
    ]
    for title, key in (("Environment", "environment"), ("Profile", "profile_settings"),
                       ("Course model recipe", "course_model")):
        if payload[key]:
            parts += [f"<h2>{title}</h2>", _html_pairs(payload[key])]
    for r in results:
        parts.append(f'<h2 id="{e(r.notebook)}">{e(r.notebook)}</h2>')
        parts.append(f"<p>{_span(r.ok, r.status)} in {r.seconds:.1f} s</p>")
        if r.error:
            parts.append(f"<p><code>{e(r.error)}</code> (log: <code>logs/{e(r.notebook)}.log"
                         "</code>)</p>")
        parts.append(_html_metrics(r))
        if r.prose_differences:
            parts.append(f"<p>{e(_PROSE_NOTE)}</p><ul>"
                         + "".join(f"<li>{e(d)}</li>" for d in r.prose_differences) + "</ul>")
        parts += [_html_figure(p, r.notebook) for p in _figures(out, r.notebook)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _span(passed: bool | None, text: str) -> str:
    css = "" if passed is None else ("pass" if passed else "fail")
    return f'<span class="{css}">{html.escape(text)}</span>' if css else html.escape(text)


def _html_summary(results: Sequence[NotebookResult]) -> str:
    rows = ["<table><tr><th>notebook</th><th>status</th><th>time (s)</th>"
            "<th>thresholds</th></tr>"]
    for r in results:
        name = html.escape(r.notebook)
        rows.append(f'<tr><td><a href="#{name}">{name}</a></td><td>{_span(r.ok, r.status)}</td>'
                    f'<td class="num">{r.seconds:.1f}</td><td>{html.escape(_verdict(r))}</td></tr>')
    return "\n".join([*rows, "</table>"])


def _html_pairs(values: Mapping[str, Any]) -> str:
    rows = [f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(format_value(v))}</td></tr>"
            for k, v in values.items()]
    return "\n".join(["<table>", *rows, "</table>"])


def _html_metrics(result: NotebookResult) -> str:
    rows = _metric_rows(result)
    if not rows:
        return "<p>no metrics recorded</p>"
    lines = ["<table><tr><th>metric</th><th>value</th><th>threshold</th><th>verdict</th></tr>"]
    lines += [f"<tr><td>{html.escape(n)}</td><td{_num_class(v)}>{html.escape(v)}</td>"
              f"<td>{html.escape(rule)}</td><td>{_span(ok, _word(ok))}</td></tr>"
              for n, v, rule, ok in rows]
    return "\n".join([*lines, "</table>"])


def _num_class(text: str) -> str:
    try:
        float(text)
    except ValueError:
        return ""
    return ' class="num"'


def _html_figure(path: Path, notebook: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(path.stem.removeprefix(f"{notebook}_"))
    return (f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")
