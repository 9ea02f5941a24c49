"""Notebook hygiene: the conventions every course notebook keeps, checked and fixed.

Conventions (DEVELOPERS.md, COURSE_DESIGN.md §5):

* outputs stripped and execution counts cleared, except in code cells marked
  ``# NBVAL_CHECK_OUTPUT`` (their small deterministic outputs are checked by nbval);
* the first code cell is the guarded Colab bootstrap, the same text in every notebook
  (tests/test_bootstrap.py runs it in a fresh venv, so one tested text serves all);
* exactly one cell tagged ``parameters``, which reads ``MEDSEG_PROFILE`` defaults;
* no ``cuda`` literal (use ``get_device()``), no absolute paths, no ``pip install``
  outside the bootstrap;
* every ``medseg_helpers`` import names a module or public name that exists (a module
  that moved is caught here, before a learner meets the ``ImportError``);
* a title, "You will learn", "Exercises" and "Summary" headings;
* exercises in the shape of `course.exercises`: the ``%%solution`` magic loaded, a
  ``SOLUTIONS`` parameter, every hidden code cell a ``%%solution`` cell, and at least one
  exercise the learner codes and checks (a ``check_exercise(...)`` cell);
* every cell has its own ``id`` (nbformat 4.5);
* the ``python3`` kernel, and no saved widget state.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medseg_helpers.fileutil import write_text_atomic

CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
BOOTSTRAP_MARKER = "google.colab"
REQUIRED_HEADINGS = ("You will learn", "Exercises", "Summary")
_PROFILE_READERS = ("MEDSEG_PROFILE", "profile_defaults")
_ABSOLUTE_PATH = re.compile(
    r"""["'](?:/(?:home|Users|root|work|tmp|mnt|content|data)\b|[A-Za-z]:\\)"""
)
_LOAD_EXERCISES = "%load_ext medseg_helpers.course.exercises"
_CUDA_LITERAL = re.compile(r"""["']cuda(?::\d+)?["']|\.cuda\(""")


@dataclass(frozen=True)
class Problem:
    """One convention a notebook breaks."""

    notebook: str
    cell: int | None
    message: str

    def __str__(self) -> str:
        where = f" cell {self.cell}" if self.cell is not None else ""
        return f"{self.notebook}{where}: {self.message}"


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _is_checked(cell: dict) -> bool:
    return cell.get("cell_type") == "code" and CHECK_MARKER in _source(cell)


def check_notebook(path: str | os.PathLike) -> list[Problem]:
    """Return every convention ``path`` breaks (empty list = clean)."""
    path = Path(path)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [Problem(path.name, None, f"cannot be read as JSON: {exc}")]
    messages = _check_metadata(nb) + _check_code_cells(nb) + _check_structure(nb)
    return [Problem(path.name, cell, message) for cell, message in messages]


def check_course(paths: list[Path]) -> list[Problem]:
    """`check_notebook` on every notebook, plus the checks that span the course.

    Course-wide: the bootstrap cell (first code cell) must be identical in every
    notebook, since only one text is tested (the first notebook's is the reference),
    and outputs must already be stripped (`strip_notebook` would change nothing).

    Args:
        paths: the course notebooks in order (`course.list_notebooks`).

    Returns:
        Every problem found, notebook by notebook (empty list = clean course).
    """
    problems = [p for path in paths for p in check_notebook(path)]
    reference: tuple[str, str] | None = None
    for path in paths:
        bootstrap = _bootstrap_source(path)
        if bootstrap is None:
            continue  # unreadable or missing: check_notebook reported it
        if reference is None:
            reference = (path.name, bootstrap)
        elif bootstrap != reference[1]:
            problems.append(Problem(path.name, None, _bootstrap_difference(reference, bootstrap)))
    for path in paths:
        try:
            unstripped = strip_notebook(path, check_only=True)
        except (OSError, ValueError):
            continue  # unreadable: check_notebook reported it
        if unstripped:
            message = "outputs not stripped (run 'medseg course strip')"
            problems.append(Problem(path.name, None, message))
    return problems


