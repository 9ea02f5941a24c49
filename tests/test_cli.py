"""The `medseg` command wires each subcommand to its package function, with exit codes."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from medseg_helpers.cli import main
from medseg_helpers.data import io
from medseg_helpers.data.volume import Volume


def test_help_lists_the_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "medseg_helpers.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "data" in result.stdout and "course" in result.stdout


def test_mistyped_flag_is_an_error_not_ignored(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "--num-case", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_data_synth_writes_a_decathlon_folder_and_is_idempotent(tmp_path, capsys):
    args = ["data", "synth", "--num-cases", "2", "--shape", "8", "32", "32", "--out", str(tmp_path)]
    assert main(args) == 0
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["numTraining"] == 2 and (tmp_path / dataset["training"][1]["label"]).exists()
    before = (tmp_path / "dataset.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "dataset.json").stat().st_mtime_ns == before
    assert "dataset ready" in capsys.readouterr().out


def test_data_synth_profile_sizes_go_to_the_data_dir(tmp_path):
    assert main(["data", "synth", "--profile", "smoke", "--data-dir", str(tmp_path)]) == 0
    dataset = json.loads((tmp_path / "Synthetic_MR_smoke" / "dataset.json").read_text())
    assert dataset["numTraining"] == 8


def test_data_convert_dicom_series_to_nifti(tmp_path, write_dicom_series):
    array = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5)
    volume = Volume(array, spacing_mm=(3.0, 0.5, 0.5), origin_mm=(1.0, 2.0, 3.0))
    folder = write_dicom_series(volume, tmp_path / "dicom")
    assert main(["data", "convert", str(folder), str(tmp_path / "ct.nii.gz")]) == 0
    converted = io.read_volume(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(converted.array, array)
    assert converted.same_geometry(volume, atol=1e-4)


def test_data_convert_missing_source_exits_2_with_the_path(tmp_path, capsys):
    missing = tmp_path / "nope.nrrd"
    assert main(["data", "convert", str(missing), str(tmp_path / "x.nii.gz")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_data_download_reports_unknown_tasks(tmp_path, capsys):
    assert main(["data", "download", "Task42_Nothing", "--data-dir", str(tmp_path)]) == 2
    assert "known tasks" in capsys.readouterr().err


def test_data_download_offline_fails_cleanly(tmp_path, capsys, monkeypatch):
    import data_download

    def offline(task, **_):
        raise data_download.DownloadError("this machine seems to be offline")

    monkeypatch.setattr(data_download, "download_task", offline)
    assert main(["data", "download", "Task04_Hippocampus", "--data-dir", str(tmp_path)]) == 2
    assert "offline" in capsys.readouterr().err


@pytest.mark.slow
def test_train_smoke_prints_run_dir_and_dice_then_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path / "data"))
    run = tmp_path / "run"
    (tmp_path / "run.yaml").write_text("profile: smoke\nmodel_kwargs: {depth: 2}\n")
    args = ["train", "--config", str(tmp_path / "run.yaml"), "--run-dir", str(run), "--set",
            "progress=false", "--set", "tensorboard=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"run dir: {run}" in out and "best validation Dice: " in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 1
    saved = yaml.safe_load((run / "config.yaml").read_text())  # recipe + file + --set
    assert saved["model_kwargs"] == {"base_channels": 8, "depth": 2} and not saved["progress"]
    assert saved["loss_kwargs"]["batch"] is True
    assert main([*args, "--resume", "--set", "max_epochs=2"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs_completed"] == 2


@pytest.mark.parametrize(("extra", "match"), [
    (["--set", "learning_rate=0.1"], "did you mean 'lr'"),
    (["--set", "lr"], "expects key=value"),
    (["--set", "optimizer=adagrad"], "optimizer 'adagrad' not in"),
])
def test_train_bad_config_exits_2_before_training(extra, match, tmp_path, capsys):
    assert main(["train", "--profile", "smoke", "--run-dir", str(tmp_path), *extra]) == 2
    assert match in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_train_config_file_with_a_misspelt_key_exits_2(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("profile: smoke\nepochs: 3\n")
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 2
    assert "did you mean 'max_epochs'" in capsys.readouterr().err


@pytest.mark.parametrize(("old", "new"), [("cpu", "full"), ("gpu", "decathlon")])
def test_a_former_profile_name_is_a_usage_error_naming_the_new_one(capsys, old, new):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--profile", old])
    assert stop.value.code == 2
    assert f"profile '{old}' is now called '{new}'" in capsys.readouterr().err
