"""The course as a static book to read without running: one HTML page per executed notebook.

`build_book` turns a course run (``runs/course-<profile>/`` from `course.runner.run_course`:
its executed notebooks, ``report.md`` and ``figures/``) into a folder of plain HTML pages
(``make book``): a landing page with the course map (README's table) and the run's times,
one page per notebook with every output (figures embedded as ``data:`` PNGs, tables,
printed text), the run report, a sidebar to move between them, and per page an "Open in
Colab" link and the notebook to download. Hidden answers (``<details>``) stay collapsed;
code cells fold.

Everything a page needs is in the folder: one stylesheet, no script, no font, no theme
fetched at build or view time. Formulas (``$...$``, ``$$...$$``) become MathML, which
browsers render natively. The generator is this module (mistune for Markdown, Pygments for
code, latex2mathml for formulas): Jupyter Book and mkdocs themes fetch or bundle far more
than a dozen pages of text and figures need, and nbconvert's page templates load MathJax
and require.js from a CDN.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg_helpers.fileutil import write_text_atomic

__all__ = ["COLAB_BASE", "BookPage", "build_book", "markdown_to_html", "stale_notebooks"]

#: Where "Open in Colab" points, followed by ``notebooks/<name>.ipynb``.
COLAB_BASE = "https://colab.research.google.com/github/medseg-course/medseg/blob/main/"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MATH_INLINE = re.compile(r'<span class="math">\\\((.+?)\\\)</span>', re.S)
_MATH_BLOCK = re.compile(r'<div class="math">\$\$(.+?)\$\$</div>', re.S)
_STYLE = Path(__file__).with_name("book.css")


@dataclass(frozen=True)
class BookPage:
    """One page of the book: ``file`` (e.g. ``05_training.html``) and its ``title``."""

    file: str
    title: str


def stale_notebooks(run_dir: str | os.PathLike, notebook_dir: str | os.PathLike) -> list[str]:
    """Source notebooks whose executed copy in ``run_dir/notebooks`` is missing or older.

    Returns:
        Their stems (e.g. ``["05_training"]``); empty when the run can be reused as it is.
    """
    executed = Path(run_dir) / "notebooks"
    return [source.stem for source in sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))
            if not (executed / source.name).is_file()
            or (executed / source.name).stat().st_mtime < source.stat().st_mtime]


@functools.cache
def _markdown_parser() -> Any:
    """One mistune parser for every cell: tables, strikethrough, math, highlighted code."""
    import mistune

    class Renderer(mistune.HTMLRenderer):
        def block_code(self, code: str, info: str | None = None) -> str:
            return _highlight(code, (info or "text").split()[0])

    return mistune.create_markdown(escape=False, renderer=Renderer(escape=False),
                                   plugins=["table", "strikethrough", "math"])


def markdown_to_html(text: str) -> str:
    """Markdown (tables, raw HTML such as ``<details>``, fenced code) as HTML; formulas as
    MathML, code highlighted."""
    from latex2mathml.converter import convert

    out = _markdown_parser()(text)
    out = _MATH_BLOCK.sub(lambda m: convert(html.unescape(m[1]).strip(), display="block"), out)
    return _MATH_INLINE.sub(lambda m: convert(html.unescape(m[1]), display="inline"), out)


def _highlight(code: str, language: str = "python") -> str:
    """``code`` as Pygments HTML (classes styled by ``book.css``)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(language)
    except ClassNotFound:
        lexer = TextLexer()
    return highlight(code, lexer, HtmlFormatter(cssclass="code"))


def _text(value: Any) -> str:
    """A notebook string field, stored as one string or a list of lines."""
    return value if isinstance(value, str) else "".join(value)


def _render_output(output: dict[str, Any]) -> str:
    """One cell output as HTML: the richest of PNG, HTML, plain text; streams; errors."""
    kind = output.get("output_type")
    if kind == "stream":
        return f'<pre class="stream">{html.escape(_ANSI.sub("", _text(output["text"])))}</pre>'
    if kind == "error":
        trace = _ANSI.sub("", "\n".join(output.get("traceback", [])))
        return f'<pre class="error">{html.escape(trace)}</pre>'
    data = output.get("data", {})
    if "image/png" in data:
        png = _text(data["image/png"]).replace("\n", "")
        base64.b64decode(png, validate=True)  # a corrupt figure fails the build, loudly
        return f'<img class="figure" alt="figure" src="data:image/png;base64,{png}">'
    if "text/html" in data:  # the notebooks' own tables (pandas); no scripts are run
        return f'<div class="html-output">{_text(data["text/html"])}</div>'
    if "text/markdown" in data:
        return markdown_to_html(_text(data["text/markdown"]))
    if "text/plain" in data:
        return f'<pre class="result">{html.escape(_ANSI.sub("", _text(data["text/plain"])))}</pre>'
    return ""


