"""The course model: trained once, reused, evaluated on its held-out test patients."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from _training_helpers import TinyNet
from conftest import smoke_course_model

from medseg_helpers.course.model import (
    INIT_WEIGHTS_FILE,
    POSTPROCESSING_FILE,
    course_model_config,
    ensure_trained_model,
    load_trained_model,
    weights_digest,
)
from medseg_helpers.inferers import predict_logits, predict_probabilities
from medseg_helpers.transforms.postprocess import SmallComponentFilter


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    with smoke_course_model(tmp_path_factory.mktemp("course_model")) as (model, config):
        yield model, config


def test_test_patients_are_held_out_of_training_and_validation(trained) -> None:
    model, _ = trained
    split = model.split
    assert split.test and not set(split.test) & (set(split.train) | set(split.val))
    assert model.class_names == ["background", "organ", "lesion"]


def test_prediction_is_on_the_source_grid_of_the_case(trained) -> None:
    model, _ = trained
    patient = model.split.test[0]
    pred, truth = model.predict(patient), model.read_label(patient)
    assert pred.array.shape == truth.array.shape and pred.array.dtype == np.uint8
    np.testing.assert_allclose(pred.spacing_mm, truth.spacing_mm)
    np.testing.assert_allclose(pred.origin_mm, truth.origin_mm)
    probs = model.predict(patient, probabilities=True).array
    assert probs.shape == (3, *truth.array.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)


def test_the_run_keeps_the_post_processing_rule_chosen_on_validation(trained) -> None:
    model, _ = trained
    saved = (model.run_dir / POSTPROCESSING_FILE).read_text(encoding="utf-8")
    assert SmallComponentFilter.from_json(saved) == model.postprocessing
    assert load_trained_model(model.run_dir, device="cpu").postprocessing == model.postprocessing
    patient = model.split.test[0]
    raw = model.predict(patient, postprocess=False)
    assert np.array_equal(model.predict(patient).array, model.postprocessing.apply(raw).array)
    # a rule is applied to every label map predict returns: one that removes any organ
    # component under 10^12 mm³ leaves no organ, and the raw argmax is still there
    strict = dataclasses.replace(model, postprocessing=SmallComponentFilter({1: 1e12}))
    assert not (strict.predict(patient).array == 1).any()
    assert np.array_equal(strict.predict(patient, postprocess=False).array, raw.array)


def test_a_finished_run_with_the_same_recipe_is_reused(trained, monkeypatch) -> None:
    model, config = trained
    import medseg_helpers.training.job as train_job

    monkeypatch.setattr(train_job, "train_from_config", lambda c: pytest.fail("retrained"))
    again = ensure_trained_model(config.updated(progress=True), device="cpu")
    for a, b in zip(model.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_run_that_must_train_starts_from_init_weights(trained, tmp_path: Path) -> None:
    model, config = trained
    # AdamW moves each weight by about lr per step: with lr 1e-12 the fine-tuned run must
    # still hold the init weights (a fresh initialisation would differ by ~0.1)
    tuned = ensure_trained_model(config.updated(max_epochs=1, lr=1e-12, run_dir=str(tmp_path)),
                                 device="cpu", init_weights=model.model.state_dict())
    for a, b in zip(model.model.parameters(), tuned.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_a_fine_tuned_run_is_reused_only_from_the_same_initial_weights(
        trained, tmp_path: Path, monkeypatch) -> None:
    import medseg_helpers.training.job as train_job

    model, config = trained
    recipe = config.updated(max_epochs=1, lr=1e-12, run_dir=str(tmp_path))
    start = model.model.state_dict()
    ensure_trained_model(recipe, device="cpu", init_weights=start)
    assert (tmp_path / INIT_WEIGHTS_FILE).read_text().strip() == weights_digest(start)
    calls = []
    real = train_job.train_from_config
    monkeypatch.setattr(train_job, "train_from_config",
                        lambda c, **kw: calls.append(c) or real(c, **kw))
    ensure_trained_model(recipe, device="cpu", init_weights={k: v.clone() for k, v in
                                                             start.items()})
    assert calls == []  # equal weights in other tensors: reused
    other = {k: v + 1 if v.is_floating_point() else v for k, v in start.items()}
    ensure_trained_model(recipe, device="cpu", init_weights=other)
    assert len(calls) == 1  # other starting weights: trained again
    ensure_trained_model(recipe, device="cpu")
    assert len(calls) == 2 and not (tmp_path / INIT_WEIGHTS_FILE).exists()  # from scratch


def test_weights_digest_reads_names_shapes_and_values() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    assert weights_digest(a) == weights_digest({k: v.clone() for k, v in a.items()})
    assert weights_digest(a) != weights_digest({"w": torch.tensor([1.0, 2.5]), "n": a["n"]})
    assert weights_digest(a) != weights_digest({"v": a["w"], "n": a["n"]})
    assert weights_digest(a) != weights_digest({"w": a["w"].reshape(2, 1), "n": a["n"]})


def test_init_weights_that_match_nothing_are_refused(trained, tmp_path: Path) -> None:
    _, config = trained
    with pytest.raises(ValueError, match="share no parameter name"):
        ensure_trained_model(config.updated(run_dir=str(tmp_path)),
                             init_weights={"encoder.0.weight": torch.zeros(1)})


def test_loading_an_empty_run_directory_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train a model there first"):
        load_trained_model(tmp_path)


def test_predict_logits_2d_runs_slice_by_slice_and_3d_by_sliding_window() -> None:
    net2d = TinyNet(num_classes=3).eval()
    volume = torch.randn(1, 5, 12, 12)
    logits = predict_logits(net2d, volume, 2, batch_size=2)
    assert logits.shape == (3, 5, 12, 12)
    torch.testing.assert_close(logits[:, 1], net2d(volume[:, 1][None])[0].detach())
    net3d = torch.nn.Conv3d(1, 2, 1).eval()  # pointwise: windows agree exactly
    whole = predict_logits(net3d, volume, 3)
    windowed = predict_logits(net3d, volume, 3, roi_size=(5, 8, 8), overlap=0.5)
    assert windowed.shape == (2, 5, 12, 12)
    torch.testing.assert_close(windowed, whole, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(predict_probabilities(net3d, volume, 3).sum(0),
                               torch.ones(5, 12, 12))


def test_predict_logits_rejects_a_batch() -> None:
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        predict_logits(TinyNet(num_classes=2), torch.randn(2, 1, 4, 8, 8), 2)


def test_recipe_is_the_profile_plus_the_course_choices_plus_overrides() -> None:
    full = course_model_config("full")
    assert (full.max_epochs, full.batch_size, full.lr, full.warmup_epochs) == (10, 16, 5e-3, 1)
    assert (full.crop_size, full.centre_ratios, full.samples_per_epoch) == (
        (64, 64), (1.0, 1.0, 2.0), 2048)
    assert (full.augmentation, full.val_every) == ("light", 2)
    assert full.model == "unet" and full.model_kwargs == {"base_channels": 8, "depth": 3}
    assert full.loss == "dice_ce" and full.loss_kwargs == {"include_background": False,
                                                           "batch": True}
    assert course_model_config("full", spatial_dims=3).crop_size is None  # crops are 2D
    smoke = course_model_config("smoke", max_epochs=3, model_kwargs={"depth": 2})
    assert smoke.max_epochs == 3 and smoke.model_kwargs == {"base_channels": 8, "depth": 2}
    smoke.loss_kwargs["batch"] = False  # each config owns its dicts
    assert course_model_config("smoke").loss_kwargs["batch"] is True
    assert "depth" not in course_model_config("smoke", model="monai_unet").model_kwargs
    with pytest.raises(ValueError, match="unknown profile 'laptop'"):
        course_model_config("laptop")
    with pytest.raises(ValueError, match=r"did you mean 'max_epochs'"):
        course_model_config("full", epochs=5)


def test_run_root_places_the_run_under_a_notebooks_run_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEDSEG_RUN_DIR", str(tmp_path / "env"))
    assert course_model_config("full").run_dir is None  # $MEDSEG_RUN_DIR/train-full-unet-2d
    mine = course_model_config("full", run_root=tmp_path / "mine")
    assert mine.run_dir == str(tmp_path / "mine" / "train-full-unet-2d")
    assert course_model_config("full", run_root=tmp_path / "mine",
                               spatial_dims=3).run_dir.endswith("train-full-unet-3d")
    explicit = course_model_config("full", run_root=tmp_path / "mine", run_dir="elsewhere")
    assert explicit.run_dir == "elsewhere"
