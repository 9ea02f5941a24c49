"""Profiles, data/run directories and device choice follow the environment variables."""

import pytest
import torch

from medseg_helpers.course.profiles import PROFILES, get_profile_name, profile_defaults
from medseg_helpers.device import describe_environment, get_device, seed_everything
from medseg_helpers.paths import get_data_dir, get_run_dir


def test_profile_defaults_to_smoke(monkeypatch):
    monkeypatch.delenv("MEDSEG_PROFILE", raising=False)
    assert get_profile_name() == "smoke"


def test_profile_comes_from_environment_and_is_case_insensitive(monkeypatch):
    monkeypatch.setenv("MEDSEG_PROFILE", " CPU ")
    assert profile_defaults().name == "cpu"


def test_explicit_profile_beats_environment(monkeypatch):
    monkeypatch.setenv("MEDSEG_PROFILE", "cpu")
    assert profile_defaults("gpu").name == "gpu"


def test_unknown_profile_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="unknown profile 'fast'; choose one of smoke, cpu, gpu"):
        get_profile_name("fast")


def test_profiles_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = (profile_defaults(name) for name in PROFILES)
    assert smoke.max_epochs < cpu.max_epochs < gpu.max_epochs
    assert smoke.dataset == cpu.dataset == "synthetic" and not smoke.download
    assert gpu.dataset.startswith("Task") and gpu.download


def test_data_and_run_dirs_follow_environment_and_are_created_only_on_request(monkeypatch,
                                                                              tmp_path):
    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("MEDSEG_RUN_DIR", str(tmp_path / "r"))
    assert get_data_dir() == tmp_path / "d" and get_run_dir() == tmp_path / "r"
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()  # a getter
    assert get_data_dir(create=True) == tmp_path / "d" and (tmp_path / "d").is_dir()
    assert get_run_dir(create=True) == tmp_path / "r" and (tmp_path / "r").is_dir()
    explicit = tmp_path / "explicit" / "nested"
    assert get_run_dir(explicit) == explicit and not explicit.exists()
    assert get_run_dir(explicit, create=True) == explicit and explicit.is_dir()


def test_device_is_cpu_without_accelerators(monkeypatch):
    monkeypatch.delenv("MEDSEG_DEVICE", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert get_device().type in {"cpu", "mps"}


def test_requesting_missing_cuda_fails_clearly(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.setenv("MEDSEG_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="no CUDA device is available"):
        get_device()


def test_device_override_from_environment(monkeypatch):
    monkeypatch.setenv("MEDSEG_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_seed_everything_repeats_random_draws():
    seed_everything(3)
    first = torch.rand(3)
    seed_everything(3)
    assert torch.equal(first, torch.rand(3))


def test_describe_environment_names_the_main_libraries():
    info = describe_environment()
    assert {"python", "torch", "monai", "albumentations", "device"} <= info.keys()