def _render_cell(cell: dict[str, Any]) -> str:
    source = _text(cell.get("source", ""))
    if cell["cell_type"] == "markdown":
        return f'<section class="markdown">{markdown_to_html(source)}</section>'
    if cell["cell_type"] != "code":
        return ""
    lines = source.count("\n") + 1
    count = cell.get("execution_count")
    label = f"In [{count}]" if count else "code"
    folded = "" if lines <= 12 else " folded"  # long cells start closed
    code = (f'<details class="input{folded}"{"" if folded else " open"}><summary>{label} · '
            f'{lines} line{"s" * (lines != 1)}</summary>{_highlight(source)}</details>')
    outputs = "".join(_render_output(o) for o in cell.get("outputs", []))
    return f'<section class="cell">{code}<div class="outputs">{outputs}</div></section>'


def _title(notebook: dict[str, Any], fallback: str) -> str:
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            first = _text(cell.get("source", "")).lstrip().splitlines()[:1]
            if first and first[0].startswith("# "):
                return first[0][2:].strip()
    return fallback


def _page(title: str, body: str, pages: Sequence[BookPage], current: str,
          actions: str = "") -> str:
    here = ' aria-current="page"'
    nav = "".join(f'<li><a href="{p.file}"{here if p.file == current else ""}>'
                  f"{html.escape(p.title)}</a></li>" for p in pages)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)} · medseg course</title>"
            f'<link rel="stylesheet" href="book.css"></head><body>'
            f'<main><a class="to-contents" href="#contents">Contents</a>{actions}{body}</main>'
            f'<details class="nav" id="contents" open><summary>medseg course</summary>'
            f"<nav><ul>{nav}</ul></nav></details></body></html>\n")


def _course_map(readme: Path) -> str:
    """README's course table (from ``| notebook |`` to the first blank line), as Markdown
    with notebook links pointing at the book's pages."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| notebook")), None)
    if start is None:
        return ""
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append("| " + " | ".join(c.strip() for c in line.strip("|").split("|")[:2]) + " |")
    text = "\n".join(table)  # two columns: notebook, what you learn (no Colab badges)
    return re.sub(r"`(\d\d_[a-z_0-9]+)`", r"[\1](\1.html)", text)


def build_book(run_dir: str | os.PathLike, out_dir: str | os.PathLike,
               notebook_dir: str | os.PathLike = "notebooks",
               readme: str | os.PathLike = "README.md", colab_base: str = COLAB_BASE) -> Path:
    """Write the book of the course run ``run_dir`` into ``out_dir`` (replaced).

    Args:
        run_dir: a course run: ``notebooks/*.ipynb`` executed, ``report.md``, ``figures/``.
        out_dir: the book's folder: ``index.html``, ``<notebook>.html`` each, ``report.html``,
            ``book.css``, ``figures/`` (the report's) and ``notebooks/`` (the sources, to
            download and run).
        notebook_dir: the course's source notebooks (committed without outputs).
        readme: the README whose course table the landing page shows.
        colab_base: prefix of the "Open in Colab" links.

    Returns:
        The path of ``index.html``.

    Raises:
        FileNotFoundError: ``run_dir`` holds no executed notebook.
    """
    run_dir, out_dir, notebook_dir = Path(run_dir), Path(out_dir), Path(notebook_dir)
    executed = sorted((run_dir / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not executed:
        raise FileNotFoundError(f"{run_dir / 'notebooks'} holds no executed notebook: run "
                                "`medseg course run` (or `make course`) first")
    notebooks = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in executed}
    titles = {stem: _title(nb, stem) for stem, nb in notebooks.items()}
    pages = [BookPage("index.html", "Start here")]
    pages += [BookPage(f"{stem}.html", title) for stem, title in titles.items()]
    pages.append(BookPage("report.html", "Run report"))
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "notebooks").mkdir(parents=True)
    shutil.copyfile(_STYLE, out_dir / "book.css")
    if (run_dir / "figures").is_dir():
        shutil.copytree(run_dir / "figures", out_dir / "figures")
    for stem, notebook in notebooks.items():
        source = notebook_dir / f"{stem}.ipynb"
        if source.is_file():
            shutil.copyfile(source, out_dir / "notebooks" / source.name)
        actions = (f'<p class="actions"><a href="{colab_base}notebooks/{stem}.ipynb">'
                   f'Open in Colab</a> · <a href="notebooks/{stem}.ipynb" download>'
                   f"Download notebook</a></p>")
        body = "".join(_render_cell(cell) for cell in notebook["cells"])
        write_text_atomic(out_dir / f"{stem}.html",
                          _page(titles[stem], body, pages, f"{stem}.html", actions))
    report = run_dir / "report.md"
    report_html = (markdown_to_html(report.read_text(encoding="utf-8")) if report.is_file()
                   else "<p>This run wrote no report.</p>")
    write_text_atomic(out_dir / "report.html", _page("Run report", report_html, pages,
                                                    "report.html"))
    intro = ("# The medseg course\n\nDeep-learning segmentation of medical images, in "
             "eleven notebooks. Every page below is a notebook as it ran, with its figures, "
             "tables and numbers. Three ways in: **read** it here; **run** a page in Colab "
             "(the link at its top); or run it locally (`make course`, see the README). "
             "The [run report](report.html) lists each notebook's time, metrics and "
             "thresholds, and the machine it ran on.\n\n")
    course_map = _course_map(Path(readme)) if Path(readme).is_file() else ""
    write_text_atomic(out_dir / "index.html",
                      _page("Start here", markdown_to_html(intro + course_map), pages,
                            "index.html"))
    return out_dir / "index.html"
