"""The static course book (`course.book`, `medseg course book`, `make book`): a page per
executed notebook with its figures, links that resolve, nothing fetched from the network,
hidden answers still hidden; built from a real smoke run of a notebook; rendered by headless
Chromium where it is installed."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from medseg_helpers.cli import main as medseg
from medseg_helpers.course.book import build_book, markdown_to_html, stale_notebooks
from medseg_helpers.paths import repo_root

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png(width: int = 4, height: int = 3) -> bytes:
    """A valid grey RGB PNG of ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + b"\x80" * 3 * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                               0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _notebook(title: str) -> dict:
    """An executed notebook: prose with a formula and a hidden answer, a code cell with
    printed text, a figure and a table."""
    figure = base64.b64encode(_png()).decode()
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source":
            f"# {title}\n\nThe standard error is $\\sigma/\\sqrt{{k}}$, not `$HOME`.\n\n"
            "<details><summary>Show the answers</summary>\n\nThe answer is **42**.\n\n"
            "</details>"},
        {"cell_type": "code", "execution_count": 1, "metadata": {}, "source": "print('hi')",
         "outputs": [
             {"output_type": "stream", "name": "stdout", "text": "hi <there>\n"},
             {"output_type": "display_data", "metadata": {},
              "data": {"image/png": figure, "text/plain": "<Figure>"}},
             {"output_type": "execute_result", "execution_count": 1, "metadata": {},
              "data": {"text/html": "<table><tr><td>0.91</td></tr></table>",
                       "text/plain": "0.91"}}]}]}


@pytest.fixture
def course_run(tmp_path):
    """A run folder (two executed notebooks, a report with a figure) and the sources."""
    run, sources = tmp_path / "runs/course-smoke", tmp_path / "notebooks"
    (run / "notebooks").mkdir(parents=True)
    (run / "figures").mkdir()
    sources.mkdir()
    for stem, title in (("00_setup", "00 · Setup"), ("01_data_preparation", "01 · Data")):
        (sources / f"{stem}.ipynb").write_text(json.dumps(_notebook(title)))
        (run / "notebooks" / f"{stem}.ipynb").write_text(json.dumps(_notebook(title)))
    (run / "figures/00_setup_orthogonal.png").write_bytes(_png())
    (run / "report.md").write_text("# Run\n\n| notebook | time (s) |\n|---|---|\n| 00 | 1 |\n\n"
                                   "![orthogonal](figures/00_setup_orthogonal.png)\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n\n| notebook | what you learn | |\n|---|---|---|\n"
                      "| `00_setup` | setup | [![Open in Colab](https://colab.research.google"
                      ".com/assets/colab-badge.svg)](https://colab.research.google.com/x) |\n\n")
    return run, sources, readme


