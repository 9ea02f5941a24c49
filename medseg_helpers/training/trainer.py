"""A plain-PyTorch training loop for 2D and 3D segmentation, readable in one sitting.

`Trainer` runs: for each epoch, one pass over the training batches (forward, loss, backward,
optional gradient clipping, optimiser step, scheduler step), then every ``val_every``
epochs a validation pass (argmax of the logits, mean foreground Dice, `DiceAccumulator`),
then logging (``history.csv``, TensorBoard), checkpoints (``last.pt`` every epoch,
``best.pt`` when the validation Dice improves) and callbacks. It stops early after
``patience`` epochs without improvement.

Batches are dicts ``{"image": (B, C, H, W) or (B, C, D, H, W) float32, "label": (B, 1, ...)
int64 in [0, num_classes)}``; the model maps the image to logits ``(B, num_classes, ...)``;
the loss is any ``loss_fn(logits, label) -> scalar``.

Reproducibility and exact resume: the checkpoint stores every RNG state (`capture_rng_state`)
besides model, optimiser, scheduler and scaler, and each epoch's data is seeded from
``(seed, epoch, rank)`` (`medseg_helpers.training.reseeding`), so a run interrupted after
epoch ``k`` and resumed from ``last.pt`` replays epochs ``k+1...`` exactly: on CPU,
bit-identical weights (tested). Validation is `medseg_helpers.training.validation`.

Mixed precision: ``amp`` (float16 on CUDA), ``cpu_bf16`` (see `TrainConfig`); float32 losses.
The run directory holds ``config.yaml``, ``history.csv``, ``checkpoints/{last,best}.pt``,
``tensorboard/`` and, at the end, ``metrics.json``. Under ``torchrun`` (see
`medseg_helpers.training.distributed`) only rank 0 writes them.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medseg_helpers.device import get_device
from medseg_helpers.inferers import SlidingWindowInferer
from medseg_helpers.training import distributed
from medseg_helpers.training.callbacks import Callback
from medseg_helpers.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model_weights,
    model_class_name,
    preserve_rng,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from medseg_helpers.training.data_checks import check_labels
from medseg_helpers.training.history import (
    HistoryWriter,
    summarise_history,
    write_config_yaml,
    write_metrics_json,
)
from medseg_helpers.training.reseeding import epoch_seed, seed_epoch
from medseg_helpers.training.validation import amp_autocast, amp_available, validate_model

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the weights of the failing step were not updated."""


