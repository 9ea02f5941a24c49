"""One training run from a `TrainConfig`: data, model, loss, optimiser, `Trainer`, outputs.

`train_from_config` is what ``medseg train``, the papermill-run notebook and ``torchrun``
call. It glues the other modules together and holds no training logic of its own:

1. dataset folder: ``config.data_dir``, else the profile's synthetic phantoms (generated)
   or Decathlon task (downloaded, `course_data`);
2. patient-level split (`splits.split_patients`), then 2D slices from a memory-mapped
   cache (`datasets.SliceDataset`), class-centred 2D crops of them when ``crop_size`` is
   set (`crop_dataset.SliceCropDataset`), or 3D patches (`patch_dataset.PatchDataset3D`). Validation
   always scores whole volumes, one Dice per patient and class (as nnU-Net and the final
   evaluation do): a 2D model runs slice by slice (`SliceBySliceInferer`), a 3D model by
   sliding window. Per-slice Dice would be much lower and noisier for small structures: a
   single false-positive pixel on a lesion-free slice scores that slice 0;
3. `models.build_model`, a loss from `LOSSES`, `schedules.build_optimizer` and
   `schedules.build_scheduler` (lengths converted from epochs to optimiser steps);
4. `Trainer.fit` (resuming from ``last.pt`` when ``config.resume``); under ``torchrun`` a
   ``DistributedSampler`` splits each epoch and a `ShardSampler` splits validation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medseg_helpers.data.splits import PatientSplit, save_splits, split_patients
from medseg_helpers.device import get_device, seed_everything
from medseg_helpers.inferers import SliceBySliceInferer
from medseg_helpers.paths import get_data_dir, get_run_dir
from medseg_helpers.training import distributed
from medseg_helpers.training.callbacks import Callback
from medseg_helpers.training.config import TrainConfig
from medseg_helpers.training.schedules import build_optimizer, build_scheduler
from medseg_helpers.training.trainer import Trainer

logger = logging.getLogger(__name__)

#: Loss names of `TrainConfig.loss` -> class names in `medseg_helpers.losses`.
LOSSES: dict[str, str] = {"dice_ce": "DiceCELoss", "dice": "DiceLoss", "ce": "CrossEntropyLoss",
                          "focal": "FocalLoss", "tversky": "TverskyLoss"}

__all__ = ["LOSSES", "CachedVolumeDataset", "TrainingData", "build_data", "build_loss",
           "default_run_dir", "open_slice_cache", "patient_split", "train_from_config"]


@dataclass
class TrainingData:
    """Loaders and dataset facts for one run.

    Attributes:
        train_loader: batches ``{"image": (B, C, *S) float32, "label": (B, 1, *S) int64}``.
        val_loader: whole volumes ``(1, C, D, H, W)`` (batch 1), in 2D and 3D.
        num_classes: classes including background (from ``dataset.json``).
        class_names: foreground class names, in label order.
        in_channels: image channels.
        dataset_dir: the Decathlon-layout folder used.
        split: the patient split (its ``test`` patients are used by no loader here).
    """

    train_loader: DataLoader
    val_loader: DataLoader
    num_classes: int
    class_names: list[str]
    in_channels: int
    dataset_dir: Path
    split: PatientSplit


def build_loss(name: str, registry: Mapping[str, Callable[..., nn.Module]] | None = None,
               **kwargs: Any) -> nn.Module:
    """A loss module by name: ``registry[name](**kwargs)``, default `LOSSES` in `losses`.

    Raises:
        ValueError: unknown name (lists the known ones).
    """
    if registry is not None and name in registry:
        return registry[name](**kwargs)
    if name not in LOSSES:
        known = sorted({*LOSSES, *(registry or {})})
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(known)}")
    from medseg_helpers import losses

    return getattr(losses, LOSSES[name])(**kwargs)


def default_run_dir(config: TrainConfig) -> Path:
    """``$MEDSEG_RUN_DIR/train-<profile>-<model>-<dims>d`` unless ``config.run_dir`` is set."""
    if config.run_dir:
        return Path(config.run_dir)
    return get_run_dir() / f"train-{config.profile}-{config.model}-{config.spatial_dims}d"


def resolve_dataset_dir(config: TrainConfig) -> Path:
    """The Decathlon-layout folder ``config`` trains on, made ready on disk.

    ``config.data_dir`` when set; else the profile's synthetic dataset (generated if
    missing, `course.data.ensure_synthetic_dataset`) for ``dataset="synthetic"``; else the
    Decathlon task ``config.dataset`` (downloaded if missing, `data_download.download_task`).
    Its class names: `medseg_helpers.data.decathlon.read_class_names`.
    """
    if config.data_dir:
        return Path(config.data_dir)
    if config.dataset == "synthetic":
        from medseg_helpers.course.data import ensure_synthetic_dataset

        return ensure_synthetic_dataset(config.profile)
    from data_download import download_task

    return download_task(config.dataset)


class CachedVolumeDataset(Dataset):
    """Whole preprocessed volumes of some patients, stacked back from a `SliceCache`.

    Items: ``"image"`` ``(C, D, H, W)`` float32 and ``"label"`` ``(1, D, H, W)`` int64, with
    ``D`` the patient's slice count and ``(H, W)`` the cache's (padded) slice shape.
    """

    def __init__(self, cache: Any, patient_ids: Sequence[str]) -> None:
        self.cache, self.patient_ids = cache, list(patient_ids)

    def __len__(self) -> int:
        return len(self.patient_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cache.cases[self.patient_ids[index]]
        image = np.array(self.cache.images[case.start:case.stop])  # (D, C, H, W)
        label = np.array(self.cache.labels[case.start:case.stop])  # (D, H, W)
        return {"image": torch.from_numpy(image).transpose(0, 1).contiguous(),
                "label": torch.from_numpy(label).long()[None],
                "patient_id": self.patient_ids[index]}


def _loader(dataset: Dataset, config: TrainConfig, batch_size: int, train: bool,
            info: distributed.DistInfo) -> DataLoader:
    from medseg_helpers.data.datasets import make_dataloader, seed_worker

    if not info.is_distributed:
        return make_dataloader(dataset, batch_size, shuffle=train, seed=config.seed,
                               num_workers=config.num_workers, drop_last=False)
    sampler = (DistributedSampler(dataset, shuffle=True, seed=config.seed) if train
               else distributed.ShardSampler(dataset, info))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=config.num_workers, worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(config.seed + info.rank),
                      pin_memory=torch.cuda.is_available(),
                      persistent_workers=config.num_workers > 0)


def open_slice_cache(dataset_dir: Path) -> Any:
    """The z-scored slice cache of a Decathlon folder (built once, then memory-mapped).

    Training, validation and `course_model.TrainedModel` all read images through it, so a
    model is always evaluated on exactly the preprocessing it was trained with.
    """
    from medseg_helpers.data.decathlon import read_decathlon
    from medseg_helpers.data.slice_cache import build_slice_cache

    cases = read_decathlon(dataset_dir)
    return build_slice_cache(cases, get_data_dir() / "cache" / Path(dataset_dir).name)


def patient_split(config: TrainConfig, cache: Any, num_classes: int) -> PatientSplit:
    """The train/val/test split of ``config``: by patient, stratified by whether a patient
    has any voxel of the last class (the lesion in the course data), so validation and
    test sets hold lesion and lesion-free patients in proportion. Same dataset, fractions
    and seed give the same split."""
    ids = sorted(cache.cases)
    last = num_classes - 1
    has_last = [bool((np.asarray(cache.labels[c.start:c.stop]) == last).any())
                for c in (cache.cases[p] for p in ids)]
    return split_patients(ids, has_last, val_fraction=config.val_fraction,
                          test_fraction=config.test_fraction, seed=config.seed)


def build_data(config: TrainConfig, info: distributed.DistInfo | None = None,
               split: PatientSplit | None = None) -> TrainingData:
    """Split patients and build the loaders described by ``config`` (see the module docstring).

    Args:
        config: the run's settings.
        info: the process group (None: `distributed.get_dist_info`).
        split: explicit patients (cross-validation folds); None: `patient_split`.

    Raises:
        ValueError: labels that are not ``0..K-1``, ``num_classes``/``in_channels`` that
            disagree with the dataset, or ``spatial_dims=3`` without ``patch_size``.
    """
    from medseg_helpers.data.crop_dataset import SliceCropDataset
    from medseg_helpers.data.datasets import SliceDataset
    from medseg_helpers.data.decathlon import read_class_names, read_decathlon
    from medseg_helpers.data.patch_dataset import PatchDataset3D

    info = info or distributed.get_dist_info()
    dataset_dir = resolve_dataset_dir(config)
    names = read_class_names(dataset_dir)
    if config.num_classes is not None and config.num_classes != len(names):
        raise ValueError(f"num_classes={config.num_classes} but {dataset_dir.name} has "
                         f"{len(names)} classes {names}")
    cache = open_slice_cache(dataset_dir)  # also the 3D validation volumes
    cases = read_decathlon(dataset_dir)
    if split is None:
        split = patient_split(config, cache, len(names))
    unknown = sorted(p for p in {*split.train, *split.val} if p not in cache.cases)
    if unknown:
        raise ValueError(f"patients not in {dataset_dir.name}: {unknown}")
    if cache.num_channels != config.in_channels:
        raise ValueError(f"in_channels={config.in_channels} but {dataset_dir.name} images have "
                         f"{cache.num_channels} channel(s)")
    if config.spatial_dims == 2:
        from medseg_helpers.transforms.augment import build_2d_augmentation

        transform = (build_2d_augmentation(config.augmentation, image_range="zscore",
                                           seed=config.seed) if config.augmentation else None)
        if config.crop_size is None:
            train = SliceDataset(cache, split.train, transform=transform,
                                 empty_slice_fraction=config.empty_slice_fraction,
                                 seed=config.seed)
        else:
            train = SliceCropDataset(cache, split.train, crop_size=config.crop_size,
                                     centre_ratios=config.centre_ratios,
                                     samples_per_epoch=config.samples_per_epoch,
                                     transform=transform, seed=config.seed)
    else:
        if config.patch_size is None:
            raise ValueError("spatial_dims=3 needs patch_size=(D, H, W)")
        train_ids = set(split.train)
        train = PatchDataset3D([c for c in cases if c.patient_id in train_ids],
                               config.patch_size, preset=config.augmentation,
                               cache_dir=get_data_dir() / "cache" / dataset_dir.name,
                               seed=config.seed)
    val = CachedVolumeDataset(cache, split.val)
    return TrainingData(_loader(train, config, config.batch_size, True, info),
                        _loader(val, config, 1, False, info),
                        len(names), names[1:], cache.num_channels, dataset_dir, split)


def _load_init_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Load ``weights`` by name (others keep their initialisation); a state dict sharing no
    name with the model would silently train from scratch, so it raises ValueError."""
    own = model.state_dict()
    if not any(name in own for name in weights):
        raise ValueError(f"init_weights share no parameter name with the model (they have "
                         f"{list(weights)[:3]}..., the model {list(own)[:3]}...)")
    model.load_state_dict(weights, strict=False)  # a shape mismatch raises RuntimeError


