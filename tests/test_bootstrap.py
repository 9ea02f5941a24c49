"""The notebooks' Colab bootstrap installs the course package and never replaces torch.

Colab ships its own torch (a CUDA build); reinstalling it from PyPI would cost minutes
and could break CUDA. The bootstrap (first code cell of every notebook; `course check`
keeps the text identical) therefore asks pip for ``torch==<installed version>`` beside
the package. These tests run that exact cell, taken from ``00_setup.ipynb``, in a fresh
venv that "already has a different torch" (a fake ``torch`` distribution), offline:

* the venv is made ``--without-pip`` and sees this interpreter's site-packages through a
  ``.pth`` file placed after its own, so pip, setuptools and the package's dependencies
  come from there while the fake torch in the venv shadows the real one;
* pip runs with ``--no-index`` (``PIP_*`` variables, no config files) and installs the
  package from a copy of this checkout (``MEDSEG_SOURCE``), with a *newer* fake torch
  wheel on ``--find-links``, so a careless install would visibly upgrade torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from medseg_helpers.course.hygiene import bootstrap_source
from medseg_helpers.paths import repo_root

ROOT = repo_root()
NEWER_TORCH = "3.0.0"  # offered on --find-links: must never be installed by the bootstrap


def _dist_info_files(name: str, version: str) -> dict[str, str]:
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{dist_info}/INSTALLER": "pip\n",
    }
    files[f"{dist_info}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{dist_info}/RECORD,,\n"
    return files


def _make_venv(root: Path, torch_version: str) -> tuple[Path, Path]:
    """A venv holding only a fake torch; returns (python, its site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())  # fmt: skip
    for relative, text in _dist_info_files("torch", torch_version).items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(text)
    # Appended to sys.path after the venv's own site-packages: the fake torch wins.
    (site / "zz_parent_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


@pytest.fixture
def offline_pip(tmp_path) -> dict[str, str]:
    """Environment for an offline, config-free pip with a newer torch wheel on offer."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / f"torch-{NEWER_TORCH}-py3-none-any.whl", "w") as whl:
        for name, text in _dist_info_files("torch", NEWER_TORCH).items():
            whl.writestr(name, text)
    source = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("medseg_helpers", "data_download"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "MEDSEG_"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # ignore machine and user pip.conf (indexes, constraints)
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheels),
        PIP_NO_BUILD_ISOLATION="0",  # pip's inverted spelling: build with the env's setuptools
        PIP_CACHE_DIR=str(tmp_path / "pip-cache"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        MEDSEG_SOURCE=source.as_uri(),
    )
    return env


def _run_bootstrap(python: Path, env: dict[str, str], tmp_path: Path):
    script = tmp_path / "bootstrap.py"
    script.write_text(bootstrap_source(ROOT / "notebooks" / "00_setup.ipynb"))
    return subprocess.run(
        [python, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def _version(python: Path, name: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    return subprocess.run(
        [python, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_bootstrap_installs_the_package_and_keeps_colabs_torch(tmp_path, offline_pip):
    python, site = _make_venv(tmp_path / "venv", "2.99.0+fake")
    done = _run_bootstrap(python, {**offline_pip, "MEDSEG_BOOTSTRAP": "1"}, tmp_path)
    assert done.returncode == 0, done.stderr

    assert _version(python, "torch") == "2.99.0+fake"  # not upgraded to the 3.0.0 on offer
    where = subprocess.run(
        [python, "-c", "import medseg_helpers.course.profiles as c; print(c.__file__)"],
        cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(site)  # installed into the venv, not the checkout


def test_bootstrap_fails_rather_than_replace_an_incompatible_torch(tmp_path, offline_pip):
    python, _ = _make_venv(tmp_path / "venv", "2.0.0+fake")  # below the package's torch>=2.3
    done = _run_bootstrap(python, {**offline_pip, "MEDSEG_BOOTSTRAP": "1"}, tmp_path)
    assert done.returncode != 0
    assert "torch" in done.stderr and "conflict" in done.stderr.lower()
    assert _version(python, "torch") == "2.0.0+fake"

    # Control: without the pin, the same install replaces torch. The pin is what protects it.
    spec = f"medseg-helpers[course] @ {offline_pip['MEDSEG_SOURCE']}"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", spec], env=offline_pip, check=True,
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert _version(python, "torch") == NEWER_TORCH


def test_bootstrap_does_nothing_outside_colab(tmp_path, offline_pip):
    python, site = _make_venv(tmp_path / "venv", "2.99.0+fake")
    env = {**offline_pip, "MEDSEG_SOURCE": "file:///nonexistent"}  # would fail if it ran
    done = _run_bootstrap(python, env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert not list(site.glob("medseg_helpers*"))
