"""Hyper-parameter search (`tuning`) and cross-validation (`crossval`).

Training trials use the smoke profile with a depth-2, 4-channel U-Net for one or two
epochs on the smoke phantoms, generated once per module in a private folder.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from medseg_helpers import tuning
from medseg_helpers.training.callbacks import Callback
from medseg_helpers.training.config import TrainConfig
from medseg_helpers.tuning import crossval

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine two threads per op are much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def env(data_dir, tmp_path, monkeypatch) -> Path:
    """Private data (shared by the module) and run folders; returns the run folder."""
    monkeypatch.setenv("MEDSEG_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MEDSEG_RUN_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def tiny_config(**overrides) -> TrainConfig:
    values = {"max_epochs": 1, "model_kwargs": {"base_channels": 4, "depth": 2},
              "progress": False, "tensorboard": False, **overrides}
    return TrainConfig.from_profile("smoke", **values)


LR_SPACE = {"lr": tuning.SearchParam("float", 1e-4, 1e-2, log=True, grid=(1e-3, 1e-2))}
LR_DROPOUT = {**LR_SPACE, "dropout": tuning.SearchParam("float", 0.0, 0.5, grid=(0.0, 0.2))}


# ------------------------------------------------------------------ search space
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"kind": "categorical"}, "needs choices"),
    ({"kind": "float", "low": 1.0, "high": 0.1}, "low <= high"),
    ({"kind": "float", "low": 0.0, "high": 1.0, "log": True}, "log scale needs low > 0"),
    ({"kind": "bool"}, "kind must be"),
])
def test_invalid_search_param_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tuning.SearchParam(**kwargs)


def test_grid_values_default_to_choices_or_range_ends():
    assert tuning.SearchParam("categorical", choices=("a", "b")).grid_values() == ["a", "b"]
    assert tuning.SearchParam("float", 0.1, 0.9).grid_values() == [0.1, 0.9]
    assert tuning.grid_size(LR_DROPOUT) == 4  # 2 x 2


def test_apply_params_routes_model_and_config_fields():
    config = tuning.apply_params(tiny_config(), {"lr": 0.01, "dropout": 0.2, "depth": 3,
                                                 "augmentation": "none", "loss": "focal"})
    assert (config.lr, config.loss, config.augmentation) == (0.01, "focal", None)
    assert config.model_kwargs == {"base_channels": 4, "depth": 3, "dropout": 0.2}


def test_apply_params_turns_numpy_scalars_into_yaml_safe_numbers(tmp_path):
    config = tuning.apply_params(tiny_config(), {"lr": np.float64(3e-4), "depth": np.int64(3)})
    assert type(config.lr) is float and type(config.model_kwargs["depth"]) is int
    config.to_yaml(tmp_path / "config.yaml")  # a NumPy scalar would raise here


def test_apply_params_rejects_unknown_names():
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        tuning.apply_params(tiny_config(), {"learning_rate": 0.1})


def test_unknown_sampler_and_pruner_raise():
    with pytest.raises(ValueError, match="unknown sampler 'bayes'"):
        tuning.make_sampler("bayes", LR_SPACE)
    with pytest.raises(ValueError, match="unknown pruner"):
        tuning.make_pruner("hyperband")


def test_default_space_names_are_all_applicable():
    space = tuning.default_search_space()
    sample = {name: p.grid_values()[0] for name, p in space.items()}
    config = tuning.apply_params(tiny_config(), sample)
    assert config.batch_size == 8 and config.model_kwargs["depth"] == 2
    assert config.lr == 3e-4 and config.augmentation is None  # "none"


def test_study_key_changes_with_what_the_trials_learn_and_not_with_where_they_run():
    base, space = tiny_config(), dict(LR_SPACE)
    key = tuning.study_key(base, space)
    assert len(key) == 8 and int(key, 16) >= 0
    assert tuning.study_key(base.updated(run_dir="elsewhere", progress=True), space) == key
    wider = base.updated(model_kwargs={**base.model_kwargs, "base_channels": 16})
    assert tuning.study_key(wider, space) != key
    assert tuning.study_key(base.updated(cpu_bf16=not base.cpu_bf16), space) != key
    assert tuning.study_key(base, {**space, "depth": tuning.SearchParam("int", 2, 4)}) != key


# ------------------------------------------------------------------- pruning
class FakeTrainer:
    should_stop = False
    max_epochs = 3


def test_pruning_callback_stops_a_trial_below_the_median(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=tuning.make_pruner(
        "median", n_startup_trials=2, warmup_epochs=0))
    for good in (0.8, 0.9):  # two finished trials with Dice 0.8, 0.9 at epochs 1..3
        trial = study.ask()
        for epoch in (1, 2, 3):
            trial.report(good, epoch)
        study.tell(trial, good)
    trial, trainer = study.ask(), FakeTrainer()
    callback = tuning.PruningCallback(trial)
    callback.on_epoch_end(trainer, {"epoch": 1, "val_dice": 0.1})  # below the median 0.85
    assert trainer.should_stop and callback.pruned_epoch == 1
    trial2, trainer2 = study.ask(), FakeTrainer()
    tuning.PruningCallback(trial2).on_epoch_end(trainer2, {"epoch": 1, "val_dice": 0.95})
    assert not trainer2.should_stop
    trial3, trainer3 = study.ask(), FakeTrainer()  # bad, but at its last epoch: kept
    tuning.PruningCallback(trial3).on_epoch_end(trainer3, {"epoch": 3, "val_dice": 0.1})
    assert not trainer3.should_stop and trial3.should_prune()


def test_pruning_ends_the_run_cleanly(env):
    study = tuning.open_study("prune", tuning.default_storage(env), optuna.samplers.
                              RandomSampler(seed=0), optuna.pruners.ThresholdPruner(lower=0.99))
    objective = tuning.make_objective(tiny_config(max_epochs=3), LR_SPACE, env / "prune")
    tuning.optimize_until(study, objective, 1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["status"] == "pruned"
    metrics = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
    assert metrics["status"] == "stopped" and metrics["epochs_completed"] == 1  # of 3


# ------------------------------------------------------- storage, resume, workers
class InterruptSecondTrial(Callback):
    """Simulates Ctrl-C in the middle of the second trial's training."""

    def __init__(self) -> None:
        self.started = 0

    def on_train_begin(self, trainer) -> None:
        self.started += 1

    def on_epoch_end(self, trainer, logs) -> None:
        if self.started == 2:
            raise KeyboardInterrupt


