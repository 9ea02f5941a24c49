"""The course's trained model: trained once by notebook 05, reused by notebooks 06-10.

`course_model_config` is the one recipe (a `TrainConfig`) for a profile;
`ensure_trained_model` loads the model that recipe produced under the run directory or,
when a notebook runs standalone, trains it first. `TrainedModel` bundles the network with
what evaluation needs: its config, class names, the saved patient split and a `predict`
that returns a label map on the **source** image grid (so metrics use the scan's real
spacing in mm), after the run's post-processing rule: predicted components too small to be
real, chosen on the validation patients when the model was trained
(`choose_postprocessing`, saved as `POSTPROCESSING_FILE`)::

    trained = ensure_trained_model(course_model_config("full"))
    for patient_id in trained.split.test:
        pred = trained.predict(patient_id)             # Volume (Z, Y, X), uint8
        truth = trained.read_label(patient_id)         # Volume, same grid
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medseg_helpers.course.profiles import (
    COURSE_MODEL_COMMON,
    COURSE_MODEL_RECIPES,
    profile_defaults,
)
from medseg_helpers.data.splits import PatientSplit, load_splits
from medseg_helpers.data.volume import Volume
from medseg_helpers.device import get_device
from medseg_helpers.fileutil import write_text_atomic
from medseg_helpers.inferers import predict_logits
from medseg_helpers.training.checkpoint import load_checkpoint, load_model_weights
from medseg_helpers.training.config import TrainConfig, learning_fields
from medseg_helpers.transforms.postprocess import (
    SmallComponentFilter,
    choose_small_component_filter,
    smallest_components_mm3,
)

logger = logging.getLogger(__name__)

__all__ = ["INIT_WEIGHTS_FILE", "POSTPROCESSING_FILE", "TrainedModel", "choose_postprocessing",
           "course_model_config", "ensure_trained_model", "load_trained_model",
           "weights_digest"]

#: Beside a run fine-tuned from given weights: their `weights_digest`.
INIT_WEIGHTS_FILE = "init_weights.sha256"
#: Beside a trained run: its `SmallComponentFilter` (JSON), chosen on validation patients.
POSTPROCESSING_FILE = "postprocessing.json"


def course_model_config(profile: str | None = None, *,
                        run_root: str | os.PathLike | None = None,
                        **overrides: Any) -> TrainConfig:
    """The recipe of the course's main model for ``profile`` (a 2D U-Net with Dice+CE).

    The profile's defaults (`TrainConfig.from_profile`), then the course's choices for
    that profile (`course.profiles.COURSE_MODEL_COMMON` and `COURSE_MODEL_RECIPES`: loss,
    depth, learning rate, warm-up...), then
    ``overrides``. Notebook 05 trains it; later notebooks reuse it through
    `ensure_trained_model`.

    Args:
        profile: ``full`` | ``smoke`` | ``decathlon``; None: ``$MEDSEG_PROFILE``, else ``full``.
        run_root: the folder that holds the course's runs (a notebook's ``RUN_DIR``); the
            run itself is ``<run_root>/train-<profile>-<model>-<dims>d``. None:
            ``$MEDSEG_RUN_DIR``. An explicit ``run_dir=`` override wins.
        **overrides: `TrainConfig` fields (``model_kwargs`` are merged, not replaced).
    """
    from medseg_helpers.training.job import default_run_dir

    name = profile_defaults(profile).name
    recipe = copy.deepcopy({**COURSE_MODEL_COMMON, **COURSE_MODEL_RECIPES[name]})
    ours = recipe.pop("model_kwargs") if overrides.get("model", "unet") == "unet" else {}
    model_kwargs = {**ours, **overrides.pop("model_kwargs", {})}
    config = TrainConfig.from_profile(name, **{**recipe, **overrides,
                                               "model_kwargs": model_kwargs})
    if run_root is not None and not config.run_dir:
        config = config.updated(run_dir=str(Path(run_root) / default_run_dir(config).name))
    return config


@dataclass
class TrainedModel:
    """A trained network (in eval mode) and what is needed to evaluate it.

    Attributes:
        model: the network, on ``device``, in ``eval()`` mode.
        config: the `TrainConfig` it was trained with.
        run_dir: its run directory (``config.yaml``, ``splits.json``, ``checkpoints/``...).
        dataset_dir: the Decathlon-layout folder it was trained on.
        split: train/val/test patient ids; ``test`` was never used in training.
        class_names: all class names in label order, background first.
        metrics: the run's ``metrics.json`` (``best_val_dice``...).
        device: where ``model`` runs.
        postprocessing: applied to every label map `predict` returns (empty: none).
    """

    model: nn.Module
    config: TrainConfig
    run_dir: Path
    dataset_dir: Path
    split: PatientSplit
    class_names: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    postprocessing: SmallComponentFilter = field(default_factory=SmallComponentFilter)

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.class_names)

    @cached_property
    def cache(self) -> Any:
        """The `slice_cache.SliceCache` holding the preprocessed (z-scored) images."""
        from medseg_helpers.training.job import open_slice_cache

        return open_slice_cache(self.dataset_dir)

    @cached_property
    def cases(self) -> dict[str, Any]:
        """``{patient_id: decathlon.Case}`` with the source image and label paths."""
        from medseg_helpers.data.decathlon import read_decathlon

        return {case.patient_id: case for case in read_decathlon(self.dataset_dir)}

    def preprocessed(self, patient_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's view of a case: image ``(C, D, H, W)`` float32 (z-scored, padded
        to the cache's slice shape) and label ``(D, H, W)`` int64."""
        case = self.cache.cases[patient_id]
        image = np.array(self.cache.images[case.start:case.stop])  # (D, C, H, W)
        label = np.array(self.cache.labels[case.start:case.stop])  # (D, H, W)
        return torch.from_numpy(image).transpose(0, 1).contiguous(), torch.from_numpy(label).long()

    def predict_logits(self, patient_id: str) -> torch.Tensor:
        """Logits ``(K, D, H, W)`` on the preprocessed grid (see `preprocessed`)."""
        image, _ = self.preprocessed(patient_id)
        roi = self.config.sw_roi_size or self.config.patch_size
        return predict_logits(self.model, image, self.config.spatial_dims, roi_size=roi,
                              batch_size=2 * self.config.batch_size, device=self.device)

    def to_source_grid(self, patient_id: str, array: np.ndarray | torch.Tensor) -> Volume:
        """Map a preprocessed-grid array back onto the source scan's grid.

        Args:
            array: ``(D, H, W)`` labels (nearest) or ``(K, D, H, W)`` probabilities (linear).
        """
        array = np.asarray(array)
        slices = array if array.ndim == 3 else np.moveaxis(array, 0, 1)  # (D, K, H, W)
        return self.cache.merge_case(patient_id, slices)

    def predict(self, patient_id: str, probabilities: bool = False,
                postprocess: bool = True) -> Volume:
        """The model's segmentation of one case on the source grid.

        Args:
            probabilities: return softmax probabilities instead of labels.
            postprocess: apply ``postprocessing`` to the labels (False: the raw argmax).

        Returns:
            a `Volume` with the source geometry: ``(Z, Y, X)`` uint8 labels, or with
            ``probabilities=True`` ``(K, Z, Y, X)`` float32 softmax probabilities.
        """
        logits = self.predict_logits(patient_id)
        if probabilities:
            return self.to_source_grid(patient_id, torch.softmax(logits, 0).numpy())
        labels = self.to_source_grid(patient_id, logits.argmax(0).numpy().astype(np.uint8))
        return self.postprocessing.apply(labels) if postprocess else labels

    def read_image(self, patient_id: str) -> Volume:
        """The source image, as stored (not normalised)."""
        from medseg_helpers.data.io import read_volume

        return read_volume(self.cases[patient_id].image_path)

    def read_label(self, patient_id: str) -> Volume:
        """The source ground-truth label map."""
        from medseg_helpers.data.io import read_volume

        return read_volume(self.cases[patient_id].label_path)


