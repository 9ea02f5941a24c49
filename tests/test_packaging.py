"""Install files agree: pyproject, environment.yml, binder/ and the CPU lock file."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COURSE_EXTRAS = ("course", "deploy", "openvino", "tune", "explain", "book")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ @;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _course_requirements() -> list[str]:
    project = _pyproject()
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + [r for e in COURSE_EXTRAS for r in extras[e]]
    return [r for r in requirements if _name(r) != "medseg-helpers"]  # self-references


def test_the_course_extra_brings_every_extra_the_notebooks_import():
    # the Colab bootstrap installs medseg-helpers[course]; notebooks 07-09 need optuna,
    # onnxruntime, fastapi and scikit-image; `make book` needs the book extra
    course = _pyproject()["optional-dependencies"]["course"]
    assert "medseg-helpers[deploy,openvino,tune,explain,book]" in course


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


COLAB = "https://colab.research.google.com/github/{repo}/blob/main/notebooks/{name}"
BADGE = "[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def test_readme_has_an_open_in_colab_badge_for_every_notebook():
    import json

    bootstrap = json.loads((ROOT / "notebooks" / "00_setup.ipynb").read_text())["cells"]
    source = next("".join(c["source"]) for c in bootstrap if c["cell_type"] == "code")
    [repo] = re.findall(r'REPO = "https://github\.com/([^"]+)"', source)
    readme = (ROOT / "README.md").read_text()
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        url = COLAB.format(repo=repo, name=notebook.name)
        badge = BADGE.format(url=url)
        assert badge in readme, f"README lacks the Colab badge of {notebook.name}"
        assert f"| `{notebook.stem}` |" in readme  # one course-map line per notebook


def _make_dry_run(*args: str, **env: str) -> list[str]:
    import os
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    clean = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "MEDSEG_PROFILE")}
    done = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT,
                          env={**clean, **env}, capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if "medseg course run" in line]


@pytest.mark.parametrize(
    ("args", "env", "profile"),
    [
        ((), {}, "full"),  # a learner's default: the profile that learns
        ((), {"PROFILE": "smoke"}, "smoke"),
        ((), {"MEDSEG_PROFILE": "decathlon"}, "decathlon"),
        (("PROFILE=smoke",), {"MEDSEG_PROFILE": "decathlon"}, "smoke"),  # the explicit one wins
    ],
)
def test_make_course_takes_the_profile_from_profile_or_medseg_profile(args, env, profile):
    assert _make_dry_run("course", *args, **env) == [
        f".venv/bin/medseg course run --profile {profile}"
    ]