def train_from_config(config: TrainConfig | Mapping[str, Any], *,
                      init_weights: Mapping[str, torch.Tensor] | None = None,
                      split: PatientSplit | None = None,
                      callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run one training as described by ``config`` and return its final metrics.

    Works in one process and under ``torchrun`` (`distributed.init_from_env`). Rank 0
    writes ``config.yaml``, ``splits.json``, ``history.csv``, ``checkpoints/``,
    ``metrics.json`` to the run directory (`default_run_dir`).

    Args:
        config: a `TrainConfig` or a dict of its fields.
        init_weights: a state dict loaded into the new model before training, by name
            (``strict=False``: missing entries keep their fresh initialisation), e.g. a
            pretrained encoder from `pretraining.transferable_weights`. Not recorded in
            ``config.yaml``; ``resume`` overrides it.
        split: explicit patients (a cross-validation fold); None: `patient_split`.
        callbacks: `callbacks.Callback` objects for the `Trainer` (e.g. Optuna pruning).

    Returns:
        `Trainer.fit`'s metrics plus ``run_dir``, ``dataset_dir``, ``num_classes``,
        ``class_names`` and ``history`` (the epoch rows of ``history.csv``).

    Raises:
        ValueError: invalid config or data (see `build_data`, `check_labels`).
        TrainingDivergedError, torch.cuda.OutOfMemoryError: from the `Trainer`.
    """
    from medseg_helpers.networks import build_model

    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(dict(config))
    info = distributed.init_from_env()
    started_group = info.is_distributed
    try:
        seed_everything(config.seed)
        data = build_data(config, info, split)
        device = torch.device(config.device) if config.device else (
            torch.device(f"cuda:{info.local_rank}") if info.is_distributed
            and torch.cuda.is_available() else get_device())
        model = build_model(config.model, config.spatial_dims, data.in_channels,
                            data.num_classes, **config.model_kwargs)
        if init_weights is not None:
            _load_init_weights(model, init_weights)
        loss = build_loss(config.loss, **config.loss_kwargs)
        optimizer = build_optimizer(model.parameters(), config.optimizer, config.lr,
                                    config.weight_decay, config.momentum, config.nesterov)
        steps = max(1, len(data.train_loader))
        scheduler = build_scheduler(optimizer, config.scheduler,
                                    total_steps=config.max_epochs * steps,
                                    warmup_steps=config.warmup_epochs * steps,
                                    **config.scheduler_kwargs)
        run_dir = default_run_dir(config)
        roi = config.sw_roi_size or (config.patch_size if config.spatial_dims == 3 else None)
        inferer = SliceBySliceInferer(2 * config.batch_size) if config.spatial_dims == 2 else None
        trainer = Trainer(model, loss, optimizer, data.train_loader, data.val_loader,
                          num_classes=data.num_classes, scheduler=scheduler,
                          max_epochs=config.max_epochs, device=device,
                          val_every=config.val_every, patience=config.patience,
                          grad_clip_norm=config.grad_clip_norm, amp=config.amp,
                          cpu_bf16=config.cpu_bf16,
                          sw_roi_size=roi, sw_batch_size=config.sw_batch_size,
                          val_inferer=inferer, run_dir=run_dir,
                          config=config.to_dict(), class_names=data.class_names,
                          seed=config.seed, callbacks=callbacks, progress=config.progress,
                          tensorboard=config.tensorboard)
        if info.is_main:
            save_splits(data.split, run_dir / "splits.json")
        last = run_dir / "checkpoints" / "last.pt"
        resume = last if config.resume and last.is_file() else None
        metrics = trainer.fit(resume_from=resume)
        result = {**metrics, "run_dir": str(run_dir), "dataset_dir": str(data.dataset_dir),
                  "num_classes": data.num_classes, "class_names": data.class_names,
                  "history": list(trainer.history)}
    finally:
        if started_group:
            trainer = model = None  # the DDP wrapper holds the process group: release it first
            distributed.cleanup()
    return result