def load_trained_model(run_dir: str | os.PathLike, which: str = "best",
                       device: torch.device | str | None = None) -> TrainedModel:
    """Load the model a `train_from_config` run wrote to ``run_dir``.

    Args:
        run_dir: the run directory (holds ``config.yaml`` and ``checkpoints/``).
        which: ``"best"`` (highest validation Dice) or ``"last"``; falls back to the other
            when the requested file is missing.
        device: where to put the model; None: `get_device`.

    Raises:
        FileNotFoundError: no config or checkpoint in ``run_dir`` (train first).
        CheckpointMismatchError: the checkpoint does not fit the configured model.
    """
    from medseg_helpers.data.decathlon import read_class_names
    from medseg_helpers.networks import build_model
    from medseg_helpers.training.job import resolve_dataset_dir

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: train a model there first "
                                "(notebook 05, or medseg train)")
    config = TrainConfig.from_yaml(config_path)
    names = ["best.pt", "last.pt"] if which == "best" else ["last.pt", "best.pt"]
    found = [run_dir / "checkpoints" / n for n in names if (run_dir / "checkpoints" / n).is_file()]
    if not found:
        raise FileNotFoundError(f"{run_dir}/checkpoints holds neither best.pt nor last.pt")
    dataset_dir = resolve_dataset_dir(config)
    class_names = read_class_names(dataset_dir)
    device = torch.device(device) if device is not None else get_device()
    model = build_model(config.model, config.spatial_dims, config.in_channels, len(class_names),
                        **config.model_kwargs)
    load_model_weights(model, load_checkpoint(found[0]))
    split_file = run_dir / "splits.json"
    if split_file.is_file():
        split = load_splits(split_file)[0]
    else:  # a run copied without splits.json: the split is a pure function of the config
        from medseg_helpers.training.job import open_slice_cache, patient_split

        split = patient_split(config, open_slice_cache(dataset_dir), len(class_names))
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    rule_file = run_dir / POSTPROCESSING_FILE
    postprocessing = (SmallComponentFilter.from_json(rule_file.read_text(encoding="utf-8"))
                      if rule_file.is_file() else SmallComponentFilter())
    return TrainedModel(model.to(device).eval(), config, run_dir, dataset_dir, split,
                        class_names, metrics, device, postprocessing)


