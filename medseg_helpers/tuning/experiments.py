"""Controlled training experiments on one fixed test set: less data, noisier labels,
other recipes, pretrained starts (notebook 10).

An `Experiment` fixes a dataset, a base recipe (`TrainConfig`) and the patient split that
recipe implies (`splits.split_patients` with its seed). Every variant is trained with
`train_job.train_from_config` on a *derived* Decathlon folder that lists only the
variant's training patients plus the split's validation patients (images are referenced,
not copied; noisy labels are written next to ``dataset.json``). The test patients are
never listed there, so no variant can see them, and every variant is scored on the same
test patients with their **clean** labels, on the source grid (`course_model.TrainedModel`).

Each variant is trained with an explicit `PatientSplit`: exactly its training patients
train, and the reference split's validation patients (less any the variant trains on)
validate, so every variant selects its checkpoint on the same patients.

Runs are compared at a fixed number of optimiser steps (``train_steps``), so a variant with
fewer slices runs more epochs rather than less training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medseg_helpers.data.splits import PatientSplit, split_patients
from medseg_helpers.training.config import TrainConfig
from medseg_helpers.training.pseudo_labels import PseudoLabels
from medseg_helpers.transforms.label_noise import LabelNoise

logger = logging.getLogger(__name__)

__all__ = ["Experiment", "RunResult", "derive_dataset", "score_cases"]


def derive_dataset(source_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   patient_ids: Sequence[str], noise: LabelNoise | PseudoLabels | None = None,
                   noisy_ids: Sequence[str] | None = None) -> Path:
    """Write a Decathlon folder listing some patients of ``source_dir``, labels optionally
    corrupted.

    Images (and clean labels) are referenced by absolute path, so nothing large is
    copied; each corrupted label is written to ``out_dir/labelsTr/`` with the source
    geometry. The folder is rewritten from scratch on every call.

    Args:
        source_dir: a Decathlon folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        out_dir: the folder to (re)create.
        patient_ids: the cases to list, in this order.
        noise: applied to the labels of ``noisy_ids`` (`LabelNoise.apply`; or
            `training.pseudo_labels.PseudoLabels`, which replaces them); None: clean.
        noisy_ids: the cases to corrupt; None: all of ``patient_ids``.

    Returns:
        ``out_dir``.

    Raises:
        KeyError: a patient id that ``source_dir`` does not hold.
    """
    from medseg_helpers.data.decathlon import read_decathlon
    from medseg_helpers.data.io import read_volume, write_volume

    source_dir, out_dir = Path(source_dir).resolve(), Path(out_dir)
    cases = {case.patient_id: case for case in read_decathlon(source_dir)}
    missing = [p for p in patient_ids if p not in cases]
    if missing:
        raise KeyError(f"{source_dir.name} has no case(s) {missing[:5]}")
    noisy = set(patient_ids if noisy_ids is None else noisy_ids) if noise else set()
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "labelsTr").mkdir(parents=True)
    meta = json.loads((source_dir / "dataset.json").read_text(encoding="utf-8"))
    training = []
    for pid in patient_ids:
        case, label_path = cases[pid], str(cases[pid].label_path.resolve())
        if pid in noisy:
            clean = read_volume(case.label_path)
            array = noise.apply(clean.array, clean.spacing_mm, pid).astype(clean.array.dtype)
            label_path = str(write_volume(replace(clean, array=array),
                                          out_dir / "labelsTr" / case.label_path.name))
        training.append({"image": str(case.image_path.resolve()), "label": label_path})
    meta.update(training=training, numTraining=len(training), test=[],
                derived_from=str(source_dir), noise=noise.describe() if noise else None,
                noisy_cases=sorted(noisy))
    (out_dir / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out_dir


def score_cases(trained: Any, patient_ids: Sequence[str], which_labels: Any = None
                ) -> pd.DataFrame:
    """Dice per case and foreground class of a `course_model.TrainedModel`, source grid.

    Args:
        trained: the model (its ``dataset_dir`` gives images and labels).
        patient_ids: cases to score.
        which_labels: another `TrainedModel`-like object whose ``read_label`` supplies the
            reference labels (e.g. the noisy labels it was trained on); None: ``trained``.

    Returns:
        One row per case: ``patient_id`` and ``dice_<class>`` (NaN where a class is absent
        from both prediction and label, as in `metrics.compute_dice`).
    """
    from medseg_helpers.metrics.overlap import compute_dice

    labels_from = which_labels or trained
    rows = []
    for pid in patient_ids:
        pred = torch.from_numpy(trained.predict(pid).array.astype(np.int64))
        truth = torch.from_numpy(labels_from.read_label(pid).array.astype(np.int64))
        dice = compute_dice(pred[None], truth[None], trained.num_classes)[0]
        rows.append({"patient_id": pid, **{f"dice_{name}": float(d) for name, d
                                           in zip(trained.class_names[1:], dice, strict=True)}})
    return pd.DataFrame(rows)


@dataclass
class RunResult:
    """One trained variant, scored on the test patients.

    Attributes:
        name: the variant's name (also its folder names).
        test_dice: mean Dice per foreground class over the test patients (NaN-aware).
        per_case: `score_cases` of the test patients.
        history: the run's ``history.csv`` (one row per epoch).
        metrics: `train_from_config`'s metrics (``best_val_dice``, ``best_epoch``...).
        trained: the model (best validation checkpoint) on the *reference* dataset.
        config: the config it was trained with. seconds: wall time, training + scoring.
        extra: more columns for `row` (training cases, noise).
        run_trained: the same model on its own derived dataset (its noisy labels, its split).
    """

    name: str
    test_dice: dict[str, float]
    per_case: pd.DataFrame
    history: pd.DataFrame
    metrics: dict[str, Any]
    trained: Any
    config: TrainConfig
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    run_trained: Any = None

    @property
    def mean_dice(self) -> float:
        """Mean over foreground classes of `test_dice`."""
        return float(np.nanmean(list(self.test_dice.values())))

    def row(self) -> dict[str, Any]:
        """A flat dict for a results table."""
        return {"variant": self.name, **{f"dice_{k}": v for k, v in self.test_dice.items()},
                "mean_dice": self.mean_dice, "best_epoch": self.metrics.get("best_epoch"),
                "epochs": self.metrics.get("epochs_completed"), "seconds": self.seconds,
                **self.extra}


class Experiment:
    """Train variants of one recipe and score them on one fixed set of test patients.

    Args:
        config: the base recipe; its ``data_dir`` (or profile dataset), ``seed``,
            ``val_fraction`` and ``test_fraction`` define the reference split.
        work_dir: where derived datasets (``data/``) and runs (``runs/``) are written.
        train_steps: optimiser steps per variant (None: the config's ``max_epochs``).
        val_points: with ``train_steps``, validate about this many times per run (every
            ``max(1, epochs // val_points)`` epochs, and after the last).

    Attributes:
        dataset_dir: the full dataset. split: the reference `PatientSplit`.
        class_names: class names, background first. results: `RunResult` by name.
    """

    def __init__(self, config: TrainConfig, work_dir: str | os.PathLike,
                 train_steps: int | None = None, val_points: int = 10) -> None:
        from medseg_helpers.data.decathlon import read_class_names, read_decathlon
        from medseg_helpers.training.job import resolve_dataset_dir

        self.config = config.updated(progress=False, tensorboard=False, resume=False)
        self.work_dir, self.train_steps = Path(work_dir), train_steps
        self.val_points = val_points
        self.dataset_dir = resolve_dataset_dir(self.config)
        self.class_names = read_class_names(self.dataset_dir)
        ids = [case.patient_id for case in read_decathlon(self.dataset_dir)]
        self.split: PatientSplit = split_patients(
            ids, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
            seed=config.seed)
        self.results: dict[str, RunResult] = {}

    def run(self, name: str, *, train_ids: Sequence[str] | None = None,
            noise: LabelNoise | PseudoLabels | None = None,
            noisy_ids: Sequence[str] | None = None,
            init_weights: Mapping[str, torch.Tensor] | None = None,
            **overrides: Any) -> RunResult:
        """Train one variant and score it on the reference test patients (clean labels).

        Args:
            name: a file-name-safe variant name (reused names are retrained).
            train_ids: training patients (default: the split's ``train``); must not hold a
                test patient.
            noise: label noise for the training and validation labels (`derive_dataset`).
            noisy_ids: which listed patients get the noise (default: all of them).
            init_weights: initial weights (`pretraining.transferable_weights`).
            **overrides: `TrainConfig` fields, e.g. ``augmentation=None``, ``loss="dice"``.

        Raises:
            ValueError: a test patient among ``train_ids``, or a bad override.
        """
        from medseg_helpers.course.model import load_trained_model
        from medseg_helpers.training.job import build_data, train_from_config

        start = time.perf_counter()
        train_ids = list(self.split.train if train_ids is None else train_ids)
        leaked = sorted(set(train_ids) & set(self.split.test))
        if leaked:
            raise ValueError(f"test patients {leaked} may not be trained on")
        val_ids = [p for p in self.split.val if p not in train_ids]
        variant_split = PatientSplit(train_ids, val_ids)
        data_dir = derive_dataset(self.dataset_dir, self.work_dir / "data" /
                                  f"{self.dataset_dir.name}-{name}", train_ids + val_ids,
                                  noise, noisy_ids)
        config = self.config.updated(
            data_dir=str(data_dir), run_dir=str(self.work_dir / "runs" / name),
            test_fraction=0.0, **overrides)
        if self.train_steps:
            steps_per_epoch = max(1, len(build_data(config, split=variant_split).train_loader))
            epochs = math.ceil(self.train_steps / steps_per_epoch)
            config = config.updated(max_epochs=epochs,
                                    val_every=max(1, epochs // self.val_points))
        shutil.rmtree(config.run_dir, ignore_errors=True)  # no stale checkpoints
        metrics = train_from_config(config, split=variant_split, init_weights=init_weights)
        run_trained = load_trained_model(config.run_dir)
        trained = replace(run_trained, dataset_dir=self.dataset_dir, split=self.split)
        per_case = score_cases(trained, self.split.test)
        history = pd.read_csv(Path(config.run_dir) / "history.csv")
        test_dice = {c: float(np.nanmean(per_case[f"dice_{c}"])) if per_case[f"dice_{c}"]
                     .notna().any() else math.nan for c in self.class_names[1:]}
        result = RunResult(name, test_dice, per_case, history, metrics, trained, config,
                           time.perf_counter() - start,
                           {"train_cases": len(train_ids), "noise": noise.describe()
                            if noise else "none"}, run_trained)
        self.results[name] = result
        logger.info("%s: test Dice %s in %.1f s", name, test_dice, result.seconds)
        return result

    def score(self, name: str, which: str = "last") -> dict[str, float]:
        """Mean test Dice per class of run ``name`` with another checkpoint (``"last"``:
        the final weights, i.e. without early stopping / best-checkpoint selection)."""
        from medseg_helpers.course.model import load_trained_model

        loaded = load_trained_model(self.results[name].config.run_dir, which=which)
        per_case = score_cases(replace(loaded, dataset_dir=self.dataset_dir, split=self.split),
                               self.split.test)
        return {c: float(np.nanmean(per_case[f"dice_{c}"])) if per_case[f"dice_{c}"]
                .notna().any() else math.nan for c in self.class_names[1:]}

    def learning_curve(self, sizes: Sequence[int], prefix: str = "cases",
                       **overrides: Any) -> pd.DataFrame:
        """Train on the first ``k`` training patients for each ``k`` in ``sizes``.

        Patients are taken in the order of `train_order` (those showing every class
        first), so even small subsets contain lesions. Returns one `RunResult.row` per size.
        """
        order, rows = self.train_order(), []
        for k in sizes:
            if not 1 <= k <= len(order):
                raise ValueError(f"sizes must be in [1, {len(order)}], got {k}")
            rows.append(self.run(f"{prefix}-{k}", train_ids=order[:k], **overrides).row())
        return pd.DataFrame(rows)

    def train_order(self) -> list[str]:
        """The split's training patients, those whose label holds every class first (split
        order kept within each group): the order subsets are taken in."""
        from medseg_helpers.training.job import open_slice_cache

        cache = open_slice_cache(self.dataset_dir)
        complete = {pid: np.unique(cache.labels[cache.cases[pid].start:cache.cases[pid].stop])
                    .size == len(self.class_names) for pid in self.split.train}
        return sorted(self.split.train, key=lambda pid: not complete[pid])

    def table(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """`RunResult.row` of the named (default: all) results, internal fields dropped."""
        rows = [self.results[n].row() for n in (names or list(self.results))]
        return pd.DataFrame(rows)

    def disagreement(self, name: str) -> pd.DataFrame:
        """How much a variant's model disagrees with the labels it was trained on.

        Predicts every training patient of run ``name`` and scores it against that run's
        (possibly noisy) training labels. Low Dice flags cases whose label the model does
        not believe: candidates for review ("cleaning by disagreement"). The model has
        seen these labels, so this understates disagreement; out-of-fold predictions
        (cross-validation, as in confident learning, Northcutt et al. 2021, JAIR) are the
        rigorous version.

        Returns:
            One row per training case, lowest mean Dice first, with ``mean_dice`` and
            ``noisy`` (whether `derive_dataset` corrupted it).
        """
        result = self.results[name]
        run_trained = result.run_trained
        meta = json.loads((run_trained.dataset_dir / "dataset.json").read_text("utf-8"))
        table = score_cases(run_trained, run_trained.split.train)
        columns = [c for c in table.columns if c.startswith("dice_")]
        table["mean_dice"] = table[columns].mean(axis=1)
        table["noisy"] = table["patient_id"].isin(meta.get("noisy_cases", []))
        return table.sort_values("mean_dice").reset_index(drop=True)
