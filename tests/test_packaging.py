"""Install files agree: pyproject, environment.yml, binder/ and the CPU lock file."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COURSE_EXTRAS = ("course", "deploy", "tune", "explain")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ @;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _course_requirements() -> list[str]:
    project = _pyproject()
    extras = project["optional-dependencies"]
    return project["dependencies"] + [r for e in COURSE_EXTRAS for r in extras[e]]


def _pip_section(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    [pip] = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    return [r for r in pip if not r.startswith(("-", "--"))]


def test_environment_yml_lists_the_same_requirements_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    assert _pip_section(ROOT / "environment.yml") == _course_requirements()


def test_binder_environment_lists_the_same_requirements_and_cpu_torch():
    assert _pip_section(ROOT / "binder" / "environment.yml") == _course_requirements()
    assert "whl/cpu" in (ROOT / "binder" / "environment.yml").read_text()
    assert "medseg data synth" in (ROOT / "binder" / "postBuild").read_text()


def test_torch_range_is_loose_so_colab_keeps_its_own_build():
    [torch] = [r for r in _pyproject()["dependencies"] if _name(r) == "torch"]
    assert torch == "torch>=2.3"


def test_itkwidgets_is_only_an_optional_extra():
    names = {_name(r) for r in _course_requirements()}
    assert "itkwidgets" not in names
    assert any(_name(r) == "itkwidgets" for r in _pyproject()["optional-dependencies"]["viewer3d"])


def test_lock_file_pins_every_course_requirement_except_torch():
    lines = (ROOT / "requirements" / "cpu-lock.txt").read_text().splitlines()
    pinned = {_name(line) for line in lines if "==" in line}
    assert "torch" not in pinned  # torch is pinned first, by the Makefile
    missing = {_name(r) for r in _course_requirements()} - pinned - {"torch"}
    assert not missing, f"not pinned in the lock file: {sorted(missing)}"


def test_makefile_installs_the_cpu_torch_pin_before_the_rest():
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.index("$(TORCH_PIN)\n") < makefile.index("-c $(LOCK)")
    assert "TORCH_PIN := torch==2.13.0" in makefile


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
