"""`medseg export` on a tiny trained run, int8 calibration data, and the variant table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import smoke_course_model

from medseg_helpers.cli import main  # noqa: E402
from medseg_helpers.deploy.preprocessing import Preprocessing, read_preprocessing  # noqa: E402
from medseg_helpers.deploy.prune import make_permanent, prune_channels, remove_pruned_channels  # noqa: E402
from medseg_helpers.deploy.trained_export import (  # noqa: E402
    calibration_images,
    example_input,
    export_trained_model,
)
from medseg_helpers.deploy.variants import variant_table  # noqa: E402
from medseg_helpers.metrics.overlap import compute_dice  # noqa: E402

FORMATS = {"onnx": "m.onnx", "torchscript": "m.pt", "program": "m.pt2", "int8": "m_int8.onnx"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A smoke-trained course model (U-Net depth 2) and its four exports via the CLI."""
    root = tmp_path_factory.mktemp("variants")
    with smoke_course_model(root, XDG_CACHE_HOME=str(root / "cache")) as (trained, _):
        outputs, paths = {}, {}
        for fmt, name in FORMATS.items():
            paths[fmt] = root / "export" / name
            code = main(["export", str(trained.run_dir), "--format", fmt, "--out",
                         str(paths[fmt])])
            outputs[fmt] = code
        yield trained, paths, outputs


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cli_export_writes_a_file_that_passes_parity(run, fmt) -> None:
    _, paths, codes = run
    assert codes[fmt] == 0 and paths[fmt].stat().st_size > 0


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cli_export_carries_the_training_preprocessing(run, fmt) -> None:
    trained, paths, _ = run
    read = read_preprocessing(paths[fmt])
    assert read == Preprocessing.from_settings(trained.cache.settings)
    fields = ("normalisation", "normalisation_kwargs", "spacing_mm", "axis")
    assert json.loads(read.to_json()) == {k: trained.cache.settings[k] for k in fields}


def test_cli_export_prints_the_parity_and_the_size(run, capsys) -> None:
    trained, _, _ = run
    out = capsys.readouterr()  # drop the fixture's output
    del out
    assert main(["export", str(trained.run_dir), "--format", "onnx", "--out",
                 str(trained.run_dir / "again.onnx"), "--which", "last"]) == 0
    text = capsys.readouterr().out
    assert "MB)" in text and "max abs diff" in text and "argmax agreement 1.0000" in text


def test_cli_export_without_a_trained_run_says_what_to_do(tmp_path, capsys) -> None:
    assert main(["export", str(tmp_path), "--format", "onnx", "--out",
                 str(tmp_path / "m.onnx")]) == 2
    assert "train a model there first" in capsys.readouterr().err


