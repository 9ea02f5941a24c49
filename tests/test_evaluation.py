"""Evaluation tables: one case by hand, model and folder sources, summary, CSV, CLI."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from medseg_helpers.data.io import write_volume
from medseg_helpers.data.volume import Volume
from medseg_helpers.metrics.evaluation import (
    METRICS,
    evaluate_case,
    evaluate_cases,
    evaluate_folders,
    format_summary,
    save_metrics_csv,
    summarise_metrics,
)
from medseg_helpers.metrics.surface import hausdorff_distance
from medseg_helpers.transforms.postprocess import keep_largest_component

NAMES = ["background", "organ", "lesion"]
SPACING = (4.0, 1.0, 0.5)


def _pair(seed: int = 0, lesion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(pred, truth) (6, 16, 16): an organ box, optionally a lesion in it, and errors."""
    truth = np.zeros((6, 16, 16), np.uint8)
    truth[1:5, 3:12, 3:12] = 1
    if lesion:
        truth[2:4, 5:7, 5:7] = 2
    pred = truth.copy()
    pred[1:5, 3:12, 11] = 0  # one column of organ missed
    pred[0, 14, 14 - seed] = 1  # a stray organ voxel
    return pred, truth


def test_hand_worked_case() -> None:
    pred, truth = _pair()
    rows = {r["class"]: r for r in evaluate_case(pred, truth, SPACING, NAMES, "a")}
    assert set(rows) == {"organ", "lesion"}
    organ = rows["organ"]
    # truth organ: 4*9*9 - 8 lesion = 316 voxels; pred: 316 - 4*9 missed column + 1 stray
    assert (organ["truth_voxels"], organ["pred_voxels"]) == (316, 281)
    # TP = 280, FP = 1, FN = 36: Dice = 560 / (560 + 37)
    assert organ["dice"] == pytest.approx(560 / 597)
    assert organ["iou"] == pytest.approx(280 / 317)
    assert organ["sensitivity"] == pytest.approx(280 / 316)
    assert organ["precision"] == pytest.approx(280 / 281)
    assert organ["accuracy"] == pytest.approx(1 - 37 / (6 * 16 * 16))
    voxel_ml = 4.0 * 1.0 * 0.5 / 1000
    assert organ["truth_ml"] == pytest.approx(316 * voxel_ml)
    assert organ["volume_diff_ml"] == pytest.approx(-35 * voxel_ml)
    assert organ["hd95_mm"] == pytest.approx(
        hausdorff_distance(pred == 1, truth == 1, SPACING))
    lesion = rows["lesion"]
    assert lesion["dice"] == 1.0 and lesion["hd95_mm"] == 0.0 and lesion["nsd"] == 1.0
    assert set(rows["organ"]) >= set(METRICS)


def test_lesion_free_case_conventions() -> None:
    pred, truth = _pair(lesion=False)
    (lesion,) = [r for r in evaluate_case(pred, truth, SPACING, NAMES) if r["class"] == "lesion"]
    for name in ("dice", "iou", "sensitivity", "precision", "hd95_mm", "asd_mm", "nsd"):
        assert math.isnan(lesion[name]), name
    pred[0, 0, 0] = 2  # a false alarm: Dice 0, HD95 = the image diagonal (default)
    (lesion,) = [r for r in evaluate_case(pred, truth, SPACING, NAMES) if r["class"] == "lesion"]
    diagonal = math.dist((0, 0, 0), (6 * 4.0, 16 * 1.0, 16 * 0.5))
    assert lesion["dice"] == 0.0 and lesion["nsd"] == 0.0
    assert lesion["hd95_mm"] == pytest.approx(diagonal)
    (lesion,) = [r for r in evaluate_case(pred, truth, SPACING, NAMES, missing_distance="inf")
                 if r["class"] == "lesion"]
    assert lesion["hd95_mm"] == math.inf
    with pytest.raises(ValueError, match="missing_distance must be"):
        evaluate_case(pred, truth, SPACING, NAMES, missing_distance="max")


def _cases() -> list[tuple[str, np.ndarray, Volume]]:
    return [(f"case_{i}", _pair(i, lesion=i != 2)[0], Volume(_pair(i, lesion=i != 2)[1], SPACING))
            for i in range(3)]