def test_interrupted_study_resumes_from_sqlite(env):
    storage = tuning.default_storage(env)
    kwargs = {"study_name": "resume", "storage": storage, "sampler": "random",
              "space": LR_SPACE, "run_dir": env, "pruner": "none"}
    with pytest.raises(KeyboardInterrupt):
        tuning.run_study(tiny_config(), n_trials=3, callbacks=[InterruptSecondTrial()], **kwargs)
    before = optuna.load_study(study_name="resume", storage=storage)
    assert [t.state for t in before.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    first = before.trials[0]

    study = tuning.run_study(tiny_config(), n_trials=3, **kwargs)  # a new process would do this
    assert [t.number for t in study.trials] == [0, 1, 2, 3]  # numbering continues
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 3  # 1 failed, replaced
    assert study.trials[0].value == first.value and study.trials[0].params == first.params
    assert study.best_value >= first.value
    assert not (env / "resume" / "trial-001" / "metrics.json").exists()  # interrupted run
    assert (env / "resume" / "trial-003" / "metrics.json").exists()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() stands in
def test_a_dead_workers_silent_trial_is_replaced(tmp_path):
    # a worker died while its trial was running: its last heartbeat is older than the
    # grace period (3 heartbeats), and no other worker started a trial since
    study = tuning.open_study("dead", tuning.default_storage(tmp_path),
                              optuna.samplers.RandomSampler(seed=0), heartbeat_s=1)
    dead = study.ask()
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(4.5)  # > 3 s: SQLite stores the heartbeat to the whole second
    tuning.optimize_until(study, lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.FAIL and states[1:].count(TrialState.COMPLETE) == 2


def test_studies_sharing_a_run_dir_keep_their_trials_apart(env):
    for name in ("first", "second"):
        tuning.run_study(tiny_config(), n_trials=1, study_name=name, sampler="random",
                         space=LR_SPACE, run_dir=env, pruner="none")
    assert (env / "first" / "trial-000").is_dir() and (env / "second" / "trial-000").is_dir()
    assert {s.study_name for s in optuna.get_all_study_summaries(
        tuning.default_storage(env))} == {"first", "second"}  # one database


def test_grid_study_covers_its_grid_and_stops(env):
    study = tuning.run_study(tiny_config(), n_trials=10, study_name="grid", sampler="grid",
                             space=LR_DROPOUT, run_dir=env, pruner="none")
    visited = {(t.params["lr"], t.params["dropout"]) for t in study.trials}
    assert len(study.trials) == 4
    assert visited == set(itertools.product((1e-3, 1e-2), (0.0, 0.2)))
    table = tuning.study_dataframe(study)
    assert {"value", "lr", "dropout", "status", "run_dir", "state"} <= set(table.columns)


def test_two_worker_processes_share_one_study(env, data_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    command = [sys.executable, "-m", "medseg_helpers.cli", "tune", "--profile", "smoke",
               "--epochs", "1", "--trials", "4", "--sampler", "random", "--params", "lr",
               "dropout", "--storage", storage, "--study-name", "shared",
               "--run-dir", str(env)]
    environ = {**os.environ, "MEDSEG_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    tiny_config()  # make sure the dataset exists before two processes look for it
    crossval.outer_split(tiny_config())
    workers = [subprocess.Popen(command, env=environ, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = [t.number for t in study.trials]
    # 4 trials, or 5 if both workers checked the budget at the same instant
    assert 4 <= len(numbers) <= 5 and len(set(numbers)) == len(numbers)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    run_dirs = {t.user_attrs["run_dir"] for t in study.trials}
    assert len(run_dirs) == len(numbers)  # no trial trained twice in one folder
    params = {(t.params["lr"], t.params["dropout"]) for t in study.trials}
    assert len(params) == len(numbers)  # workers' samplers are not in lockstep


# ---------------------------------------------------------------- cross-validation
def test_development_folds_keep_the_test_patients_out(env):
    config = tiny_config(val_fraction=0.25, test_fraction=0.25)
    outer, folds = crossval.development_folds(config, n_folds=2)
    develop = set(outer.train) | set(outer.val)
    assert outer == crossval.outer_split(config)
    assert len(folds) == 2 and set(folds[0].val) | set(folds[1].val) == develop
    for fold in folds:
        assert fold.test == outer.test and not set(fold.val) & set(fold.train)
        assert set(fold.train) | set(fold.val) == develop


def test_cross_validate_trains_each_fold_on_its_split(env):
    config = tiny_config(val_fraction=0.25, test_fraction=0.25)
    outer, folds = crossval.development_folds(config, n_folds=2)
    table = crossval.cross_validate(config, folds, env / "cv")
    assert list(table["fold"]) == [0, 1] and table["best_val_dice"].between(0, 1).all()
    saved = json.loads((env / "cv" / "fold-1" / "splits.json").read_text())[0]
    assert sorted(saved["val"]) == sorted(folds[1].val)
    result = crossval.evaluate_run(env / "cv" / "fold-0", outer.test)
    assert result["num_patients"] == len(outer.test) and 0 <= result["dice"] <= 1


def test_one_standard_error_rule_ties_close_candidates_and_ships_the_conservative_one():
    # a: mean 0.80, std 0.1 over 4 folds -> standard error 0.05; b (0.76) ties, c (0.70)
    # does not. b and a share lr 0.01; b has the larger weight decay, so it is chosen.
    spread = 0.1 * np.sqrt(1.5)  # four folds 0.8 -+ spread, 0.8, 0.8: sample std 0.1
    folds = {"a": [0.8 - spread, 0.8, 0.8, 0.8 + spread], "b": [0.76] * 4, "c": [0.70] * 4}
    params = {"a": {"lr": 1e-2, "weight_decay": 1e-4}, "b": {"lr": 1e-2, "weight_decay": 1e-2},
              "c": {"lr": 1e-4, "weight_decay": 0.0}}
    choice = crossval.choose_one_standard_error(folds, params)
    assert choice.best == "a" and choice.tied == ("a", "b")
    assert choice.standard_error == pytest.approx(0.05)
    assert choice.chosen == "b"
    # a lower learning rate outranks weight decay among ties
    params["a"]["lr"] = 1e-3
    assert crossval.choose_one_standard_error(folds, params).chosen == "a"
    with pytest.raises(ValueError, match="at least 2 fold scores"):
        crossval.choose_one_standard_error({"a": [0.5]}, params)
    with pytest.raises(ValueError, match="no lr / weight_decay"):
        crossval.choose_one_standard_error({"z": [0.5, 0.6]}, params)
