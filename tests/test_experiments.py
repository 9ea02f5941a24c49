"""Experiments: derived datasets never list test patients; variants are scored on the
fixed test split with clean labels."""

import json

import numpy as np
import pytest

from medseg_helpers.data.io import read_volume
from medseg_helpers.data.synthetic import generate_dataset
from medseg_helpers.training.config import TrainConfig
from medseg_helpers.transforms.label_noise import LabelNoise
from medseg_helpers.tuning.experiments import Experiment, derive_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("data") / "Tiny", flavour="mr",
                            num_cases=6, shape=(8, 32, 32), seed=0)


def test_derived_dataset_lists_only_the_chosen_cases_and_corrupts_only_noisy_ones(
        tiny_dataset, tmp_path):
    ids = ["phantom_mr_000", "phantom_mr_001", "phantom_mr_002"]
    noise = LabelNoise("dilate", 30.0)  # spacing (26.25, 8.75, 8.75) mm
    out = derive_dataset(tiny_dataset, tmp_path / "d", ids, noise, noisy_ids=ids[:1])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["noisy_cases"] == ids[:1]
    noisy = read_volume(meta["training"][0]["label"])
    clean = read_volume(tiny_dataset / "labelsTr" / "phantom_mr_000.nii.gz")
    assert noisy.spacing_mm == clean.spacing_mm
    assert (noisy.array > 0).sum() > (clean.array > 0).sum()
    assert meta["training"][1]["label"].startswith(str(tiny_dataset.resolve()))
    with pytest.raises(KeyError, match="no case"):
        derive_dataset(tiny_dataset, tmp_path / "e", ["nobody"])


def test_a_variant_trains_without_test_patients_and_is_scored_on_them(
        tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path / "cache_root"))
    config = TrainConfig.from_profile("smoke", data_dir=str(tiny_dataset), batch_size=4,
                                      model_kwargs={"base_channels": 4, "depth": 2})
    experiment = Experiment(config, tmp_path / "work", train_steps=1)
    result = experiment.run("two", train_ids=experiment.split.train[:2],
                            noise=LabelNoise("drop_components", 1.0))
    listed = {e["image"].split("/")[-1].split(".")[0] for e in json.loads(
        (tmp_path / "work/data/Tiny-two/dataset.json").read_text())["training"]}
    assert not listed & set(experiment.split.test)
    assert list(result.per_case["patient_id"]) == list(experiment.split.test)
    assert set(result.test_dice) == {"organ", "lesion"}
    assert result.row()["train_cases"] == 2 and result.metrics["global_step"] >= 1
    # Exactly the chosen patients train; the reference validation patients validate.
    assert result.run_trained.split.train == tuple(sorted(experiment.split.train[:2]))
    assert result.run_trained.split.val == experiment.split.val
    assert sorted(experiment.train_order()) == sorted(experiment.split.train)
    assert set(experiment.score("two", which="last")) == {"organ", "lesion"}
    table = experiment.disagreement("two")
    assert len(table) == 2 and table["noisy"].all()
    # Every lesion was dropped (probability 1; its voxels became organ): the labels hold
    # organ only, so organ Dice, and with it the mean, is defined for every case, while
    # lesion Dice is 0 (lesion predicted) or NaN (absent from both, skipped by the mean).
    lesion = table["dice_lesion"]
    assert ((lesion == 0) | lesion.isna()).all()
    assert table["mean_dice"].notna().all() and table["mean_dice"].is_monotonic_increasing
    np.testing.assert_allclose(table["mean_dice"],
                               table[["dice_organ", "dice_lesion"]].mean(axis=1))
    with pytest.raises(ValueError, match="may not be trained on"):
        experiment.run("leak", train_ids=list(experiment.split.test))