def bootstrap_source(path: str | os.PathLike) -> str:
    """The text of a notebook's Colab bootstrap (its first code cell).

    Raises:
        ValueError: the notebook has no code cell or its first one is not the bootstrap.
    """
    source = _bootstrap_source(Path(path))
    if source is None:
        raise ValueError(f"{Path(path).name}: first code cell is not the Colab bootstrap")
    return source


def _bootstrap_source(path: Path) -> str | None:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    if not code or BOOTSTRAP_MARKER not in _source(code[0]):
        return None
    return _source(code[0])


def _bootstrap_difference(reference: tuple[str, str], other: str) -> str:
    name, text = reference
    ours, theirs = other.splitlines(), text.splitlines()
    pairs = zip(ours, theirs, strict=False)
    line = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(ours), len(theirs)))
    return (
        f"Colab bootstrap differs from {name}'s at line {line + 1}; "
        "copy it exactly (one tested text for every notebook)"
    )


def _check_metadata(nb: dict) -> list[tuple[int | None, str]]:
    found = []
    if nb.get("nbformat") != 4:
        found.append((None, "nbformat must be 4"))
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != "python3":
        found.append((None, f"kernelspec name is {kernel!r}, expected 'python3'"))
    if "widgets" in nb.get("metadata", {}):
        found.append((None, "saved widget state in metadata; strip it"))
    return found


def _check_code_cells(nb: dict) -> list[tuple[int | None, str]]:
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        checked, src = _is_checked(cell), _source(cell)
        if cell.get("outputs") and not checked:
            found.append((i, f"has outputs but no '{CHECK_MARKER}' marker"))
        if cell.get("execution_count") is not None and not checked:
            found.append((i, "execution_count is set; strip outputs"))
        if _CUDA_LITERAL.search(src):
            found.append((i, "hard-coded CUDA device; use get_device()"))
        if _ABSOLUTE_PATH.search(src):
            found.append((i, "absolute path; use DATA_DIR / RUN_DIR"))
        if ("pip install" in src or "%pip" in src) and BOOTSTRAP_MARKER not in src:
            found.append((i, "pip install outside the guarded Colab bootstrap"))
        found += [(i, message) for message in missing_imports(src)]
    return found