def test_unknown_format_is_rejected(run, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown format 'tflite'"):
        export_trained_model(run[0], "tflite", tmp_path / "m.tflite")


def test_example_input_is_a_real_slice_of_a_training_patient(run) -> None:
    trained, _, _ = run
    x = example_input(trained, batch_size=2)
    image, _ = trained.preprocessed(trained.split.train[0])
    assert x.shape == (2, 1, *image.shape[2:]) and x.dtype == torch.float32
    assert all(s % trained.model.size_multiple == 0 for s in x.shape[2:])
    torch.testing.assert_close(x[0, :, :, :], image[:, image.shape[1] // 2])


def test_calibration_uses_real_training_slices_half_with_foreground(run) -> None:
    trained, _, _ = run
    images = calibration_images(trained, count=8, seed=0)
    assert len(images) == 8 and all(i.shape == (1, 64, 64) for i in images)
    train_slices, fg = [], []
    for pid in trained.split.train:
        image, label = trained.preprocessed(pid)
        train_slices += list(image.transpose(0, 1).numpy())
        fg += [bool(s.any()) for s in label]
    matches = [[i for i, s in enumerate(train_slices) if np.array_equal(s, c)] for c in images]
    assert all(matches)  # every calibration slice is a training slice (never test data)
    assert sum(fg[m[0]] for m in matches) >= 4


def test_variant_table_scores_every_variant_on_the_same_test_patients(run) -> None:
    trained, paths, _ = run
    thin = remove_pruned_channels(make_permanent(prune_channels(
        __import__("copy").deepcopy(trained.model), 0.5)))
    table = variant_table(trained, {"eager": trained.model, "ORT fp32": paths["onnx"],
                                    "ORT int8": paths["int8"], "torch.export": paths["program"],
                                    "pruned": thin}, repeats=1)
    assert list(table.index) == ["eager", "ORT fp32", "ORT int8", "torch.export", "pruned"]
    eager, onnx = table.loc["eager"], table.loc["ORT fp32"]
    assert eager["speedup"] == 1.0 and eager["dice_drop"] == 0.0 and eager["max_abs_diff"] == 0
    assert onnx["max_abs_diff"] <= 1e-4 and abs(onnx["dice_drop"]) < 1e-6
    assert table.loc["ORT int8", "file_mb"] < 0.6 * onnx["file_mb"]  # int8 weights
    assert table.loc["pruned", "file_mb"] < eager["file_mb"]  # channels really removed
    # Dice is the mean over test patients of each patient's mean foreground Dice.
    per_patient = []
    for pid in trained.split.test:
        _, label = trained.preprocessed(pid)
        pred = trained.predict_logits(pid).argmax(0)
        per_patient.append(compute_dice(pred[None], label[None], 3)[0].nanmean())
    assert eager["dice"] == pytest.approx(float(torch.stack(per_patient).nanmean()), abs=1e-6)


def test_variant_table_refuses_models_that_still_carry_masks(run) -> None:
    import copy

    trained, _, _ = run
    masked = prune_channels(copy.deepcopy(trained.model), 0.5)
    with pytest.raises(ValueError, match="make_permanent"):
        variant_table(trained, {"eager": trained.model, "masked": masked}, repeats=1)


def test_variant_table_needs_a_known_reference(run) -> None:
    with pytest.raises(ValueError, match="reference 'x' is not one of"):
        variant_table(run[0], {"eager": run[0].model}, reference="x")


# ----------------------------------------------------------- variants in other modes
def test_variant_table_reports_agreement_and_runs_torch_modes_and_runtimes(run) -> None:
    from medseg_helpers.deploy.runtime import openvino_available
    from medseg_helpers.deploy.variants import ExportedVariant, TorchVariant

    trained, paths, _ = run
    variants = {"eager": trained.model,
                "bf16 channels-last": TorchVariant(trained.model, bf16=True, channels_last=True),
                "ORT default options": ExportedVariant(paths["onnx"], default_options=True)}
    if openvino_available():
        variants["OpenVINO bf16"] = ExportedVariant(paths["onnx"], "openvino", "bf16")
    table = variant_table(trained, variants, repeats=1)
    assert table.loc["eager", "agreement"] == 1.0
    assert table.loc["ORT default options", "agreement"] == 1.0
    assert table.loc["ORT default options", "max_abs_diff"] <= 1e-4
    for name in set(variants) - {"eager", "ORT default options"}:  # bf16: 8-bit mantissa
        assert table.loc[name, "agreement"] >= 0.99
        assert 1e-4 < table.loc[name, "max_abs_diff"] < 1.0


# ----------------------------------------------------------- the shipped deployment
@pytest.fixture(scope="module")
def best(run, tmp_path_factory):
    """``medseg export --format best`` on the smoke run, and what it printed."""
    import contextlib
    import io

    trained, _, _ = run
    out = tmp_path_factory.mktemp("best") / "model.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", str(trained.run_dir), "--format", "best", "--out", str(out)])
    assert code == 0
    return out, json.loads(out.with_name("model.deploy.json").read_text()), printed.getvalue()


def test_best_ships_the_fastest_candidate_within_the_limits(run, best) -> None:
    import hashlib

    from medseg_helpers.deploy.deployment import candidates

    out, descriptor, printed = best
    rows = {row["variant"]: row for row in descriptor["table"]}
    assert set(rows) == {"eager", *(c.name for c in candidates())}
    passed = {name: row for name, row in rows.items() if name != "eager"
              and row["dice_drop"] <= 0.01 and row["agreement"] >= 0.99}
    fastest = min(passed, key=lambda name: passed[name]["latency_ms"])
    assert descriptor["variant"] == fastest
    assert fastest == f"{descriptor['runtime']} " + (
        "int8" if descriptor["quantized"] == "int8" else descriptor["precision"])
    assert descriptor["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert descriptor["measured_on"]["patients"] == list(run[0].split.val)
    assert read_preprocessing(out) == Preprocessing.from_settings(run[0].cache.settings)
    assert f"chose {fastest}, " in printed


def test_the_deployment_loads_in_its_runtime_after_a_parity_check(best) -> None:
    from medseg_helpers.deploy.deployment import load_deployment

    out, descriptor, _ = best
    runner = load_deployment(out)
    assert (runner.runtime, runner.precision) == (descriptor["runtime"], descriptor["precision"])
    assert runner.parity["agreement"] >= 0.99
    assert runner.parity["max_abs_diff"] <= descriptor["tolerance"]["max_abs_diff"]


def test_a_changed_file_or_a_failed_parity_check_refuses_to_serve(best, tmp_path) -> None:
    import shutil

    from medseg_helpers.deploy.deployment import DeploymentError, load_deployment

    out, descriptor, _ = best
    for name in ("model.onnx", "model.deploy.json", "model.probe.npz"):
        shutil.copy(out.with_name(name), tmp_path / name)
    strict = {**descriptor, "tolerance": {"max_abs_diff": -1.0, "min_agreement": 0.99}}
    (tmp_path / "model.deploy.json").write_text(json.dumps(strict))
    with pytest.raises(DeploymentError, match="model.onnx: parity check at load failed"):
        load_deployment(tmp_path / "model.onnx")
    with open(tmp_path / "model.onnx", "ab") as file:
        file.write(b"\0")
    with pytest.raises(DeploymentError, match="model.onnx: the file changed since"):
        load_deployment(tmp_path / "model.onnx")


def test_without_openvino_an_openvino_choice_runs_in_onnxruntime(best, tmp_path, monkeypatch,
                                                                 caplog) -> None:
    import shutil

    from medseg_helpers.deploy import deployment

    out, descriptor, _ = best
    for name in ("model.onnx", "model.probe.npz"):
        shutil.copy(out.with_name(name), tmp_path / name)
    as_openvino = {**descriptor, "runtime": "openvino", "precision": "bf16"}
    (tmp_path / "model.deploy.json").write_text(json.dumps(as_openvino))
    monkeypatch.setattr(deployment, "openvino_available", lambda: False)
    runner = deployment.load_deployment(tmp_path / "model.onnx")
    assert (runner.runtime, runner.precision) == ("onnxruntime", "fp32")
    assert "OpenVINO bf16, which is not installed" in caplog.text


def test_a_model_without_descriptor_runs_in_onnxruntime_fp32(run) -> None:
    from medseg_helpers.deploy.deployment import load_deployment

    runner = load_deployment(run[1]["onnx"])
    assert (runner.runtime, runner.precision, runner.parity) == ("onnxruntime", "fp32", None)


def test_the_service_reports_the_runtime_it_serves_with(best) -> None:
    from fastapi.testclient import TestClient

    from medseg_helpers.deploy.serve import create_app

    out, descriptor, _ = best
    health = TestClient(create_app(out, num_classes=3)).get("/health").json()
    assert health["runtime"] == f"{descriptor['runtime']} {descriptor['precision']}"
    assert health["parity"]["agreement"] >= 0.99


def test_a_channels_last_variant_leaves_the_shared_model_as_it_was(run) -> None:
    from medseg_helpers.deploy.variants import TorchVariant

    trained = run[0]
    variant_table(trained, {"eager": trained.model,
                            "channels-last": TorchVariant(trained.model, channels_last=True)},
                  repeats=1)
    weight = trained.model.stem[3].weight  # (C_out, C_in > 1, 3, 3)
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
