"""Training on an explicit patient split, and patient-level k-fold cross-validation.

Model selection needs three kinds of patients: *training* patients the weights are fitted
on, *validation* patients the hyper-parameters are chosen on, and *test* patients looked at
once, at the very end. With few patients one validation split is noisy, so k-fold
cross-validation rotates the validation role over the development (train + val) patients
and averages; the test patients never take part::

    config = TrainConfig.from_profile("cpu", max_epochs=5)
    outer, folds = development_folds(config, n_folds=3)   # outer.test stays held out
    table = cross_validate(config, folds, run_dir="runs/cv")  # one row per fold
    table["best_val_dice"].mean()

`train_on_split` is `train_job.train_from_config` for one process with two additions the
search and the folds need: an explicit `PatientSplit` and Trainer callbacks (e.g.
`tuning.PruningCallback`). The outer split is the one `train_from_config` makes for the
same config, so a model trained either way is tested on the same patients.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medseg_helpers.callbacks import Callback
from medseg_helpers.splits import PatientSplit, kfold_patients, save_splits, split_patients
from medseg_helpers.train_config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["build_split_data", "cross_validate", "development_folds", "evaluate_run",
           "outer_split", "train_on_split"]


def _case_facts(config: TrainConfig) -> tuple[Path, list[str], list[str], list[bool]]:
    """(dataset dir, class names, patient ids, has-last-class flag per patient)."""
    from medseg_helpers.train_job import _dataset_dir, _read_labels, open_slice_cache

    dataset_dir = _dataset_dir(config)
    names = _read_labels(dataset_dir)
    cache = open_slice_cache(dataset_dir)
    ids = sorted(cache.cases)
    last = len(names) - 1
    flags = [bool((np.asarray(cache.labels[c.start:c.stop]) == last).any())
             for c in (cache.cases[p] for p in ids)]
    return dataset_dir, names, ids, flags


def outer_split(config: TrainConfig) -> PatientSplit:
    """The train/val/test split `train_job.train_from_config` makes for ``config``.

    Same ids, fractions and seed give the same split (`splits.split_patients`), so the
    test patients here are the ones every run of this config holds out.
    """
    _, _, ids, _ = _case_facts(config)
    return split_patients(ids, val_fraction=config.val_fraction,
                          test_fraction=config.test_fraction, seed=config.seed)


def development_folds(config: TrainConfig, n_folds: int = 3
                      ) -> tuple[PatientSplit, list[PatientSplit]]:
    """The outer split and ``n_folds`` folds over its development (train + val) patients.

    Folds are stratified by whether a patient has any voxel of the last class (the lesion
    in the course data), so each fold validates on lesion and lesion-free patients alike.
    Every fold's ``test`` is the outer test set (never trained or validated on).

    Raises:
        ValueError: ``n_folds`` < 2 or larger than the number of development patients.
    """
    _, _, ids, flags = _case_facts(config)
    outer = split_patients(ids, val_fraction=config.val_fraction,
                           test_fraction=config.test_fraction, seed=config.seed)
    develop = set(outer.train) | set(outer.val)
    dev_ids = [p for p in ids if p in develop]
    dev_flags = [f for p, f in zip(ids, flags, strict=True) if p in develop]
    folds = kfold_patients(dev_ids, dev_flags, n_folds=n_folds, seed=config.seed)
    return outer, [PatientSplit(f.train, f.val, outer.test) for f in folds]


def build_split_data(config: TrainConfig, split: PatientSplit) -> Any:
    """`train_job.build_data` for one process, with the given ``split`` instead of the
    config's: training slices (2D) or patches (3D) of ``split.train``, whole validation
    volumes of ``split.val``.

    Returns:
        a `train_job.TrainingData`.

    Raises:
        ValueError: patients not in the dataset, or as `train_job.build_data`.
    """
    from medseg_helpers import datasets
    from medseg_helpers.config import get_data_dir
    from medseg_helpers.train_job import (
        CachedVolumeDataset,
        TrainingData,
        _dataset_dir,
        _read_labels,
        open_slice_cache,
    )

    dataset_dir = _dataset_dir(config)
    names = _read_labels(dataset_dir)
    cache = open_slice_cache(dataset_dir)
    unknown = sorted(p for p in {*split.train, *split.val} if p not in cache.cases)
    if unknown:
        raise ValueError(f"patients not in {dataset_dir.name}: {unknown}")
    if config.spatial_dims == 2:
        from medseg_helpers.augment import build_2d_augmentation

        transform = (build_2d_augmentation(config.augmentation, image_range="zscore",
                                           seed=config.seed) if config.augmentation else None)
        train = datasets.SliceDataset(cache, split.train, transform=transform,
                                      empty_slice_fraction=config.empty_slice_fraction,
                                      seed=config.seed)
    else:
        if config.patch_size is None:
            raise ValueError("spatial_dims=3 needs patch_size=(D, H, W)")
        cases = [c for c in datasets.read_decathlon(dataset_dir) if c.patient_id in split.train]
        train = datasets.PatchDataset3D(cases, config.patch_size, preset=config.augmentation,
                                        cache_dir=get_data_dir() / "cache" / dataset_dir.name,
                                        seed=config.seed)
    train_loader = datasets.make_dataloader(train, config.batch_size, shuffle=True,
                                            seed=config.seed, num_workers=config.num_workers)
    val_loader = datasets.make_dataloader(CachedVolumeDataset(cache, split.val), 1,
                                          seed=config.seed, num_workers=config.num_workers)
    return TrainingData(train_loader, val_loader, len(names), names[1:], cache.num_channels,
                        dataset_dir, split)


def train_on_split(config: TrainConfig, split: PatientSplit | None = None,
                   callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train ``config`` in this process on ``split`` (None: the config's own split).

    Writes the usual run directory (``config.yaml``, ``splits.json``, ``history.csv``,
    ``checkpoints/``, ``metrics.json``; `train_job.default_run_dir`). A callback may stop
    the run early (``trainer.should_stop``): ``metrics.json`` then says ``stopped``.

    Returns:
        `Trainer.fit`'s metrics plus ``run_dir``, ``history`` (list of epoch rows) and
        ``class_names``.

    Raises:
        TrainingDivergedError: NaN/inf loss (``metrics.json`` says ``diverged``).
    """
    from medseg_helpers.device import get_device, seed_everything
    from medseg_helpers.inference import SliceBySliceInferer
    from medseg_helpers.models import build_model
    from medseg_helpers.schedules import build_optimizer, build_scheduler
    from medseg_helpers.train_job import build_data, build_loss, default_run_dir
    from medseg_helpers.training import Trainer

    seed_everything(config.seed)
    data = build_data(config) if split is None else build_split_data(config, split)
    device = torch.device(config.device) if config.device else get_device()
    model = build_model(config.model, config.spatial_dims, data.in_channels, data.num_classes,
                        **config.model_kwargs)
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
    trainer = Trainer(model, build_loss(config.loss, **config.loss_kwargs), optimizer,
                      data.train_loader, data.val_loader, num_classes=data.num_classes,
                      scheduler=scheduler, max_epochs=config.max_epochs, device=device,
                      val_every=config.val_every, patience=config.patience,
                      grad_clip_norm=config.grad_clip_norm, amp=config.amp, sw_roi_size=roi,
                      sw_batch_size=config.sw_batch_size, val_inferer=inferer, run_dir=run_dir,
                      config=config.to_dict(), class_names=data.class_names, seed=config.seed,
                      callbacks=callbacks, progress=config.progress,
                      tensorboard=config.tensorboard)
    save_splits(data.split, run_dir / "splits.json")
    metrics = trainer.fit()
    return {**metrics, "run_dir": str(run_dir), "history": list(trainer.history),
            "class_names": data.class_names}


