"""Hyper-parameter search with Optuna: search space, samplers, pruning, shared storage.

A *study* is a set of *trials*; each trial draws hyper-parameters from a search space
(`medseg_helpers.tuning.space`), trains one model (`training.job.train_from_config`) and
returns its best validation Dice (mean over foreground classes, per patient volume). Three
samplers (Bergstra and Bengio 2012 for random search; Bergstra et al. 2011 for TPE):

* ``grid``: every combination of each parameter's ``grid`` values;
* ``random``: independent draws from the ranges;
* ``tpe``: Tree-structured Parzen Estimator, random for the first ``n_startup_trials``
  trials, then it models where good trials lie and samples there.

Median pruning stops a trial whose validation Dice after epoch ``k`` is below the median
of earlier trials at epoch ``k`` (`PruningCallback` reports to Optuna each epoch). The
study lives in a database (default ``sqlite:///<run_dir>/study.db``): an interrupted search
continues where it stopped, and several processes that run `run_study` with the same name
and storage work on one study (machines: share a PostgreSQL/MySQL server, not an SQLite
file on a network file system, whose locking is unreliable)::

    study = run_study(TrainConfig.from_profile("full", max_epochs=4), n_trials=12,
                      study_name="lr-wd", sampler="tpe")
    study_dataframe(study)                                # one row per trial
    plot_optimisation_history(study)

``n_trials`` is the study's total across all workers: a worker starts a trial only while
fewer than ``n_trials`` trials are finished or running (failed ones, e.g. interrupted, do
not count). Two workers that check at the same instant can start one trial too many.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from medseg_helpers.data.splits import PatientSplit
from medseg_helpers.training.callbacks import Callback
from medseg_helpers.training.config import TrainConfig
from medseg_helpers.tuning.space import SearchParam, apply_params, default_search_space, grid_size

logger = logging.getLogger(__name__)

__all__ = ["SAMPLERS", "PruningCallback", "default_storage", "make_objective", "make_pruner",
           "make_sampler", "open_study", "optimize_until", "param_importances",
           "plot_optimisation_history", "plot_param_importances", "run_study",
           "study_dataframe"]

SAMPLERS = ("grid", "random", "tpe")
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def make_sampler(name: str, space: Mapping[str, SearchParam], seed: int | None = 0,
                 n_startup_trials: int = 4) -> optuna.samplers.BaseSampler:
    """A seeded sampler: ``"grid"``, ``"random"`` or ``"tpe"``.

    Args:
        n_startup_trials: TPE's random trials before it starts modelling.

    Raises:
        ValueError: unknown name.
    """
    if name == "grid":
        return optuna.samplers.GridSampler({k: p.grid_values() for k, p in space.items()},
                                           seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str = "median", n_startup_trials: int = 2, warmup_epochs: int = 1
                ) -> optuna.pruners.BasePruner:
    """``"median"`` (`optuna.pruners.MedianPruner`) or ``"none"``.

    Args:
        n_startup_trials: trials that always run to the end before any pruning.
        warmup_epochs: the first epochs of every trial, never pruned (the first epoch's
            Dice says little). Steps are epoch numbers, starting at 1.
    """
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials,
                                           n_warmup_steps=warmup_epochs + 1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose median or none")


def default_storage(run_dir: str | os.PathLike) -> str:
    """``sqlite:///<run_dir>/study.db`` (absolute path; the folder is created)."""
    path = Path(run_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'study.db'}"


