"""Checkpoints: weights_only loading, RNG capture, atomic writes, exact resume, clear errors."""

from __future__ import annotations

import errno
import io
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _training_helpers import AugmentedDiscs, TinyNet, ce_loss, flat_params, make_loaders
from torch import nn
from torch.utils.data import DataLoader

from medseg_helpers.device import seed_everything
from medseg_helpers.training.callbacks import Callback
from medseg_helpers.training.checkpoint import (
    CheckpointMismatchError,
    CheckpointReadError,
    capture_rng_state,
    load_checkpoint,
    load_model_weights,
    model_class_name,
    preserve_rng,
    restore_rng_state,
    save_checkpoint,
    to_plain,
    unwrap_model,
)
from medseg_helpers.training.schedules import build_optimizer, build_scheduler
from medseg_helpers.training.trainer import Trainer


def _trainer(run_dir: Path | None, max_epochs: int = 2, model: nn.Module | None = None,
             loaders: tuple[DataLoader, DataLoader] | None = None, **kw) -> Trainer:
    torch.manual_seed(0)
    model = model or TinyNet()
    train_loader, val_loader = loaders or make_loaders(batch_size=8, num_items=16)
    optimizer = build_optimizer(model.parameters(), "adamw", lr=1e-2, weight_decay=1e-4)
    scheduler = build_scheduler(optimizer, "cosine", total_steps=max_epochs * len(train_loader),
                                warmup_steps=2)
    return Trainer(model, ce_loss, optimizer, train_loader, val_loader, num_classes=2,
                   scheduler=scheduler, max_epochs=max_epochs, device="cpu", run_dir=run_dir,
                   progress=False, tensorboard=False, config={"model": "tiny", "width": 8},
                   **kw)


def _roundtrip_weights_only(obj) -> object:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_checkpoint_loads_with_weights_only_and_holds_everything(tmp_path: Path) -> None:
    _trainer(tmp_path, max_epochs=1).fit()
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "model_class", "optimizer", "scheduler", "scaler", "epoch", "global_step",
            "best_metric", "best_epoch", "history", "rng", "config"} <= checkpoint.keys()
    assert set(checkpoint["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 2  # 16 items / batch 8
    assert checkpoint["model_class"] == "_training_helpers.TinyNet"
    assert checkpoint["config"] == {"model": "tiny", "width": 8}
    assert sorted(checkpoint["optimizer"]["state"]) == list(range(8))  # int keys, not "0"
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize("value", [np.random.get_state(), np.zeros(3), np.float64(1.5),  # noqa: NPY002
                                   Path("/tmp")])
def test_numpy_values_and_paths_need_conversion_for_weights_only(value) -> None:
    with pytest.raises(Exception, match="Weights only load failed"):
        _roundtrip_weights_only({"value": value})
    _roundtrip_weights_only({"value": to_plain(value)})  # converted: loads


def test_to_plain_rejects_unknown_objects() -> None:
    with pytest.raises(TypeError, match="cannot store object"):
        to_plain({"x": object()})


def test_captured_rng_state_restores_every_generator() -> None:
    state = _roundtrip_weights_only(capture_rng_state())  # must survive weights_only too
    first = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first  # noqa: NPY002


def test_preserve_rng_leaves_the_streams_untouched() -> None:
    state = capture_rng_state()
    expected = torch.rand(3)
    restore_rng_state(state)
    with preserve_rng():
        torch.rand(100)
        np.random.rand(10)  # noqa: NPY002
    assert torch.equal(torch.rand(3), expected)


class _InterruptAfter(Callback):
    """Simulates a crash right after epoch ``epoch``'s checkpoint was written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer, logs: dict) -> None:
        if logs["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("own_generator", [True, False], ids=["loader-generator", "global-rng"])
def test_interrupted_and_resumed_run_reaches_identical_weights(tmp_path: Path,
                                                                own_generator: bool) -> None:
    """A run killed after epoch 2 of 4 and resumed from last.pt ends bit-identical to one
    uninterrupted run: same data order (loader generator re-seeded per epoch, or the global
    torch RNG restored), same augmentation (global RNGs restored), same dropout masks, same
    optimiser moments and scheduler position."""

    def loaders() -> tuple[DataLoader, DataLoader]:
        generator = torch.Generator().manual_seed(5) if own_generator else None
        train = DataLoader(AugmentedDiscs(24, seed=1), batch_size=8, shuffle=True,
                           generator=generator)
        return train, make_loaders(num_items=16)[1]

    def run(run_dir: Path, callbacks=(), resume=None) -> Trainer:
        seed_everything(0)  # same initial weights and augmentation in both runs
        trainer = _trainer(run_dir, max_epochs=4, model=TinyNet(dropout=0.2),
                           loaders=loaders(), callbacks=callbacks, val_every=2)
        trainer.fit(resume_from=resume)
        return trainer

    reference = run(tmp_path / "uninterrupted")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "interrupted", callbacks=[_InterruptAfter(2)])
    seed_everything(123)  # a new process starts from other RNG states
    resumed = run(tmp_path / "interrupted",
                  resume=tmp_path / "interrupted" / "checkpoints" / "last.pt")
    assert resumed.global_step == reference.global_step == 12
    assert torch.equal(flat_params(resumed.model), flat_params(reference.model))
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in
                                                          reference.history]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, tmp_path / "last.pt")
    before = path.read_bytes()

    def half_written_save(obj, file, *args, **kwargs):
        Path(file).write_bytes(b"truncated")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_written_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_wrong_width_error_lists_shapes(tmp_path: Path) -> None:
    _trainer(tmp_path, max_epochs=1).fit()
    with pytest.raises(CheckpointMismatchError) as info:
        load_model_weights(TinyNet(width=4), tmp_path / "checkpoints" / "best.pt")
    message = str(info.value)
    assert "'_training_helpers.TinyNet' (config model='tiny')" in message
    assert "body.0.weight: checkpoint (8, 1, 3, 3) vs model (4, 1, 3, 3)" in message


def test_other_architecture_error_names_both_and_lists_keys(tmp_path: Path) -> None:
    _trainer(tmp_path, max_epochs=1).fit()
    other = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
    with pytest.raises(CheckpointMismatchError,
                       match=r"holds '_training_helpers.TinyNet'.*the model is "
                             r"'torch.nn.modules.container.Sequential'.*2 missing \(e.g. 0.weight"
                             r".*unexpected \(e.g. body.0.weight"):
        load_model_weights(other, tmp_path / "checkpoints" / "last.pt")


def test_load_checkpoint_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Path("/etc")}, path)  # a non-allowed global
    with pytest.raises(CheckpointReadError, match="cannot be loaded with weights_only=True"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_an_empty_last_pt_names_the_file_and_points_to_best_pt(tmp_path: Path) -> None:
    """What a power loss during a save used to leave: a 0-byte last.pt."""
    last = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, last.with_name("best.pt"))
    last.write_bytes(b"")
    with pytest.raises(CheckpointReadError, match=_exactly(
            f"{last} is empty (0 bytes): a save was interrupted; delete it to start over, "
            "or copy best.pt over it to resume from the best epoch")):
        load_checkpoint(last)


def test_an_empty_checkpoint_without_best_pt_says_to_save_it_again(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointReadError, match=_exactly(
            f"{path} is empty (0 bytes): a save was interrupted; delete it and save it again")):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [1, 10, 0.5, -22, -1], ids=lambda k: f"keep-{k}")
def test_a_truncated_checkpoint_is_one_clear_line(tmp_path: Path, keep: float) -> None:
    """Cut anywhere, a checkpoint gives this error: never EOFError, IndexError, or the safe
    loader's "Weights only load failed" (what the first byte alone gives)."""
    path = save_checkpoint({"model": {"w": torch.ones(100)}}, tmp_path / "best.pt")
    data = path.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:size])
    with pytest.raises(CheckpointReadError, match=_exactly(
            f"{path} is truncated or damaged ({size} bytes, not a complete PyTorch file): "
            "a save or copy was interrupted; delete it and save it again")):
        load_checkpoint(path)