class Trainer:
    """Train and validate a segmentation model; see the module docstring for the loop.

    Args:
        model: maps ``(B, C_in, *spatial)`` float32 to logits ``(B, num_classes, *spatial)``.
        loss_fn: ``loss_fn(logits, label) -> scalar tensor`` (mean over the batch).
        optimizer: built on ``model.parameters()`` (e.g. `schedules.build_optimizer`).
        train_loader: batches ``{"image", "label"}``; under DDP give it a
            ``DistributedSampler``.
        val_loader: validation batches (whole slices or volumes), or None.
        num_classes: classes including background.
        scheduler: from `schedules.build_scheduler`: stepped after every optimiser step,
            or ``ReduceLROnPlateau`` stepped with the validation Dice.
        max_epochs: epochs to train.
        device: default `get_device` (``cuda:LOCAL_RANK`` under DDP on GPUs).
        val_every: validate every this many epochs, and after the last one.
        patience: stop after this many epochs without a better validation Dice (None:
            never), checked after each validation.
        min_delta: improvement needed to count as better.
        grad_clip_norm: clip the global gradient norm to this (None: no clipping).
        amp: float16 mixed precision on CUDA. cpu_bf16: bfloat16 on a CPU with native bf16.
        sw_roi_size: validate with MONAI's sliding-window inference over windows of this
            spatial size when an image is larger than it (3D volumes); None: whole image.
        sw_batch_size: windows per forward pass.
        sw_overlap: overlap of neighbouring windows (Gaussian-weighted blending).
        val_inferer: ``val_inferer(model, image) -> logits`` used for validation instead of
            the above, e.g. `inferers.SliceBySliceInferer` to score a 2D model on whole
            ``(B, C, D, H, W)`` volumes (per-case Dice rather than per-slice).
        run_dir: where logs and checkpoints go; None writes nothing.
        config: plain dict stored in checkpoints and written as ``config.yaml``.
        class_names: names of the foreground classes for the ``dice_<name>`` columns
            (``num_classes - 1`` names, or ``num_classes`` with background first).
        seed: seeds the per-epoch DataLoader generators (`epoch_seed`).
        callbacks: `Callback` objects.
        progress: show tqdm bars (notebook widgets or terminal).
        tensorboard: log to ``run_dir/tensorboard`` when TensorBoard is installed.
        check_data: run `check_labels` on the first training batches before training.

    Attributes:
        epoch: epochs completed. global_step: optimiser steps taken. history: epoch rows.
        best_metric, best_epoch: best validation Dice so far and its epoch.
        should_stop: set True (e.g. by a callback) to stop after the current epoch.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor],
                 torch.Tensor], optimizer: torch.optim.Optimizer, train_loader: DataLoader,
                 val_loader: DataLoader | None = None, *, num_classes: int,
                 scheduler: Any = None, max_epochs: int = 10, device: str | torch.device | None
                 = None, val_every: int = 1, patience: int | None = None, min_delta: float = 0.0,
                 grad_clip_norm: float | None = None, amp: bool = True, cpu_bf16: bool = False,
                 sw_roi_size: Sequence[int] | None = None, sw_batch_size: int = 4,
                 sw_overlap: float = 0.25,
                 val_inferer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 run_dir: str | os.PathLike | None = None,
                 config: Mapping[str, Any] | None = None, class_names: Sequence[str] | None = None,
                 seed: int = 0, callbacks: Sequence[Callback] = (), progress: bool = True,
                 tensorboard: bool = True, check_data: bool = True) -> None:
        self.dist = distributed.get_dist_info()
        if device is None and self.dist.is_distributed and torch.cuda.is_available():
            device = f"cuda:{self.dist.local_rank}"
        self.device = torch.device(device) if device is not None else get_device()
        model.to(self.device)
        if self.dist.is_distributed and not isinstance(model, nn.parallel.DistributedDataParallel):
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler = optimizer, scheduler
        if isinstance(loss_fn, nn.Module):
            loss_fn.to(self.device)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.num_classes, self.max_epochs, self.val_every = num_classes, max_epochs, val_every
        self.patience, self.min_delta, self.grad_clip_norm = patience, min_delta, grad_clip_norm
        wanted = amp if self.device.type == "cuda" else cpu_bf16
        self.use_amp = wanted and amp_available(self.device)
        self.scaler = torch.amp.GradScaler(  # float16 on CUDA only: bf16 needs no scaling
            "cuda", enabled=self.use_amp and self.device.type == "cuda")
        if val_inferer is None and sw_roi_size:
            val_inferer = SlidingWindowInferer(sw_roi_size, sw_batch_size, sw_overlap)
        self.val_inferer = val_inferer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = dict(config or {})
        names = [str(n) for n in class_names] if class_names else []
        names = names[1:] if len(names) == num_classes else names
        self.class_names = names or [str(c) for c in range(1, num_classes)]
        if len(self.class_names) != num_classes - 1:
            raise ValueError(f"class_names {list(class_names or [])} do not match "
                             f"num_classes={num_classes}")
        self.seed, self.callbacks, self.check_data = seed, list(callbacks), check_data
        self.progress = progress and self.dist.is_main
        self.tensorboard = tensorboard
        self.epoch, self.global_step = 0, 0
        self.best_metric, self.best_epoch = -math.inf, 0
        self.history: list[dict[str, Any]] = []
        self.should_stop = False
        self._last_lr = optimizer.param_groups[0]["lr"]
        self._writer: HistoryWriter | None = None

    # ------------------------------------------------------------------ the loop
    def fit(self, resume_from: str | os.PathLike | None = None) -> dict[str, Any]:
        """Train until ``max_epochs``, early stopping or ``should_stop``.

        Args:
            resume_from: a checkpoint (e.g. ``run_dir/checkpoints/last.pt``) to continue from.

        Returns:
            The final metrics, also written to ``run_dir/metrics.json``: ``status``
            (``completed``, ``early_stopped``, ``stopped``), ``best_val_dice``,
            ``best_epoch``, ``best_dice_per_class``, ``last_val_dice``, ``epochs_completed``,
            ``global_step``, ``train_loss``, ``seconds``.

        Raises:
            TrainingDivergedError: NaN/inf loss (``metrics.json`` then says ``diverged``;
                checkpoints keep the last good epoch).
            torch.cuda.OutOfMemoryError: with advice on batch and patch size.
            ValueError: from `check_labels`.
        """
        if self.check_data:
            self._check_data()
        if resume_from is not None:
            self.load_state_dict(load_checkpoint(resume_from))
            logger.info("resumed from %s after epoch %d", resume_from, self.epoch)
        if self.dist.is_main and self.run_dir is not None:
            self._write_config()
            self._writer = HistoryWriter(self.run_dir, tensorboard=self.tensorboard)
        self._callback("on_train_begin", self)
        status, start = "completed", time.perf_counter()
        bar = tqdm(total=self.max_epochs, initial=self.epoch, desc="epochs", unit="epoch",
                   disable=not self.progress)
        try:
            for epoch in range(self.epoch + 1, self.max_epochs + 1):
                if self.should_stop or self._patience_exhausted():
                    status = "stopped" if self.should_stop else "early_stopped"
                    break
                logs = self._run_epoch(epoch)
                bar.update(1)
                bar.set_postfix(loss=f"{logs['train_loss']:.4f}",
                                best_dice=f"{self.best_metric:.3f}")
        except TrainingDivergedError as error:
            self._write_metrics("diverged", time.perf_counter() - start, error=str(error))
            raise
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.close()
        metrics = self._write_metrics(status, time.perf_counter() - start)
        self._callback("on_train_end", self, metrics)
        return metrics

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        start = time.perf_counter()
        seed_epoch(self.train_loader, epoch_seed(self.seed, epoch, self.dist.rank), epoch)
        logs: dict[str, Any] = {"epoch": epoch, "lr": math.nan,
                                "train_loss": self.train_epoch(epoch)}
        logs["lr"] = self._last_lr
        logs.update({"val_loss": math.nan, "val_dice": math.nan,
                     **{f"dice_{n}": math.nan for n in self.class_names}})
        improved = False
        if self.val_loader is not None and (epoch % self.val_every == 0
                                            or epoch == self.max_epochs):
            logs.update(self.validate())
            improved = logs["val_dice"] > self.best_metric + self.min_delta
            if improved:
                self.best_metric, self.best_epoch = logs["val_dice"], epoch
            if isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.step(logs["val_dice"])
        logs["seconds"] = time.perf_counter() - start
        self.epoch = epoch
        self.history.append(logs)
        if self.dist.is_main and self.run_dir is not None:
            self._writer.write(self.history)
            state = self.state_dict()
            save_checkpoint(state, self.run_dir / "checkpoints" / "last.pt")
            if improved:
                save_checkpoint(state, self.run_dir / "checkpoints" / "best.pt")
        logger.info("epoch %d: train_loss %.4f, val_dice %.4f, %.1f s", epoch,
                    logs["train_loss"], logs["val_dice"], logs["seconds"])
        self._callback("on_epoch_end", self, logs)
        return logs

    def train_epoch(self, epoch: int) -> float:
        """One pass over ``train_loader``; returns the mean loss (over ranks under DDP)."""
        self.model.train()
        total, count = 0.0, 0
        self._last_lr = self.optimizer.param_groups[0]["lr"]
        batches = tqdm(self.train_loader, desc=f"epoch {epoch}", leave=False, unit="batch",
                       disable=not self.progress)
        for batch in batches:
            loss = self.train_step(batch, epoch)
            total, count = total + loss, count + 1
            batches.set_postfix(loss=f"{loss:.4f}", refresh=False)
        summed = distributed.all_reduce_sum(torch.tensor([total, count], dtype=torch.float64))
        return float(summed[0] / summed[1]) if summed[1] > 0 else math.nan

    def train_step(self, batch: Mapping[str, torch.Tensor], epoch: int = 0) -> float:
        """Forward, loss, backward, clip, optimiser and scheduler step on one batch.

        Returns:
            The batch loss (a Python float).

        Raises:
            TrainingDivergedError: the loss is NaN/inf (checked before any weight changes).
        """
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with amp_autocast(self.use_amp, self.device):
                logits = self.model(image)
            loss = self.loss_fn(logits.float(), label)
            value = float(loss.detach())
            self._check_finite(value, epoch)
            self.scaler.scale(loss).backward()
            if self.grad_clip_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        except torch.cuda.OutOfMemoryError as error:
            raise torch.cuda.OutOfMemoryError(
                f"out of memory in a training step on {self.device} with an image batch of "
                f"shape {tuple(image.shape)} (B, C, *spatial): reduce batch_size or, in 3D, "
                "patch_size; or use a smaller model (base_channels) and keep amp=True. "
                f"Original error: {error}") from error
        self.global_step += 1
        self._last_lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None and not isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step()
        return value

    def _check_data(self) -> None:
        problem: ValueError | None = None
        with preserve_rng():  # looking at the data must not change what training sees
            try:
                check_labels(self.train_loader, self.num_classes)
            except ValueError as error:
                problem = error
        failed = torch.tensor([0.0 if problem is None else 1.0])
        if distributed.all_reduce_sum(failed, self.device).item() > 0:  # all ranks stop
            raise problem or ValueError("the training data failed check_labels on another rank")

    def _check_finite(self, value: float, epoch: int) -> None:
        bad = torch.tensor([0.0 if math.isfinite(value) else 1.0])
        if distributed.all_reduce_sum(bad, self.device).item() > 0:  # every rank stops
            what = value if not math.isfinite(value) else "not finite on another rank"
            raise TrainingDivergedError(
                f"loss is {what} at epoch {epoch}, step {self.global_step + 1} (lr "
                f"{self.optimizer.param_groups[0]['lr']:.3g}); this step was not applied and "
                "the checkpoints keep the last completed epoch. Try a lower lr, gradient "
                "clipping (grad_clip_norm), or check the images for extreme values.")

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss and Dice over ``val_loader`` (`validate_model`; summed over ranks under
        DDP): ``{"val_loss", "val_dice" (mean over foreground classes), "dice_<class>"...}``."""
        return validate_model(unwrap_model(self.model),  # no DDP collectives in evaluation
                              self.val_loader, self.loss_fn, self.num_classes,
                              self.class_names, self.device,
                              inferer=self.val_inferer, amp=self.use_amp,
                              progress=self.progress)

    # ----------------------------------------------------------- helpers, state
    def _patience_exhausted(self) -> bool:
        """Decided only right after a validation: with ``val_every > patience`` the run
        still reaches its next validation instead of stopping blind in between."""
        return (self.patience is not None and self.best_epoch > 0
                and self.epoch % self.val_every == 0
                and self.epoch - self.best_epoch >= self.patience)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; plain types for ``weights_only`` loading."""
        return {
            "model": unwrap_model(self.model).state_dict(),
            "model_class": model_class_name(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "global_step": self.global_step,
            "best_metric": self.best_metric, "best_epoch": self.best_epoch,
            "history": self.history, "rng": capture_rng_state(), "config": self.config,
        }

    def load_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """Restore a `state_dict` (raises `CheckpointMismatchError` for another model).

        In one process every RNG is restored (exact resume). Under DDP each rank instead
        reseeds from ``(seed, epoch, rank)``: weights and optimiser state resume exactly,
        random augmentation continues from new (reproducible) streams.
        """
        load_model_weights(self.model, checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None and checkpoint.get("scheduler") is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.global_step = int(checkpoint["epoch"]), int(checkpoint["global_step"])
        self.best_metric = float(checkpoint["best_metric"])
        self.best_epoch = int(checkpoint["best_epoch"])
        self.history = [dict(row) for row in checkpoint.get("history", [])]
        if self.dist.is_distributed:
            from medseg_helpers.device import seed_everything

            seed_everything(epoch_seed(self.seed, self.epoch) + self.dist.rank)
        else:
            restore_rng_state(checkpoint["rng"])

    def _write_config(self) -> None:
        if self.config:
            write_config_yaml(self.config, self.run_dir / "config.yaml")

    def _callback(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if callable(method):
                method(*args)

    def _write_metrics(self, status: str, seconds: float, error: str | None = None
                       ) -> dict[str, Any]:
        metrics = {"status": status, **summarise_history(self.history, self.best_epoch,
                                                         self.class_names),
                   "global_step": self.global_step, "seconds": seconds,
                   "world_size": self.dist.world_size}
        if error:
            metrics["error"] = error
        if self.dist.is_main and self.run_dir is not None:
            write_metrics_json(metrics, self.run_dir / "metrics.json")
        return metrics