def choose_postprocessing(trained: TrainedModel) -> tuple[SmallComponentFilter, pd.DataFrame]:
    """Choose the model's post-processing on its validation patients and save it.

    For each foreground class, candidate minimum component volumes are fractions of the
    smallest component in the training patients' labels; one is kept only if it raises
    that class's mean validation Dice (`choose_small_component_filter`). The rule is written
    to ``run_dir / POSTPROCESSING_FILE`` and set on ``trained``.

    Returns:
        the rule and the validation table (one row per class and candidate volume; the
        class by name).
    """
    classes = range(1, trained.num_classes)
    smallest = smallest_components_mm3((trained.read_label(p) for p in trained.split.train),
                                       classes)
    validation = ((p, trained.predict(p, postprocess=False), trained.read_label(p))
                  for p in trained.split.val)
    rule, table = choose_small_component_filter(validation, trained.num_classes, smallest)
    write_text_atomic(trained.run_dir / POSTPROCESSING_FILE, rule.to_json() + "\n")
    trained.postprocessing = rule
    logger.info("post-processing chosen on %d validation patients: %s", len(trained.split.val),
                rule.describe(trained.class_names))
    return rule, table.assign(**{"class": [trained.class_names[c] for c in table["class"]]})


def ensure_trained_model(config: TrainConfig | None = None, *, retrain: bool = False,
                         device: torch.device | str | None = None,
                         init_weights: Mapping[str, torch.Tensor] | None = None
                         ) -> TrainedModel:
    """The model for ``config``: loaded if a finished run with the same recipe exists,
    otherwise trained now (which takes the profile's training time).

    Args:
        config: the recipe; None: `course_model_config` of ``$MEDSEG_PROFILE``.
        retrain: train even when a matching finished run exists.
        device: where to put the loaded model.
        init_weights: a state dict to start from when it has to train (fine-tuning, see
            `training.job.train_from_config`). Its `weights_digest` is saved with the run
            (`INIT_WEIGHTS_FILE`) and is part of what decides reuse: a run fine-tuned
            from other weights (or trained from scratch) is trained again.

    A run without a post-processing rule gets one (`choose_postprocessing`).
    """
    from medseg_helpers.training.job import default_run_dir, train_from_config

    config = config or course_model_config()
    run_dir = default_run_dir(config)
    digest = weights_digest(init_weights) if init_weights is not None else None
    if not retrain and _finished_with(run_dir, config, digest):
        logger.info("reusing the model trained in %s", run_dir)
    else:
        logger.info("training %s (no finished run with this recipe in %s)", config.model, run_dir)
        (run_dir / INIT_WEIGHTS_FILE).unlink(missing_ok=True)
        (run_dir / POSTPROCESSING_FILE).unlink(missing_ok=True)
        train_from_config(config.updated(resume=False), init_weights=init_weights)
        if digest is not None:
            write_text_atomic(run_dir / INIT_WEIGHTS_FILE, digest + "\n")
    trained = load_trained_model(run_dir, device=device)
    if not (run_dir / POSTPROCESSING_FILE).is_file() and trained.split.val:
        choose_postprocessing(trained)
    return trained


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values (hex): equal for equal
    weights, whatever device or object holds them."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{values.dtype}:{tuple(values.shape)};".encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _finished_with(run_dir: Path, config: TrainConfig, init_digest: str | None) -> bool:
    """Whether ``run_dir`` holds a completed run of the same recipe, started from the same
    weights (``init_digest``; None: from scratch)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        saved = TrainConfig.from_yaml(run_dir / "config.yaml")
        init_file = run_dir / INIT_WEIGHTS_FILE
        saved_digest = init_file.read_text(encoding="utf-8").strip() if init_file.exists() \
            else None
    except (OSError, ValueError):
        return False
    return (metrics.get("status") in ("completed", "early_stopped")
            and (run_dir / "checkpoints" / "best.pt").is_file()
            and learning_fields(saved) == learning_fields(config)
            and saved_digest == init_digest)
