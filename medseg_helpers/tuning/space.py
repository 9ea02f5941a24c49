"""Search spaces for hyper-parameter studies: what may vary, and how a draw becomes a config.

A space is ``{name: SearchParam}``. `apply_params` turns one draw into a `TrainConfig`:
names in `MODEL_PARAMS` go into the model's arguments, the rest are config fields.
`medseg_helpers.tuning.search` runs studies over a space with Optuna.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import optuna

from medseg_helpers.training.config import TrainConfig, learning_fields

#: Search-space names that go into ``TrainConfig.model_kwargs`` (our U-Net's arguments).
MODEL_PARAMS = ("dropout", "depth", "base_channels")


@dataclass(frozen=True)
class SearchParam:
    """One dimension of a search space.

    Attributes:
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low, high: range of ``float``/``int`` parameters (inclusive).
        log: sample on a log scale (learning rate, weight decay).
        choices: values of a ``categorical`` parameter (str, int, float, bool or None).
        grid: values the grid sampler visits; default ``choices``, or ``(low, high)``.
    """

    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    grid: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError("a categorical SearchParam needs choices")
        elif self.kind in ("float", "int"):
            if self.low is None or self.high is None or not self.low <= self.high:
                raise ValueError(f"a {self.kind} SearchParam needs low <= high, "
                                 f"got {self.low}, {self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"log scale needs low > 0, got {self.low}")
        else:
            raise ValueError(f"kind must be float, int or categorical, got {self.kind!r}")

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Ask ``trial`` for a value of this parameter called ``name``."""
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def grid_values(self) -> list[Any]:
        """The values the grid sampler visits."""
        return list(self.grid or self.choices or (self.low, self.high))


def default_search_space() -> dict[str, SearchParam]:
    """The course's search space for the 2D U-Net (pick a subset for a small budget).

    ``lr`` 1e-4 to 3e-2 and ``weight_decay`` 1e-6 to 1e-1 on log scales; ``dropout``
    0 to 0.5; ``loss``; ``depth`` 2 to 4 and ``base_channels`` (width); ``batch_size``
    (crops per step; with ``samples_per_epoch`` fixed, a larger batch makes fewer steps
    per epoch); ``augmentation`` strength (``"none"`` is no augmentation).
    """
    return {
        "lr": SearchParam("float", 1e-4, 3e-2, log=True, grid=(3e-4, 3e-3, 3e-2)),
        "weight_decay": SearchParam("float", 1e-6, 1e-1, log=True, grid=(1e-5, 1e-2)),
        "dropout": SearchParam("float", 0.0, 0.5, grid=(0.0, 0.25)),
        "loss": SearchParam("categorical", choices=("dice_ce", "dice", "focal")),
        "depth": SearchParam("int", 2, 4, grid=(2, 3)),
        "base_channels": SearchParam("categorical", choices=(8, 16, 32)),
        "batch_size": SearchParam("categorical", choices=(8, 16, 32)),
        "augmentation": SearchParam("categorical", choices=("none", "light", "medium", "heavy")),
    }


def apply_params(config: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """``config`` with sampled ``params`` applied.

    Names in `MODEL_PARAMS` go into ``model_kwargs``; ``augmentation="none"`` means None;
    every other name must be a `TrainConfig` field. NumPy scalars become Python numbers
    (the config is saved as YAML).

    Raises:
        ValueError: an unknown name (closest field suggested).
    """
    model_kwargs = dict(config.model_kwargs)
    changes: dict[str, Any] = {}
    for name, value in params.items():
        value = value.item() if isinstance(value, np.generic) else value  # YAML-safe
        if name in MODEL_PARAMS:
            model_kwargs[name] = value
        elif name == "augmentation":
            changes[name] = None if value in (None, "none") else value
        else:
            changes[name] = value
    return config.updated(**changes, model_kwargs=model_kwargs)


def grid_size(space: Mapping[str, SearchParam]) -> int:
    """Number of grid points (product of the parameters' grid lengths)."""
    return int(np.prod([len(p.grid_values()) for p in space.values()]))


def study_key(base_config: TrainConfig, space: Mapping[str, SearchParam]) -> str:
    """8 hex digits that change with anything that defines a study's trials: the base
    config's `learning_fields` and the search space. Put it in the study's name, so that a
    changed width, epoch count or space starts a new study instead of resuming an old one
    whose trials measured something else."""
    text = json.dumps({"config": learning_fields(base_config),
                       "space": {name: asdict(p) for name, p in sorted(space.items())}},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
