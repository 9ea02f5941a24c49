"""Trainer, schedules, logging, failure paths, TrainConfig, train_from_config and DDP (gloo)."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _training_helpers import DiscDataset, TinyNet, ce_loss, flat_params, make_loaders
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    PolynomialLR,
    SequentialLR,
    StepLR,
)
from torch.utils.data import DataLoader

from medseg_helpers.training.callbacks import Callback
from medseg_helpers.training.checkpoint import load_checkpoint
from medseg_helpers.training.config import TrainConfig
from medseg_helpers.training.data_checks import check_labels
from medseg_helpers.training.history import plot_history
from medseg_helpers.training.reseeding import epoch_seed
from medseg_helpers.training.schedules import (
    build_optimizer,
    build_scheduler,
    cosine_warmup_factor,
    lr_curve,
    plot_lr_curve,
    poly_factor,
    step_factor,
)
from medseg_helpers.training.trainer import Trainer, TrainingDivergedError
from medseg_helpers.training.validation import amp_autocast

HELPERS = Path(__file__).with_name("_training_helpers.py")


def _trainer(run_dir: Path | None = None, *, model=None, loss=ce_loss, lr: float = 1e-2,
             loaders=None, optimizer: str = "adam", **kw) -> Trainer:
    torch.manual_seed(0)
    model = model or TinyNet()
    train_loader, val_loader = loaders or make_loaders(batch_size=8, num_items=16)
    return Trainer(model, loss, build_optimizer(model.parameters(), optimizer, lr=lr),
                   train_loader, val_loader, num_classes=2, device="cpu", run_dir=run_dir,
                   progress=False, tensorboard=False, **kw)


# ------------------------------------------------------------------------------ learning


def test_learns_bright_discs_to_dice_above_0_9() -> None:
    # 48 images of 24x24, batch 8: 6 steps per epoch; reaches ~0.95 by epoch 2-4
    trainer = _trainer(loaders=make_loaders(batch_size=8, num_items=48, size=24), lr=2e-2,
                       max_epochs=6)
    metrics = trainer.fit()
    assert metrics["best_val_dice"] > 0.9, trainer.history
    assert metrics["status"] == "completed" and metrics["global_step"] == 6 * 6
    assert not trainer.use_amp and not trainer.scaler.is_enabled()  # no AMP on CPU by default


def test_cpu_mixed_precision_is_bf16_autocast_and_only_where_native(monkeypatch) -> None:
    from medseg_helpers import device as device_module
    from medseg_helpers.training import validation

    conv, x = torch.nn.Conv2d(1, 2, 3), torch.randn(1, 1, 8, 8)
    with amp_autocast(True, "cpu"):
        assert conv(x).dtype == torch.bfloat16
    with amp_autocast(False, "cpu"):
        assert conv(x).dtype == torch.float32
    assert amp_autocast(True, "cuda").fast_dtype == torch.float16
    for features, native in (([], False), (["avx2", "avx512f"], False),
                             (["avx512_bf16"], True), (["amx_bf16"], True)):
        monkeypatch.setattr(device_module, "cpu_description",
                            lambda f=features: {"model": "test", "features": f})
        assert validation.amp_available(torch.device("cpu")) is native
    assert validation.amp_available(torch.device("cuda"))
    assert not validation.amp_available(torch.device("mps"))


def test_a_bf16_step_keeps_float32_weights_and_a_float32_loss(monkeypatch) -> None:
    from medseg_helpers.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "amp_available", lambda device: True)
    assert not _trainer(max_epochs=1).use_amp  # opt-in: cpu_bf16=True
    seen = []
    trainer = _trainer(loss=lambda logits, label: (seen.append(logits.dtype),
                                                   ce_loss(logits, label))[1], max_epochs=1,
                       cpu_bf16=True)
    assert trainer.use_amp and not trainer.scaler.is_enabled()
    metrics = trainer.fit()
    assert metrics["status"] == "completed" and math.isfinite(trainer.history[-1]["train_loss"])
    assert set(seen) == {torch.float32}  # logits cast back before the loss
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_3d_validation_uses_sliding_window_when_volumes_exceed_the_roi(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import monai.inferers

    calls = []
    original = monai.inferers.sliding_window_inference

    def spy(inputs, roi_size, *args, **kwargs):
        calls.append((tuple(inputs.shape), tuple(roi_size)))
        return original(inputs, roi_size, *args, **kwargs)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", spy)
    loaders = make_loaders(batch_size=2, num_items=4, spatial_dims=3, size=16)
    trainer = _trainer(model=TinyNet(spatial_dims=3), loaders=loaders, max_epochs=1,
                       sw_roi_size=(8, 8, 8), sw_batch_size=2)
    metrics = trainer.fit()
    assert calls and calls[0] == ((8, 1, 16, 16, 16), (8, 8, 8))  # val batch 8
    assert 0.0 <= metrics["last_val_dice"] <= 1.0


def test_slice_by_slice_inferer_scores_a_2d_model_on_volumes() -> None:
    from medseg_helpers.inferers import SliceBySliceInferer

    model, volume = TinyNet(num_classes=3).eval(), torch.randn(2, 1, 5, 12, 12)
    with torch.no_grad():
        logits = SliceBySliceInferer(batch_size=3)(model, volume)  # 10 slices in chunks of 3
        expected = torch.stack([model(volume[:, :, z]) for z in range(5)], dim=2)
    assert logits.shape == (2, 3, 5, 12, 12)
    assert torch.allclose(logits, expected, atol=1e-6)


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    # lr ~ 0: the Dice of epoch 1 is never beaten, so with patience 2 the run stops after
    # epoch 3 (3 - 1 >= 2) instead of running 10 epochs.
    trainer = _trainer(tmp_path, lr=1e-12, max_epochs=10, patience=2)
    metrics = trainer.fit()
    assert metrics["status"] == "early_stopped"
    assert metrics["epochs_completed"] == 3 and metrics["best_epoch"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "early_stopped"


def test_early_stopping_waits_for_the_next_validation() -> None:
    # val_every=2: validations after epochs 2 and 4. Patience 1 is exhausted at epoch 3,
    # but there is nothing new to judge then; the run stops after epoch 4's validation.
    metrics = _trainer(lr=1e-12, max_epochs=10, patience=1, val_every=2).fit()
    assert metrics["status"] == "early_stopped"
    assert (metrics["epochs_completed"], metrics["best_epoch"]) == (4, 2)


def test_callbacks_see_each_epoch_and_can_stop_training() -> None:
    class StopAfterTwo(Callback):
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
            self.epochs.append(logs["epoch"])
            trainer.should_stop = logs["epoch"] == 2

    callback = StopAfterTwo()
    metrics = _trainer(max_epochs=5, callbacks=[callback]).fit()
    assert callback.epochs == [1, 2] and metrics["status"] == "stopped"


def test_gradient_clipping_bounds_the_update() -> None:
    # SGD with lr 1 and no momentum: the update equals the clipped gradient, norm <= 1e-3.
    trainer = _trainer(optimizer="sgd", lr=1.0, grad_clip_norm=1e-3)
    trainer.optimizer = build_optimizer(trainer.model.parameters(), "sgd", lr=1.0, momentum=0)
    before = flat_params(trainer.model)
    trainer.train_step(next(iter(trainer.train_loader)))
    assert torch.linalg.vector_norm(flat_params(trainer.model) - before) <= 1e-3 * (1 + 1e-5)


# ----------------------------------------------------------------------------- schedules


def test_cosine_with_warmup_by_hand() -> None:
    # warm-up W=4: (s + 1) / 4 -> 0.25, 0.5, 0.75, 1.0 for s = 0..3
    assert [cosine_warmup_factor(s, 12, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # then t = (s - 4) / (12 - 4): s=8 -> t=0.5 -> (1 + cos(pi/2)) / 2 = 0.5; s=12 -> 0
    assert cosine_warmup_factor(8, 12, 4) == pytest.approx(0.5)
    assert cosine_warmup_factor(12, 12, 4) == pytest.approx(0.0)
    # min_factor 0.1 at t=0.5: 0.1 + 0.9 * 0.5 = 0.55
    assert cosine_warmup_factor(8, 12, 4, min_factor=0.1) == pytest.approx(0.55)


def test_step_and_poly_by_hand() -> None:
    # step: gamma ** (s // 10): s=9 -> 1, s=10 -> 0.5, s=25 -> 0.25
    assert [step_factor(s, 10, 0.5) for s in (9, 10, 25)] == [1.0, 0.5, 0.25]
    # poly: (1 - 50/100) ** 0.9 = 0.5 ** 0.9 = 0.5359; at the end 0
    assert poly_factor(50, 100) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(100, 100) == 0.0


def test_lr_curve_is_what_the_scheduler_applies() -> None:
    # base 0.1, cosine, 10 steps, 2 warm-up: 0.05, 0.1, then 0.1 * (1 + cos(pi t)) / 2
    curve = lr_curve("cosine", 0.1, total_steps=10, warmup_steps=2)
    assert curve[:2] == pytest.approx([0.05, 0.1])
    assert curve[6] == pytest.approx(0.1 * 0.5)  # s=6: t = 4/8 = 0.5
    assert lr_curve("step", 1.0, total_steps=6, step_size=2, gamma=0.1) == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    # plateau (mode max, patience 1, factor 0.5): Dice 0.5 then no improvement twice
    # -> the second bad validation exceeds patience and halves the rate
    assert lr_curve("plateau", 1.0, total_steps=4, metrics=[0.5, 0.5, 0.5, 0.5],
                    plateau_patience=1) == [1.0, 1.0, 1.0, 0.5]


def _torch_curve(make: Callable[[torch.optim.Optimizer], LRScheduler], lr: float,
                 steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimiser steps under a torch scheduler."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler, rates = make(optimizer), []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(("name", "kwargs", "make"), [
    ("poly", {"power": 0.9}, lambda opt: PolynomialLR(opt, total_iters=40, power=0.9)),
    ("poly", {"power": 2.0}, lambda opt: PolynomialLR(opt, total_iters=40, power=2.0)),
    ("step", {"step_size": 7, "gamma": 0.5}, lambda opt: StepLR(opt, step_size=7, gamma=0.5)),
    ("cosine", {}, lambda opt: CosineAnnealingLR(opt, T_max=40)),
    ("cosine", {"min_factor": 0.1},
     lambda opt: CosineAnnealingLR(opt, T_max=40, eta_min=0.1 * 0.3)),
    ("cosine", {"warmup_steps": 5, "min_factor": 0.1}, lambda opt: SequentialLR(opt, [
        LinearLR(opt, start_factor=1 / 5, end_factor=1.0, total_iters=4),
        CosineAnnealingLR(opt, T_max=35, eta_min=0.1 * 0.3)], milestones=[5])),
])
def test_schedules_match_torch_lr_schedulers(name, kwargs, make) -> None:
    # base lr 0.3, a 40-step run: every step's rate as torch's own schedulers set it
    ours = lr_curve(name, 0.3, total_steps=40, **kwargs)
    assert ours == pytest.approx(_torch_curve(make, 0.3, 40), rel=1e-6, abs=1e-12)


def test_trainer_steps_the_scheduler_once_per_batch() -> None:
    trainer = _trainer(max_epochs=1)  # 16 items / batch 8 = 2 steps
    trainer.scheduler = build_scheduler(trainer.optimizer, "step", total_steps=2, step_size=1,
                                        gamma=0.5)
    trainer.fit()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    assert trainer.history[0]["lr"] == pytest.approx(1e-2 * 0.5)  # lr of the last step


def test_plot_lr_curve_returns_a_figure() -> None:
    figure = plot_lr_curve(total_steps=50)
    assert len(figure.axes[0].lines) == 4


# ------------------------------------------------------------------------ failure paths


class _NaNAfter:
    """Cross-entropy that returns NaN from the ``bad_call``-th call on."""

    def __init__(self, bad_call: int) -> None:
        self.calls, self.bad_call = 0, bad_call

    def __call__(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = ce_loss(logits, label)
        return loss * math.nan if self.calls >= self.bad_call else loss


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
        tmp_path: Path) -> None:
    # 2 training steps per epoch and 1 validation batch: calls 1-2 train epoch 1, call 3
    # validates it, call 4 is the first step of epoch 2 (global step 3).
    trainer = _trainer(tmp_path, loss=_NaNAfter(4), max_epochs=3)
    last = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 2, step 3 \(lr 0.01"):
        trainer.fit()
    checkpoint = load_checkpoint(last)
    assert checkpoint["epoch"] == 1
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 1
    saved = torch.cat([t.reshape(-1) for t in checkpoint["model"].values()])
    assert torch.equal(saved, flat_params(trainer.model))  # the bad step was not applied
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


def test_cuda_out_of_memory_is_reraised_with_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer(max_epochs=1)

    def forward(image: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer.model, "forward", forward)
    with pytest.raises(torch.cuda.OutOfMemoryError,
                       match=r"shape \(8, 1, 32, 32\).*reduce batch_size or, in 3D, patch_size"):
        trainer.fit()


def test_dataset_without_foreground_fails_before_training() -> None:
    empty = DataLoader(DiscDataset(16, empty=True), batch_size=8)
    trainer = _trainer(loaders=(empty, empty), max_epochs=1)
    with pytest.raises(ValueError, match="no labelled foreground in the first 2 batches"):
        trainer.fit()
    assert trainer.global_step == 0


def test_unexpected_label_values_are_reported() -> None:
    dataset = DiscDataset(8)
    dataset.labels[3, 0, 0, 0] = 5
    with pytest.raises(ValueError, match=r"label values \[5\] outside \[0, 2\)"):
        check_labels(DataLoader(dataset, batch_size=4), num_classes=2)


# --------------------------------------------------------------------------- run outputs


def test_run_directory_holds_csv_tensorboard_config_and_metrics(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    trainer = _trainer(tmp_path, max_epochs=2, val_every=2, config={"model": "tiny", "lr": 0.01},
                       class_names=["background", "disc"])
    trainer.tensorboard = True
    metrics = trainer.fit()
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,lr,train_loss,val_loss,val_dice,dice_disc,seconds"
    assert lines[1].split(",")[3:6] == ["", "", ""]  # epoch 1 was not validated
    assert len(lines) == 3 and lines[2].startswith("2,")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "model: tiny" in (tmp_path / "config.yaml").read_text()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["best_epoch"] == 2 and saved["best_dice_per_class"]["disc"] == pytest.approx(
        metrics["best_val_dice"])
    figure = plot_history(tmp_path)
    assert len(figure.axes) == 3
    assert [t.get_text() for t in figure.axes[1].get_legend().get_texts()] == [
        "mean foreground", "disc"]  # readable names, not the history's columns
    assert all(float(tick).is_integer() for tick in figure.axes[0].get_xticks())  # epochs


def test_epoch_seed_depends_on_seed_epoch_and_rank() -> None:
    seeds = {epoch_seed(0, 1), epoch_seed(0, 2), epoch_seed(1, 1), epoch_seed(0, 1, rank=1)}
    assert len(seeds) == 4 and epoch_seed(0, 1) == epoch_seed(0, 1)


# --------------------------------------------------------------------------- TrainConfig


def test_config_from_profile_with_overrides_round_trips_through_yaml(tmp_path: Path) -> None:
    config = TrainConfig.from_profile("full", spatial_dims=3, lr=3e-4, optimizer="sgd")
    assert (config.max_epochs, config.batch_size, config.patch_size) == (16, 16, (32, 64, 64))
    assert config.model_kwargs == {"base_channels": 8} and config.lr == 3e-4
    assert config.crop_size is None  # the profile's crops are for 2D training
    config.to_yaml(tmp_path / "run.yaml")
    assert TrainConfig.from_yaml(tmp_path / "run.yaml") == config
    monai = TrainConfig.from_profile("smoke", model="monai_unet")
    assert monai.model_kwargs["channels"] == [8, 16, 32, 64]


def test_full_profile_compares_in_bf16_but_trains_the_course_model_in_float32() -> None:
    from medseg_helpers.course.model import course_model_config

    assert TrainConfig.from_profile("full").cpu_bf16 is True  # the many short trainings
    assert TrainConfig.from_profile("smoke").cpu_bf16 is False
    assert course_model_config("full").cpu_bf16 is False  # bf16 cost it lesion Dice
    assert course_model_config("full", cpu_bf16=True).cpu_bf16 is True


@pytest.mark.parametrize(("overrides", "match"), [
    ({"learning_rate": 0.1}, r"'learning_rate' \(did you mean 'lr'"),
    ({"optimizer": "adagrad"}, "optimizer 'adagrad' not in"),
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"spatial_dims": 3, "patch_size": (32, 32)}, r"patch_size \(32, 32\) must have 3 values"),
])
def test_config_rejects_mistakes(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_profile("smoke", **overrides)


def test_config_old_out_channels_key_is_an_error_naming_num_classes(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("out_channels: 3\n")
    with pytest.raises(ValueError, match=r"'out_channels' \(did you mean 'num_classes'"):
        TrainConfig.from_yaml(tmp_path / "run.yaml")
    with pytest.raises(ValueError, match=r"'out_channels' \(did you mean 'num_classes'"):
        TrainConfig().updated(out_channels=3)
    assert TrainConfig.from_dict({"num_classes": 3}).num_classes == 3


def test_config_from_yaml_coerces_what_pyyaml_reads_as_strings(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e-3 without a dot as the string '1e-3'
    (tmp_path / "run.yaml").write_text("lr: 1e-3\nweight_decay: 1e-5\nmax_epochs: '4'\n"
                                       "spatial_dims: 3\npatch_size: [8, 16, 16]\n"
                                       "grad_clip_norm: 1\ndata_dir: null\n")
    config = TrainConfig.from_yaml(tmp_path / "run.yaml")
    assert (config.lr, config.weight_decay, config.max_epochs) == (0.001, 1e-05, 4)
    assert type(config.lr) is float and type(config.max_epochs) is int
    assert config.patch_size == (8, 16, 16) and config.grad_clip_norm == 1.0
    assert type(config.grad_clip_norm) is float and config.data_dir is None
    assert TrainConfig(run_dir=tmp_path).run_dir == str(tmp_path)  # paths become strings


@pytest.mark.parametrize(("values", "message"), [
    ({"lr": "abc"}, "lr: expected a number, got 'abc'"),
    ({"lr": True}, "lr: expected a number, got True"),
    ({"max_epochs": 2.5}, "max_epochs: expected an integer, got 2.5"),
    ({"max_epochs": "ten"}, "max_epochs: expected an integer, got 'ten'"),
    ({"amp": "yes"}, "amp: expected true or false, got 'yes'"),
    ({"model": 3}, "model: expected a string, got 3"),
    ({"patch_size": [8, "x", 8]}, "patch_size: expected a list of integers, got [8, 'x', 8]"),
    ({"model_kwargs": [1]}, "model_kwargs: expected a mapping, got [1]"),
])
def test_config_names_the_field_whose_value_has_the_wrong_type(values: dict,
                                                               message: str) -> None:
    with pytest.raises(ValueError, match=f"^invalid TrainConfig: {re.escape(message)}$"):
        TrainConfig.from_dict(values)


@pytest.mark.slow
def test_train_from_config_runs_the_smoke_profile_end_to_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg_helpers.training.job import train_from_config

    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path / "data"))
    config = TrainConfig.from_profile("smoke", run_dir=str(tmp_path / "run"), max_epochs=1,
                                      progress=False, tensorboard=False,
                                      model_kwargs={"depth": 2})
    metrics = train_from_config(config)
    assert metrics["status"] == "completed" and metrics["class_names"] == ["organ", "lesion"]
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "history.csv", "metrics.json",
                                               "checkpoints"}
    assert TrainConfig.from_yaml(run / "config.yaml") == config
    resumed = train_from_config(config.updated(resume=True, max_epochs=2))
    assert resumed["epochs_completed"] == 2 and resumed["global_step"] == 2 * metrics[
        "global_step"]


@pytest.mark.slow
def test_train_from_config_trains_on_class_centred_crops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg_helpers.training.job import build_data, train_from_config

    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path / "data"))
    config = TrainConfig.from_profile("smoke", run_dir=str(tmp_path / "run"), max_epochs=1,
                                      crop_size=(32, 32), centre_ratios=(0, 0, 1),
                                      samples_per_epoch=12, batch_size=4, augmentation=None,
                                      progress=False, tensorboard=False,
                                      model_kwargs={"depth": 2})
    data = build_data(config)
    batch = next(iter(data.train_loader))
    assert batch["image"].shape == (4, 1, 32, 32) and len(data.train_loader) == 3
    # every crop is centred on a lesion pixel unless the lesion lies at the border
    assert all((label == 2).any() for label in batch["label"])
    metrics = train_from_config(config)
    assert metrics["global_step"] == 3  # 12 crops in batches of 4
    assert TrainConfig.from_yaml(tmp_path / "run" / "config.yaml") == config


def test_config_crop_settings_round_trip_and_are_checked(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("crop_size: [64, 64]\ncentre_ratios: [1, 1, 2.5]\n")
    config = TrainConfig.from_yaml(tmp_path / "run.yaml")
    assert config.crop_size == (64, 64) and config.centre_ratios == (1.0, 1.0, 2.5)
    config.to_yaml(tmp_path / "again.yaml")
    assert TrainConfig.from_yaml(tmp_path / "again.yaml") == config
    with pytest.raises(ValueError, match=r"crop_size \(8, 8, 8\) is for 2D training"):
        TrainConfig(crop_size=(8, 8, 8))
    with pytest.raises(ValueError, match="samples_per_epoch must be > 0"):
        TrainConfig(samples_per_epoch=0)


# ---------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_single_process(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes (gloo), 2 items per rank per step, no shuffling, against one
    process with batch 4 over the same items: DDP averages the two ranks' mean-loss gradients,
    which is the gradient of the 4-item mean loss, so weights agree up to float rounding."""
    from _training_helpers import train_reference

    result_file = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HELPERS.parent), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(HELPERS),
               "--steps", "3", "--epochs", "2", "--run-dir", str(tmp_path / "ddp"),
               "--result", str(result_file)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ddp = json.loads(result_file.read_text())
    single = train_reference(world_size=2, steps_per_rank_batch=3, epochs=2,
                             out=str(tmp_path / "single"))
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert torch.allclose(torch.tensor(ddp["params"]), torch.tensor(single["params"]), atol=1e-5)
    assert ddp["val_dice"] == pytest.approx(single["val_dice"], abs=1e-6)
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
    assert (tmp_path / "ddp" / "checkpoints" / "last.pt").is_file()