def cross_validate(config: TrainConfig, folds: Sequence[PatientSplit],
                   run_dir: str | os.PathLike) -> pd.DataFrame:
    """Train ``config`` once per fold (run directories ``run_dir/fold-<k>``).

    Returns:
        one row per fold: ``fold``, ``best_val_dice``, ``best_epoch``, ``dice_<class>``
        (at the best epoch), ``num_train``, ``num_val``, ``run_dir``. Its mean over folds
        estimates how well the config generalises; its spread, how far to trust it.
    """
    rows = []
    for k, split in enumerate(folds):
        fold_config = config.updated(run_dir=os.fspath(Path(run_dir) / f"fold-{k}"))
        result = train_on_split(fold_config, split)
        per_class = {f"dice_{n}": v for n, v in result["best_dice_per_class"].items()}
        rows.append({"fold": k, "best_val_dice": result["best_val_dice"],
                     "best_epoch": result["best_epoch"], **per_class,
                     "num_train": len(split.train), "num_val": len(split.val),
                     "run_dir": result["run_dir"]})
        logger.info("fold %d: best val Dice %.4f", k, result["best_val_dice"])
    return pd.DataFrame(rows)


@torch.no_grad()
def evaluate_run(run_dir: str | os.PathLike, patient_ids: Sequence[str],
                 which: str = "best") -> dict[str, float]:
    """Mean per-patient Dice of the model saved in ``run_dir`` on ``patient_ids``.

    Dice is computed per patient volume on the preprocessed grid, as in validation
    (`metrics.DiceAccumulator`, a class absent from target and prediction is skipped).

    Returns:
        ``{"dice": mean over foreground classes, "dice_<class>": ..., "num_patients": n}``.

    Raises:
        FileNotFoundError: no trained model in ``run_dir``.
    """
    from medseg_helpers.course_model import load_trained_model
    from medseg_helpers.metrics import DiceAccumulator

    trained = load_trained_model(run_dir, which=which)
    dice = DiceAccumulator(trained.num_classes)
    for patient_id in patient_ids:
        _, label = trained.preprocessed(patient_id)
        pred = trained.predict_logits(patient_id).argmax(0)
        dice.update(pred[None, None].cpu(), label[None, None])
    per_class = dice.per_class().tolist()
    scored = [d for d in per_class if not math.isnan(d)]
    return {"dice": float(np.mean(scored)) if scored else math.nan,
            **{f"dice_{n}": d for n, d in zip(trained.class_names[1:], per_class, strict=True)},
            "num_patients": len(patient_ids)}