class _Links(HTMLParser):
    """Collects asset references (``src``, stylesheet ``href``) and navigation links."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []
        self.links: list[str] = []
        self.open_details: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "src" in values:
            self.assets.append(values["src"] or "")
        if tag == "link":
            self.assets.append(values.get("href") or "")
        elif tag == "a" and values.get("href"):
            self.links.append(values["href"])
        if tag == "details" and "open" in values:
            self.open_details.append(values.get("class") or "")


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_every_notebook_gets_a_page_with_its_figures_and_nothing_from_the_network(course_run,
                                                                                  tmp_path):
    run, sources, readme = course_run
    index = build_book(run, tmp_path / "book", sources, readme)
    book = index.parent
    pages = sorted(p.name for p in book.glob("*.html"))
    assert pages == ["00_setup.html", "01_data_preparation.html", "index.html", "report.html"]
    for page in book.glob("*.html"):
        parsed = _parse(page)
        for asset in parsed.assets:  # every asset is inline or a file of the book
            assert not re.match(r"[a-z]+://|//", asset), (page.name, asset)
            if not asset.startswith("data:"):
                assert (book / asset).is_file(), (page.name, asset)
        for link in parsed.links:  # internal links resolve; only Colab is external
            if link.startswith("https://colab.research.google.com/"):
                continue
            target, _, anchor = link.partition("#")
            target_page = book / target if target else page
            assert target_page.is_file(), (page.name, link)
            if anchor:
                assert f'id="{anchor}"' in target_page.read_text(encoding="utf-8"), link
        # hidden answers stay hidden: only the navigation and short code cells are open
        assert set(parsed.open_details) <= {"nav", "input"}, page.name
    css = (book / "book.css").read_text()
    assert "@import" not in css and "url(" not in css
    setup = (book / "00_setup.html").read_text()
    assert setup.count('src="data:image/png;base64,') == 1
    assert "hi &lt;there&gt;" in setup and "<td>0.91</td>" in setup
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">' in setup
    assert "<code>$HOME</code>" in setup  # code is not read as a formula
    assert "<details><summary>Show the answers</summary>" in setup
    assert 'href="notebooks/00_setup.ipynb" download' in setup
    assert (book / "notebooks/00_setup.ipynb").read_bytes() == (
        sources / "00_setup.ipynb").read_bytes()
    report = _parse(book / "report.html")
    assert "figures/00_setup_orthogonal.png" in report.assets
    landing = (book / "index.html").read_text()
    assert '<a href="00_setup.html">00_setup</a>' in landing and "colab-badge" not in landing


def test_a_run_without_executed_notebooks_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no executed notebook: run `medseg "
                                                "course run`"):
        build_book(tmp_path / "empty-run", tmp_path / "book", tmp_path)


def test_stale_notebooks_are_those_missing_or_older_than_their_source(course_run):
    run, sources, _ = course_run
    assert stale_notebooks(run, sources) == []
    os.utime(run / "notebooks/00_setup.ipynb", (1, 1))  # executed long ago
    (run / "notebooks/01_data_preparation.ipynb").unlink()
    assert stale_notebooks(run, sources) == ["00_setup", "01_data_preparation"]


def test_formulas_become_mathml_and_code_blocks_are_highlighted():
    html = markdown_to_html("$$a < b$$\n\n```python\nx = 1\n```\n")
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in html
    assert "<mo>&#x0003C;</mo>" in html or "<mo>&lt;</mo>" in html
    assert '<div class="code"><pre>' in html and '<span class="n">x</span>' in html


@pytest.mark.slow
def test_medseg_course_book_runs_a_stale_notebook_with_the_smoke_profile_then_builds(
        tmp_path, monkeypatch, capsys):
    sources = tmp_path / "notebooks"
    sources.mkdir()
    shutil.copy(repo_root() / "notebooks/00_setup.ipynb", sources)
    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEDSEG_RUN_DIR", str(tmp_path / "runs"))
    code = medseg(["course", "book", "--profile", "smoke", "--notebook-dir", str(sources)])
    assert code == 0, capsys.readouterr()
    book = tmp_path / "runs/book"
    assert sorted(p.name for p in book.glob("*.html")) == ["00_setup.html", "index.html",
                                                           "report.html"]
    page = (book / "00_setup.html").read_text()
    assert 'src="data:image/png;base64,' in page  # the notebook's figures, as it ran
    assert "running the course first" in capsys.readouterr().out
    # A second build reuses the run: nothing is stale any more.
    assert stale_notebooks(tmp_path / "runs/course-smoke", sources) == []


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
@pytest.mark.parametrize("width", [1280, 390], ids=["laptop", "phone"])
def test_chromium_renders_the_landing_and_a_notebook_page(course_run, tmp_path, width):
    run, sources, readme = course_run
    book = build_book(run, tmp_path / "book", sources, readme).parent
    for page in ("index.html", "00_setup.html"):
        shot = tmp_path / f"{page}-{width}.png"
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                        f"--screenshot={shot}", f"--window-size={width},900",
                        (book / page).as_uri()], check=True, capture_output=True, timeout=120)
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == (width, 900)
        assert len(data) > 5000  # text and layout, not a blank page