def _rdb_storage(url: str, heartbeat_s: int | None, attempts: int = 5) -> Any:
    """An RDBStorage; retried because workers starting together race to create the
    tables of a new database (one of them gets an IntegrityError)."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5.0
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 60}}
                    if url.startswith("sqlite") else None,
                    heartbeat_interval=heartbeat_s,
                    grace_period=3 * heartbeat_s if heartbeat_s else None)
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            logger.info("storage %s not ready (another worker creating it?), retrying", url)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_study(study_name: str, storage: str, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner | None = None,
               heartbeat_s: int | None = 60) -> optuna.Study:
    """Create the study, or join it if it exists (``load_if_exists``); maximises Dice.

    SQLite URLs get a 60 s lock timeout, so concurrent workers wait instead of failing
    with "database is locked". Any SQLAlchemy URL works (``postgresql://...``, the
    choice for machines that share a database server).

    Args:
        heartbeat_s: a running trial writes a heartbeat this often; a trial silent for
            three heartbeats (its worker was killed, its machine crashed) is marked
            failed when a worker next starts a trial, so it no longer counts as running.
            None: no heartbeat (a killed worker's trial stays "running" for ever).
    """
    storage_obj: Any = storage
    if storage.startswith(("sqlite", "postgresql", "mysql")):
        storage_obj = _rdb_storage(storage, heartbeat_s)
    return optuna.create_study(study_name=study_name, storage=storage_obj, sampler=sampler,
                               pruner=pruner, direction="maximize", load_if_exists=True)


class PruningCallback(Callback):
    """Report the validation Dice to an Optuna trial each epoch; stop the Trainer if the
    pruner says so.

    Stopping goes through ``trainer.should_stop``, so the run ends cleanly after the
    epoch (``metrics.json`` says ``stopped``, checkpoints are complete); the objective
    then raises ``optuna.TrialPruned``. The last epoch (``trainer.max_epochs``) is
    reported but never pruned: pruning then would save nothing and lose the result.

    Attributes:
        pruned_epoch: the epoch after which the trial was pruned, or None.
    """

    def __init__(self, trial: optuna.Trial, monitor: str = "val_dice") -> None:
        self.trial, self.monitor = trial, monitor
        self.pruned_epoch: int | None = None

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        value = logs.get(self.monitor, math.nan)
        if value is None or math.isnan(value):
            return
        self.trial.report(float(value), step=int(logs["epoch"]))
        if int(logs["epoch"]) >= getattr(trainer, "max_epochs", math.inf):
            return  # the run is over anyway: keep its result rather than discard it
        if self.trial.should_prune():
            self.pruned_epoch = int(logs["epoch"])
            trainer.should_stop = True


def make_objective(base_config: TrainConfig, space: Mapping[str, SearchParam],
                   run_dir: str | os.PathLike, split: PatientSplit | None = None,
                   callbacks: Sequence[Callback] = ()) -> Callable[[optuna.Trial], float]:
    """The objective: sample ``space``, train in ``run_dir/trial-NNN``, return best val Dice.

    Give each study its own ``run_dir`` (`run_study` uses ``<run_dir>/<study_name>``).

    A diverged training (NaN loss, e.g. a too high learning rate) scores 0.0 with user
    attribute ``status="diverged"``, so the sampler learns to avoid that region.

    Args:
        split: train/val patients (None: the config's own split, `train_job.build_data`).
        callbacks: extra Trainer callbacks for every trial.
    """
    from medseg_helpers.training.job import train_from_config
    from medseg_helpers.training.trainer import TrainingDivergedError

    def objective(trial: optuna.Trial) -> float:
        params = {name: param.suggest(trial, name) for name, param in space.items()}
        trial_dir = Path(run_dir) / f"trial-{trial.number:03d}"
        config = apply_params(base_config, params).updated(
            run_dir=os.fspath(trial_dir), progress=False, tensorboard=False, resume=False)
        trial.set_user_attr("run_dir", os.fspath(trial_dir))
        pruning = PruningCallback(trial)
        try:
            result = train_from_config(config, split=split, callbacks=[pruning, *callbacks])
        except TrainingDivergedError:
            trial.set_user_attr("status", "diverged")
            return 0.0
        trial.set_user_attr("epochs", int(result["epochs_completed"]))
        trial.set_user_attr("seconds", float(result["seconds"]))
        if pruning.pruned_epoch is not None:
            trial.set_user_attr("status", "pruned")
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_epoch}")
        trial.set_user_attr("status", result["status"])
        for name, value in result["best_dice_per_class"].items():
            trial.set_user_attr(f"dice_{name}", float(value))
        return float(result["best_val_dice"])

    return objective


def optimize_until(study: optuna.Study, objective: Callable[[optuna.Trial], float],
                   n_trials: int) -> optuna.Study:
    """Run trials until the study holds ``n_trials`` finished or running ones.

    Unlike ``study.optimize(n_trials=...)``, which counts this worker's trials, the
    budget is the study's: a restarted or second worker runs only what is missing.
    Failed trials (interrupted, crashed) do not count, so they are replaced. Before
    each count, "running" trials whose heartbeat went silent (their worker died; see
    `open_study`) are marked failed, so a dead worker's last trial is replaced even
    when no other worker starts a trial after it.
    """
    while True:
        with warnings.catch_warnings():  # experimental in Optuna 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # no-op without heartbeats
        if len(study.get_trials(deepcopy=False, states=_COUNTED)) >= n_trials:
            return study
        study.optimize(objective, n_trials=1)


def run_study(base_config: TrainConfig, *, n_trials: int, study_name: str = "medseg",
              storage: str | None = None, sampler: str = "tpe",
              space: Mapping[str, SearchParam] | None = None, seed: int = 0,
              worker: int | None = 0,
              pruner: str | optuna.pruners.BasePruner = "median", n_startup_trials: int = 4,
              run_dir: str | os.PathLike | None = None, split: PatientSplit | None = None,
              callbacks: Sequence[Callback] = ()) -> optuna.Study:
    """Run (or continue, or join) a study until it holds ``n_trials`` trials.

    Args:
        base_config: everything not searched (profile, epochs, model...).
        n_trials: the study's total number of trials, over all workers and restarts (a
            grid study stops earlier when its grid is covered).
        study_name: name in the storage; the same name and storage join one study.
        storage: SQLAlchemy URL; None: `default_storage` of ``run_dir``.
        sampler: ``grid``, ``random`` or ``tpe`` (`make_sampler`).
        space: parameters to search; None: `default_search_space`.
        seed: sampler seed. worker: index of this worker; workers seed their samplers
            from ``(seed, worker)`` so they do not draw the same values. None: an
            unseeded sampler (what independent machines running one command need).
        pruner: ``median`` or ``none`` (`make_pruner`), or an Optuna pruner.
        run_dir: holds ``study.db`` (the default storage) and one folder per study with
            its trials, ``<run_dir>/<study_name>/trial-NNN``; None: ``$MEDSEG_RUN_DIR/tune``.
        split, callbacks: as in `make_objective`.

    Returns:
        the study (``study.best_trial``, `study_dataframe`).
    """
    from medseg_helpers.paths import get_run_dir

    space = dict(space or default_search_space())
    run_dir = Path(run_dir) if run_dir is not None else get_run_dir() / "tune"
    storage = storage or default_storage(run_dir)
    sampler_seed = (None if worker is None else
                    int(np.random.SeedSequence([seed, worker]).generate_state(1)[0] >> 1))
    study = open_study(study_name, storage,
                       make_sampler(sampler, space, sampler_seed, n_startup_trials),
                       make_pruner(pruner, n_startup_trials=min(2, n_startup_trials))
                       if isinstance(pruner, str) else pruner)
    target = min(n_trials, grid_size(space)) if sampler == "grid" else n_trials
    objective = make_objective(base_config, space, run_dir / study_name, split, callbacks)
    return optimize_until(study, objective, target)


def study_dataframe(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: ``number``, ``state``, ``value``, the parameters, ``status``,
    ``epochs``, ``seconds``, per-class Dice and ``run_dir`` (user attributes)."""
    frame = study.trials_dataframe(attrs=("number", "value", "params", "user_attrs", "state"))
    if frame.empty:
        return frame
    frame.columns = [c.removeprefix("params_").removeprefix("user_attrs_") for c in frame.columns]
    return frame.set_index("number")


def param_importances(study: optuna.Study) -> pd.Series:
    """fANOVA importance of each parameter for the objective (Hutter et al. 2014), summing
    to 1; empty when fewer than two trials completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return pd.Series(dtype=float, name="importance")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.Series(values, name="importance", dtype=float)


def plot_optimisation_history(study: optuna.Study, ax: Any = None, label: str | None = None,
                              color: Any = None, linestyle: str = "-") -> Any:
    """Each completed trial's Dice (dots; pruned trials as crosses at their last report)
    and the best so far (line in ``linestyle``: give studies that may share trials
    different ones), against the trial number. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    best, curve = -math.inf, []
    for t in trials:
        if t.state == TrialState.COMPLETE:
            best = max(best, t.value)
        curve.append(best if best > -math.inf else math.nan)
    line = ax.step([t.number for t in trials], curve, where="post", label=label, color=color,
                   linestyle=linestyle)
    color = line[0].get_color()
    ax.plot([t.number for t in done], [t.value for t in done], "o", color=color, alpha=0.6)
    ax.plot([t.number for t in pruned],
            [t.intermediate_values[max(t.intermediate_values)] for t in pruned], "x",
            color=color, alpha=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel="validation Dice")
    return ax


def plot_param_importances(study: optuna.Study, ax: Any = None) -> Any:
    """Horizontal bars of `param_importances`. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5, 3))[1]
    importances = param_importances(study).sort_values()
    if importances.empty:
        ax.text(0.5, 0.5, "fewer than two completed trials", ha="center", va="center",
                transform=ax.transAxes)
    else:
        ax.barh(importances.index, importances.values, color="0.4")
    ax.set(xlabel="importance (fANOVA)", xlim=(0, 1))
    return ax