def test_evaluate_cases_table_and_summary() -> None:
    table = evaluate_cases(_cases(), NAMES)
    assert len(table) == 6 and list(table["case"].unique()) == ["case_0", "case_1", "case_2"]
    summary = summarise_metrics(table)
    assert list(summary.index) == ["organ", "lesion"]
    organ = table[table["class"] == "organ"]["dice"]
    assert summary.loc["organ", ("dice", "mean")] == pytest.approx(organ.mean())
    assert summary.loc["organ", ("dice", "std")] == pytest.approx(organ.std())
    assert summary.loc["lesion", ("dice", "n")] == 2  # the lesion-free case is NaN: skipped
    text = format_summary(summary[["dice"]])
    assert text.loc["lesion", "dice"] == "1.000 ± 0.000 (1.000)"


def test_default_class_names_cover_every_case() -> None:
    table = evaluate_cases(_cases())  # case_2 has no lesion: still three classes
    assert list(table["class"].unique()) == ["class_1", "class_2"]
    assert (table.groupby("case").size() == 2).all()


def test_postprocess_is_applied_before_scoring() -> None:
    raw = evaluate_cases(_cases(), NAMES)
    cleaned = evaluate_cases(_cases(), NAMES, postprocess=keep_largest_component)
    organ = (raw["class"] == "organ").to_numpy()
    assert (cleaned["precision"][organ] == 1.0).all()  # stray voxel removed
    assert (raw["precision"][organ] < 1.0).all()


def test_a_trained_model_is_evaluated_on_its_test_split() -> None:
    cases = {cid: (pred, truth) for cid, pred, truth in _cases()}
    model = SimpleNamespace(
        class_names=NAMES, split=SimpleNamespace(test=("case_1", "case_2")),
        predict=lambda cid: Volume(cases[cid][0], SPACING), read_label=lambda cid: cases[cid][1])
    table = evaluate_cases(model)
    assert sorted(table["case"].unique()) == ["case_1", "case_2"]
    assert len(evaluate_cases(model, case_ids=["case_0"])) == 2


def test_grid_mismatch_names_the_case_and_shapes() -> None:
    with pytest.raises(ValueError, match=r"case x: prediction \(2, 2, 2\) and truth \(2, 2, 3\)"):
        evaluate_cases([("x", np.zeros((2, 2, 2), int), Volume(np.zeros((2, 2, 3), int)))])
    with pytest.raises(TypeError, match="truth must be a Volume"):
        evaluate_cases([("x", np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int))])


def _write_folders(tmp_path: Path) -> tuple[Path, Path]:
    for case_id, pred, truth in _cases():
        write_volume(Volume(pred, SPACING), tmp_path / "preds" / f"{case_id}.nii.gz")
        write_volume(truth, tmp_path / "labels" / f"{case_id}.nii.gz")
    return tmp_path / "preds", tmp_path / "labels"


def test_evaluate_folders_matches_in_memory_and_writes_csv(tmp_path: Path) -> None:
    preds, labels = _write_folders(tmp_path)
    table = evaluate_folders(preds, labels, NAMES)
    expected = evaluate_cases(_cases(), NAMES)
    pd.testing.assert_frame_equal(table, expected)
    path = save_metrics_csv(table, tmp_path / "out" / "metrics.csv")
    back = pd.read_csv(path)
    assert np.allclose(back["dice"], table["dice"], equal_nan=True)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.csv"]  # no temporary left


def test_evaluate_folders_errors(tmp_path: Path) -> None:
    preds, labels = _write_folders(tmp_path)
    (preds / "case_1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="1 cases of .* have no prediction.*case_1"):
        evaluate_folders(preds, labels, NAMES)
    table = evaluate_folders(preds, labels, NAMES, allow_missing=True)
    assert sorted(table["case"].unique()) == ["case_0", "case_2"]
    write_volume(Volume(np.zeros((6, 16, 16), np.uint8), SPACING), preds / "extra.nii.gz")
    with pytest.raises(FileNotFoundError, match="1 predictions .* have no truth.*extra"):
        evaluate_folders(preds, labels, NAMES, allow_missing=True)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        evaluate_folders(tmp_path / "nope", labels)
    with pytest.raises(ValueError, match="spacing_from"):
        evaluate_folders(preds, labels, spacing_from="image")


def test_cli_evaluate_writes_the_csv(tmp_path: Path, capsys) -> None:
    from medseg_helpers.cli import main

    preds, labels = _write_folders(tmp_path)
    out = tmp_path / "metrics.csv"
    code = main(["evaluate", "--pred", str(preds), "--truth", str(labels), "--out", str(out),
                 "--labels", *NAMES])
    assert code == 0 and out.is_file()
    printed = capsys.readouterr().out
    assert "organ" in printed and "3 cases" in printed
    assert len(pd.read_csv(out)) == 6
    os.remove(preds / "case_0.nii.gz")
    assert main(["evaluate", "--pred", str(preds), "--truth", str(labels),
                 "--out", str(out)]) == 2
