"""Profiles, data/run directories and device choice follow the environment variables."""

import pytest
import torch

from medseg_helpers.course.profiles import PROFILES, get_profile_name, profile_defaults
from medseg_helpers.device import describe_environment, get_device, seed_everything
from medseg_helpers.paths import get_data_dir, get_run_dir


def test_profile_defaults_to_full_the_one_that_learns(monkeypatch):
    monkeypatch.delenv("MEDSEG_PROFILE", raising=False)
    assert get_profile_name() == "full"


def test_profile_comes_from_environment_and_is_case_insensitive(monkeypatch):
    monkeypatch.setenv("MEDSEG_PROFILE", " SMOKE ")
    assert profile_defaults().name == "smoke"


def test_explicit_profile_beats_environment(monkeypatch):
    monkeypatch.setenv("MEDSEG_PROFILE", "smoke")
    assert profile_defaults("decathlon").name == "decathlon"


def test_unknown_profile_is_rejected_with_the_choices():
    with pytest.raises(ValueError,
                       match="unknown profile 'fast'; choose one of full, smoke, decathlon"):
        get_profile_name("fast")


@pytest.mark.parametrize(("old", "new"), [("cpu", "full"), ("gpu", "decathlon"), ("CPU", "full")])
def test_former_profile_names_are_refused_with_the_new_name(monkeypatch, old, new):
    with pytest.raises(ValueError, match=f"profile '{old.lower()}' is now called '{new}'"):
        get_profile_name(old)
    monkeypatch.setenv("MEDSEG_PROFILE", old)
    with pytest.raises(ValueError, match=f"now called '{new}'"):
        profile_defaults()


def test_profiles_smoke_is_tiny_full_learns_on_synthetic_data_decathlon_downloads():
    full, smoke, decathlon = (profile_defaults(name) for name in PROFILES)
    assert smoke.max_epochs < full.max_epochs < decathlon.max_epochs
    assert smoke.dataset == full.dataset == "synthetic" and not full.download
    assert decathlon.dataset.startswith("Task") and decathlon.download
    # 80 patients: 16 of them are test patients at the 20 % test share
    assert full.num_cases == 80 and round(0.2 * full.num_cases) >= 12
    assert full.crop_size == (64, 64) and smoke.crop_size is None is decathlon.crop_size


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


def test_study_dataset_has_24_patients_beside_the_full_dataset_and_is_smokes_own(
        monkeypatch, tmp_path):
    from medseg_helpers.course import data

    calls = []
    monkeypatch.setattr(data, "ensure_synthetic_dataset",
                        lambda profile, **kwargs: calls.append((profile, kwargs)) or tmp_path)
    data.ensure_study_dataset("full", tmp_path)
    data.ensure_study_dataset("smoke", tmp_path)  # 8 patients: no smaller copy
    assert calls == [("full", {"num_cases": 24, "out_dir": tmp_path / "Synthetic_MR_full_24"}),
                     ("smoke", {"data_dir": tmp_path})]