def missing_imports(source: str, package: str = "medseg_helpers") -> list[str]:
    """Imports of ``package`` in ``source`` whose module or name does not exist.

    ``from medseg_helpers.data import io`` is fine while ``medseg_helpers/data/io.py``
    exists; ``from medseg_helpers import old_module`` after a move is reported. Lines
    that are not Python (IPython magics) are skipped.
    """
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return []
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            missing += [f"imports {a.name}, which does not exist" for a in node.names
                        if a.name.split(".")[0] == package and not _module_exists(a.name)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package:
            if not _module_exists(node.module):
                missing.append(f"imports from {node.module}, which does not exist")
                continue
            module = importlib.import_module(node.module)
            missing += [f"imports {a.name} from {node.module}, which has no such name"
                        for a in node.names if not hasattr(module, a.name)
                        and not _module_exists(f"{node.module}.{a.name}")]
    return missing


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _check_structure(nb: dict) -> list[tuple[int | None, str]]:
    found: list[tuple[int | None, str]] = []
    cells = nb.get("cells", [])
    code = [c for c in cells if c.get("cell_type") == "code"]
    if not code or BOOTSTRAP_MARKER not in _source(code[0]):
        found.append((None, "first code cell must be the Colab bootstrap"))
    tagged = [i for i, c in enumerate(cells) if "parameters" in _tags(c)]
    if len(tagged) != 1:
        found.append((None, f"needs exactly one 'parameters' cell, has {len(tagged)}"))
    elif not any(key in _source(cells[tagged[0]]) for key in _PROFILE_READERS):
        found.append((tagged[0], "parameters cell must read the profile defaults"))
    first = cells[0] if cells else {}
    if first.get("cell_type") != "markdown" or not _source(first).startswith("# "):
        found.append((0, "first cell must be a Markdown title ('# ...')"))
    markdown = "\n".join(_source(c) for c in cells if c.get("cell_type") == "markdown")
    for heading in REQUIRED_HEADINGS:
        if not re.search(rf"^#+ .*{re.escape(heading)}", markdown, flags=re.M | re.I):
            found.append((None, f"missing a '{heading}' heading"))
    if len(tagged) == 1 and not re.search(r"^SOLUTIONS\s*=", _source(cells[tagged[0]]), re.M):
        found.append((tagged[0], "parameters cell must define SOLUTIONS (course.exercises)"))
    ids = [c.get("id") for c in cells]
    found += [(i, "cell has no id (nbformat 4.5: give it a unique 'id')")
              for i, cell_id in enumerate(ids) if not cell_id]
    found += [(i, f"cell id {cell_id!r} is used twice") for i, cell_id in enumerate(ids)
              if cell_id and ids.index(cell_id) != i]
    return found + _check_exercises(cells)


def _check_exercises(cells: list[dict]) -> list[tuple[int | None, str]]:
    """The exercise shape of `course.exercises` (see the module docstring)."""
    found: list[tuple[int | None, str]] = []
    loaded = None
    for i, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        src = _source(cell)
        if loaded is None and _LOAD_EXERCISES in src:
            loaded = i
        is_solution = src.lstrip().startswith("%%solution")
        hidden = cell.get("metadata", {}).get("jupyter", {}).get("source_hidden", False)
        if hidden and not is_solution:
            found.append((i, "a hidden (solution) cell must start with %%solution"))
        if is_solution and (loaded is None or loaded > i):
            found.append((i, f"%%solution before '{_LOAD_EXERCISES}'"))
    if not any("check_exercise(" in _source(c) for c in cells if c.get("cell_type") == "code"):
        found.append((None, "no exercise the learner codes and checks (check_exercise)"))
    return found


def strip_notebook(path: str | os.PathLike, check_only: bool = False) -> bool:
    """Strip outputs (keeping ``NBVAL_CHECK_OUTPUT`` cells) and widget state.

    Args:
        path: the notebook.
        check_only: report whether stripping would change the file, without writing.

    Returns:
        True if the file changed (or would change, with ``check_only``).
    """
    path = Path(path)
    original = path.read_text(encoding="utf-8")
    nb = json.loads(original)
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        cell.setdefault("metadata", {}).pop("execution", None)
        if not _is_checked(cell):
            cell["outputs"] = []
            cell["execution_count"] = None
    stripped = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    changed = stripped != original
    if changed and not check_only:
        write_text_atomic(path, stripped)
    return changed


def copy_checked_outputs(source: str | os.PathLike, executed: str | os.PathLike) -> int:
    """Copy the outputs of ``NBVAL_CHECK_OUTPUT`` cells from an executed copy into ``source``.

    This is how checked outputs are refreshed after a change: execute the notebook
    (smoke profile), then keep only the outputs nbval will compare. Cells are matched
    by their id, so the executed copy must come from the current source.

    Returns:
        The number of checked cells whose outputs were copied.

    Raises:
        ValueError: if a checked cell of ``source`` is missing from ``executed``.
    """
    source = Path(source)
    nb = json.loads(source.read_text(encoding="utf-8"))
    ran = {c.get("id"): c for c in json.loads(Path(executed).read_text(encoding="utf-8"))["cells"]}
    copied = 0
    for cell in nb["cells"]:
        if not _is_checked(cell):
            continue
        if cell.get("id") not in ran:
            raise ValueError(f"{source.name}: checked cell {cell.get('id')!r} not in {executed}")
        cell["outputs"] = ran[cell["id"]].get("outputs", [])
        cell["execution_count"] = ran[cell["id"]].get("execution_count")  # nbval needs it
        copied += 1
    write_text_atomic(source, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    strip_notebook(source)
    return copied