def test_an_unreadable_checkpoint_says_permission_denied(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint({"model": {}}, tmp_path / "last.pt")

    def denied(file, *args, **kwargs):  # what open() raises for a file of another user
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(torch, "load", denied)  # chmod 000 does not stop root (CI, Docker)
    with pytest.raises(CheckpointReadError,
                       match=_exactly(f"{path} cannot be read: permission denied")):
        load_checkpoint(path)


def test_resuming_from_an_empty_last_pt_fails_with_the_clear_error(tmp_path: Path) -> None:
    """The path of ``medseg train --resume``: `Trainer.fit` loads ``checkpoints/last.pt``;
    the error is a ValueError, which the command line prints as one line."""
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir()
    last.write_bytes(b"")
    with pytest.raises(ValueError, match=_exactly(
            f"{last} is empty (0 bytes): a save was interrupted; delete it to start the run "
            "over")):
        _trainer(tmp_path, max_epochs=1).fit(resume_from=last)


@pytest.mark.skipif(os.name == "nt", reason="writer processes are not checked on Windows")
def test_saving_removes_the_temporaries_of_killed_saves(tmp_path: Path) -> None:
    """15 killed saves used to leave 15 hidden ``.last.*.tmp.pt`` files (800 MB) for good."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # a writer that is gone
    child.wait()
    killed = tmp_path / f".last.{child.pid}.abcd1234.tmp.pt"
    in_progress = tmp_path / f".last.{os.getppid()}.efgh5678.tmp.pt"  # its writer still runs
    for leftover in (killed, in_progress):
        leftover.write_bytes(b"partial")
        os.utime(leftover, (time.time() - 120, time.time() - 120))
    save_checkpoint({"model": {"w": torch.ones(2)}}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([in_progress.name, "last.pt"])


def test_wrappers_are_unwrapped_for_saving_and_loading() -> None:
    model = TinyNet()
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    assert model_class_name(wrapped) == "_training_helpers.TinyNet"
    load_model_weights(wrapped, {"model": TinyNet().state_dict()})
