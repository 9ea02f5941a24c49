"""Training on an explicit patient split, and patient-level k-fold cross-validation.

Model selection needs three kinds of patients: *training* patients the weights are fitted
on, *validation* patients the hyper-parameters are chosen on, and *test* patients looked at
once, at the very end. With few patients one validation split is noisy, so k-fold
cross-validation rotates the validation role over the development (train + val) patients
and averages; the test patients never take part::

    config = TrainConfig.from_profile("full", max_epochs=5)
    outer, folds = development_folds(config, n_folds=3)   # outer.test stays held out
    table = cross_validate(config, folds, run_dir="runs/cv")  # one row per fold
    table["best_val_dice"].mean()

A fold is trained by `train_job.train_from_config` with ``split=`` (and, in a search,
``callbacks=`` such as `tuning.PruningCallback`). The outer split is the one
`train_from_config` makes for the same config (`train_job.patient_split`), so a model
trained either way is tested on the same patients.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medseg_helpers.data.splits import PatientSplit, kfold_patients
from medseg_helpers.training.config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["OneStandardErrorChoice", "choose_one_standard_error", "cross_validate",
           "development_folds", "evaluate_run", "outer_split"]


def _cache_and_classes(config: TrainConfig) -> tuple[Any, int]:
    from medseg_helpers.data.decathlon import read_class_names
    from medseg_helpers.training.job import open_slice_cache, resolve_dataset_dir

    dataset_dir = resolve_dataset_dir(config)
    return open_slice_cache(dataset_dir), len(read_class_names(dataset_dir))


def outer_split(config: TrainConfig) -> PatientSplit:
    """The train/val/test split `train_job.train_from_config` makes for ``config``
    (`train_job.patient_split`), so the test patients here are the ones every run of this
    config holds out."""
    from medseg_helpers.training.job import patient_split

    return patient_split(config, *_cache_and_classes(config))


def development_folds(config: TrainConfig, n_folds: int = 3
                      ) -> tuple[PatientSplit, list[PatientSplit]]:
    """The outer split and ``n_folds`` folds over its development (train + val) patients.

    Folds are stratified by whether a patient has any voxel of the last class (the lesion
    in the course data), so each fold validates on lesion and lesion-free patients alike.
    Every fold's ``test`` is the outer test set (never trained or validated on).

    Raises:
        ValueError: ``n_folds`` < 2 or larger than the number of development patients.
    """
    from medseg_helpers.training.job import patient_split

    cache, num_classes = _cache_and_classes(config)
    outer = patient_split(config, cache, num_classes)
    dev_ids = sorted({*outer.train, *outer.val})
    has_last = [bool((np.asarray(cache.labels[c.start:c.stop]) == num_classes - 1).any())
                for c in (cache.cases[p] for p in dev_ids)]
    folds = kfold_patients(dev_ids, has_last, n_folds=n_folds, seed=config.seed)
    return outer, [PatientSplit(f.train, f.val, outer.test) for f in folds]


def cross_validate(config: TrainConfig, folds: Sequence[PatientSplit],
                   run_dir: str | os.PathLike) -> pd.DataFrame:
    """Train ``config`` once per fold (run directories ``run_dir/fold-<k>``).

    Returns:
        one row per fold: ``fold``, ``best_val_dice``, ``best_epoch``, ``dice_<class>``
        (at the best epoch), ``num_train``, ``num_val``, ``run_dir``. Its mean over folds
        estimates how well the config generalises; its spread, how far to trust it.
    """
    from medseg_helpers.training.job import train_from_config

    rows = []
    for k, split in enumerate(folds):
        fold_config = config.updated(run_dir=os.fspath(Path(run_dir) / f"fold-{k}"))
        result = train_from_config(fold_config, split=split)
        per_class = {f"dice_{n}": v for n, v in result["best_dice_per_class"].items()}
        rows.append({"fold": k, "best_val_dice": result["best_val_dice"],
                     "best_epoch": result["best_epoch"], **per_class,
                     "num_train": len(split.train), "num_val": len(split.val),
                     "run_dir": result["run_dir"]})
        logger.info("fold %d: best val Dice %.4f", k, result["best_val_dice"])
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class OneStandardErrorChoice:
    """The outcome of `choose_one_standard_error`.

    Attributes:
        chosen: the candidate to ship. best: the candidate with the highest mean.
        standard_error: the best candidate's standard error of the mean, std / sqrt(k).
        tied: candidates whose mean is within one standard error of the best, best first.
        means: mean score per candidate.
    """

    chosen: str
    best: str
    standard_error: float
    tied: tuple[str, ...]
    means: dict[str, float]


def choose_one_standard_error(fold_scores: Mapping[str, Sequence[float]],
                              params: Mapping[str, Mapping[str, float]]
                              ) -> OneStandardErrorChoice:
    """Pick among cross-validated candidates with the one-standard-error rule.

    Candidates whose mean fold score lies within one standard error of the best mean
    (Hastie, Tibshirani and Friedman, *The Elements of Statistical Learning*, §7.10) are
    tied: the folds cannot tell them apart. Among them the most conservative wins: the
    lowest ``lr``, then the largest ``weight_decay`` (the most regularised), then the
    higher mean.

    Args:
        fold_scores: per candidate, its score on each of the same k folds (higher is
            better), k >= 2.
        params: per candidate, at least ``lr`` and ``weight_decay``.

    Raises:
        ValueError: no candidates, fewer than 2 folds, or candidates without params.
    """
    if not fold_scores:
        raise ValueError("no candidates to choose from")
    missing = sorted(set(fold_scores) - set(params))
    if missing:
        raise ValueError(f"no lr / weight_decay for {missing}")
    scores = {name: np.asarray(s, dtype=float) for name, s in fold_scores.items()}
    short = sorted(name for name, s in scores.items() if s.size < 2)
    if short:
        raise ValueError(f"need at least 2 fold scores per candidate; {short} have fewer")
    means = {name: float(s.mean()) for name, s in scores.items()}
    best = max(means, key=means.__getitem__)
    standard_error = float(scores[best].std(ddof=1) / math.sqrt(scores[best].size))
    tied = tuple(sorted((n for n in means if means[n] >= means[best] - standard_error),
                        key=lambda n: -means[n]))
    chosen = min(tied, key=lambda n: (params[n]["lr"], -params[n]["weight_decay"],
                                      -means[n]))
    return OneStandardErrorChoice(chosen, best, standard_error, tied, means)


@torch.no_grad()
def evaluate_run(run_dir: str | os.PathLike, patient_ids: Sequence[str],
                 which: str = "best") -> dict[str, float]:
    """Mean per-patient Dice of the model saved in ``run_dir`` on ``patient_ids``.

    Dice is computed per patient volume on the preprocessed grid, as in validation
    (`metrics.DiceAccumulator`, a class absent from truth and prediction is skipped).

    Returns:
        ``{"dice": mean over foreground classes, "dice_<class>": ..., "num_patients": n}``.

    Raises:
        FileNotFoundError: no trained model in ``run_dir``.
    """
    from medseg_helpers.course.model import load_trained_model
    from medseg_helpers.metrics.overlap import DiceAccumulator

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
