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
from medseg_helpers.deploy.variants import (  # noqa: E402
    calibration_images,
    example_input,
    export_trained_model,
    variant_table,
)
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
