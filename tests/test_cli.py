"""The `medseg` command wires each subcommand to its package function, with exit codes."""

import json
import os
import subprocess
import sys
import types

import nibabel as nib
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


# --- bad input: one line on stderr, exit 2, nothing written --------------------------------


def one_error_line(err: str) -> str:
    """The one line a failed command printed on stderr (no traceback, nothing else)."""
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err.splitlines()[0]


def _random_nrrd(path):
    path.write_bytes(np.random.default_rng(0).bytes(300))


def _complex_nifti(path):
    nib.save(nib.Nifti1Image(np.zeros((5, 4, 3), np.complex64), np.eye(4)), path)


@pytest.mark.parametrize(("name", "make", "problem"), [
    ("scan.nrrd", _random_nrrd,
     "not a readable NRRD file: it does not start with the magic NRRD000x"),
    ("scan.nii.gz", _complex_nifti,
     "voxel type complex64 is not supported: a scalar image is needed (one real number per "
     "voxel)"),
    ("scan.nii.gz", lambda path: os.mkfifo(path),
     "it is a FIFO (named pipe), not a regular file"),
])
def test_data_convert_bad_input_is_one_line_naming_the_file(tmp_path, capfd, name, make,
                                                            problem):
    make(tmp_path / name)
    assert main(["data", "convert", str(tmp_path / name), str(tmp_path / "out.nii.gz")]) == 2
    line = one_error_line(capfd.readouterr().err)
    assert line == f"medseg: error: cannot read {tmp_path / name}: {problem}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_data_convert_folds_what_a_cxx_reader_prints_into_its_one_line(tmp_path):
    # A real process, as users run it: MetaIO prints its reason on file descriptor 2.
    source = io.write_volume(Volume(np.zeros((3, 4, 5), np.int16)), tmp_path / "ct.mha",
                             compress=False)
    source.write_bytes(source.read_bytes()[:-50])
    result = subprocess.run([sys.executable, "-m", "medseg_helpers.cli", "data", "convert",
                             str(source), str(tmp_path / "ct.nii.gz")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        f"medseg: error: cannot read {source}: not a readable MetaImage file: data not read "
        "completely; ideal = 120 : actual = 70")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.mha"]


def test_data_convert_onto_an_existing_folder_names_it_and_leaves_it(tmp_path, capfd):
    source = io.write_volume(Volume(np.zeros((3, 4, 5), np.int16)), tmp_path / "ct.mha")
    (tmp_path / "out.nii.gz").mkdir()
    assert main(["data", "convert", str(source), str(tmp_path / "out.nii.gz")]) == 2
    assert one_error_line(capfd.readouterr().err) == (
        f"medseg: error: cannot write {tmp_path / 'out.nii.gz'}: it is an existing folder; "
        "give a file name inside it instead")
    assert not any((tmp_path / "out.nii.gz").iterdir())


def test_data_convert_writes_an_upper_case_name_as_given(tmp_path):
    volume = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    source = io.write_volume(volume, tmp_path / "ct.mha")
    assert main(["data", "convert", str(source), str(tmp_path / "OUT.NII.GZ")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT.NII.GZ", "ct.mha"]
    np.testing.assert_array_equal(io.read_volume(tmp_path / "OUT.NII.GZ").array, volume.array)


def test_data_convert_lists_the_dicom_series_and_takes_series_uid(tmp_path, capfd,
                                                                  write_dicom_series):
    ct = Volume(np.zeros((4, 6, 5), np.int16))
    write_dicom_series(ct, tmp_path / "dicom", series_uid="1.2.3.1", series_description="AX CT")
    write_dicom_series(Volume(np.ones((2, 6, 5), np.int16)), tmp_path / "dicom",
                       series_uid="1.2.3.2", series_description="Scout")
    args = ["data", "convert", str(tmp_path / "dicom"), str(tmp_path / "ct.nii.gz")]
    assert main(args) == 2
    assert one_error_line(capfd.readouterr().err) == (
        f"medseg: error: {tmp_path / 'dicom'} holds 2 DICOM series; choose one with "
        '--series-uid (series_uid= in Python): 1.2.3.1 ("AX CT", 4 slices), 1.2.3.2 ("Scout", '
        "2 slices)")
    assert not (tmp_path / "ct.nii.gz").exists()
    assert main([*args, "--series-uid", "1.2.3.2"]) == 0
    np.testing.assert_array_equal(io.read_volume(tmp_path / "ct.nii.gz").array, np.ones((2, 6, 5)))


# --- every failure of a command: one line, exit 2; --debug adds the traceback; Ctrl-C 130 ---


class _OrtFail(Exception):
    """Stands for onnxruntime's ``Fail``: a plain Exception subclass from a C++ module."""


_OrtFail.__module__ = "onnxruntime.capi.onnxruntime_pybind11_state"


@pytest.mark.parametrize(("error", "line"), [
    (PermissionError(13, "Permission denied", "/data/out.nii.gz"),
     "[Errno 13] Permission denied: '/data/out.nii.gz'"),
    (IsADirectoryError(21, "Is a directory", "/data/out"),
     "[Errno 21] Is a directory: '/data/out'"),
    (MemoryError(), "out of memory: an allocation failed"),
    (MemoryError("Unable to allocate 7.45 GiB for an array"),
     "out of memory: Unable to allocate 7.45 GiB for an array"),
    (RuntimeError("Exception thrown in SimpleITK\nITK ERROR: disk full"),
     "Exception thrown in SimpleITK ITK ERROR: disk full"),
    (_OrtFail("[ONNXRuntimeError] : 1 : FAIL : Load model failed"),
     "ONNX Runtime: [ONNXRuntimeError] : 1 : FAIL : Load model failed"),
    (TypeError("unsupported operand"),
     "TypeError: unsupported operand (rerun as `medseg --debug ...` for the traceback)"),
])
def test_any_failure_prints_one_line_and_exits_2(tmp_path, capsys, monkeypatch, error, line):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(io, "convert_to_nifti", fail)
    assert main(["data", "convert", str(tmp_path / "a.nrrd"), str(tmp_path / "b.nii.gz")]) == 2
    assert one_error_line(capsys.readouterr().err) == f"medseg: error: {line}"


def test_debug_prints_the_traceback_before_the_line(tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/out.nii.gz")

    monkeypatch.setattr(io, "convert_to_nifti", fail)
    args = ["--debug", "data", "convert", str(tmp_path / "a.nrrd"), str(tmp_path / "b.nii.gz")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in fail" in err
    assert err.splitlines()[-1] == ("medseg: error: [Errno 13] Permission denied: "
                                    "'/data/out.nii.gz'")


def test_ctrl_c_exits_130_with_a_short_message(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "convert_to_nifti", interrupted)
    assert main(["data", "convert", str(tmp_path / "a.nrrd"), str(tmp_path / "b.nii.gz")]) == 130
    assert capsys.readouterr().err == "medseg: interrupted\n"


# --- serve: options checked at parse time, the model before the server starts --------------


@pytest.fixture
def served(monkeypatch) -> list[tuple[tuple, dict]]:
    """Calls of ``run_server``, replaced: no server starts, torch and FastAPI stay unloaded."""
    calls: list[tuple[tuple, dict]] = []
    fake = types.ModuleType("medseg_helpers.deploy.serve")
    fake.run_server = lambda *args, **kwargs: calls.append((args, kwargs))
    monkeypatch.setitem(sys.modules, "medseg_helpers.deploy.serve", fake)
    return calls


@pytest.fixture
def onnx_file(tmp_path):
    """A file that starts like an ONNX protobuf (field 1, ir_version = 8)."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x08\x12\x07pytorch")
    return path


def test_serve_passes_every_option_to_the_server(served, onnx_file):
    assert main(["serve", str(onnx_file), "--num-classes", "3", "--port", "8123",
                 "--max-upload-mib", "0.5", "--max-concurrency", "4", "--max-voxels", "1000",
                 "--patch-size", "16", "32", "32", "--num-threads", "2",
                 "--queue-timeout-s", "2.5"]) == 0
    assert served == [((str(onnx_file),), {
        "host": "127.0.0.1", "port": 8123, "num_classes": 3, "max_upload_bytes": 2**19,
        "max_concurrency": 4, "max_voxels": 1000, "patch_size": (16, 32, 32),
        "num_threads": 2, "queue_timeout_s": 2.5,
    })]


def test_serve_defaults_are_create_apps(served, onnx_file):
    assert main(["serve", str(onnx_file), "--num-classes", "2"]) == 0
    kwargs = served[0][1]
    assert (kwargs["max_voxels"], kwargs["patch_size"], kwargs["num_threads"],
            kwargs["queue_timeout_s"], kwargs["max_upload_bytes"]) == (256**3, None, None, 30.0,
                                                                       64 * 2**20)


def test_serve_help_documents_the_voxel_limit(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--help"])
    assert stop.value.code == 0
    assert "default 256**3 = 16777216" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("option", "message"), [
    (["--max-upload-mib", "-1"], "argument --max-upload-mib: must be a number > 0; got '-1'"),
    (["--max-concurrency", "0"], "argument --max-concurrency: must be a whole number > 0; got '0'"),
    (["--max-voxels", "0"], "argument --max-voxels: must be a whole number > 0; got '0'"),
    (["--max-voxels", "1e6"], "argument --max-voxels: expected a whole number > 0; got '1e6'"),
    (["--num-threads", "0"], "argument --num-threads: must be a whole number > 0; got '0'"),
    (["--queue-timeout-s", "nan"], "argument --queue-timeout-s: must be a number > 0; got 'nan'"),
    (["--patch-size", "64", "0"], "argument --patch-size: must be a whole number > 0; got '0'"),
    (["--port", "70000"], "argument --port: a TCP port is 1..65535; got '70000'"),
    (["--num-classes", "0"], "argument --num-classes: must be a whole number > 0; got '0'"),
])
def test_serve_refuses_bad_option_values_at_parse_time(served, onnx_file, capsys, option,
                                                       message):
    with pytest.raises(SystemExit) as stop:
        main(["serve", str(onnx_file), "--num-classes", "2", *option])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"medseg serve: error: {message}"
    assert served == []


def test_serve_refuses_a_patch_size_of_the_wrong_length(served, onnx_file, capsys):
    assert main(["serve", str(onnx_file), "--num-classes", "2", "--patch-size", "64"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "medseg: error: --patch-size takes 2 numbers (2D model) or 3 (3D model); got 1")
    assert served == []


EXPORT_HINT = "export it with `medseg export RUN_DIR --format onnx --out MODEL.onnx` first"


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("missing.onnx", None, "no such model file: {path}"),
    ("models", "folder", "{path}: not a regular file; expected an exported .onnx model"),
    ("best.pt", b"PK\x03\x04", "{path}: a PyTorch file; the server runs ONNX models: "
                               + EXPORT_HINT),
    ("model.onnx", b"PK\x03\x04", "{path}: not an ONNX model (this is a zip archive (a PyTorch "
                                  "checkpoint from torch.save?)): " + EXPORT_HINT),
    ("model.onnx", b"\x80\x02}q", "{path}: not an ONNX model (this is a Python pickle (a PyTorch "
                                 "checkpoint?)): " + EXPORT_HINT),
    ("model.onnx", b"", "{path}: not an ONNX model (this is not an ONNX protobuf): "
                        + EXPORT_HINT),
])
def test_serve_refuses_a_model_that_is_not_onnx_before_starting(tmp_path, served, capsys, name,
                                                                content, problem):
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert main(["serve", str(path), "--num-classes", "2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == "medseg: error: " + problem.format(path=path)
    assert served == []
