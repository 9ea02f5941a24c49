"""One training configuration for notebook, CLI and papermill alike: `TrainConfig`.

A config starts from a profile (`TrainConfig.from_profile`), which picks epochs, batch
size, model width, 3D patch size and dataset; any field can be overridden by keyword (a
papermill parameter, a CLI flag) and the result round-trips through YAML::

    config = TrainConfig.from_profile("full", spatial_dims=3, lr=3e-4)
    config.to_yaml("run.yaml")                   # medseg train --config run.yaml
    assert TrainConfig.from_yaml("run.yaml") == config

Unknown keys are errors (with the closest valid name), so a misspelt override never
silently falls back to a default. Values are coerced to the field's type, so YAML that
PyYAML reads as a string still works (``lr: 1e-3`` becomes ``0.001``) and a value that
cannot be one is a ``ValueError`` naming the field (``lr: expected a number, got 'abc'``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import numbers
import os
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from medseg_helpers.course.profiles import profile_defaults
from medseg_helpers.fileutil import write_text_atomic
from medseg_helpers.training.schedules import OPTIMIZERS, SCHEDULERS

__all__ = ["TrainConfig"]

_TUPLE_FIELDS = ("patch_size", "sw_roi_size", "crop_size", "centre_ratios")
#: Fields that change how a run is shown or where it runs, not what it learns.
VOLATILE_FIELDS = ("progress", "tensorboard", "resume", "device", "num_workers", "run_dir",
                   "data_dir")
_COMMON_MISTAKES = {"learning_rate": "lr", "epochs": "max_epochs", "optimiser": "optimizer",
                    "out_channels": "num_classes", "clip": "grad_clip_norm"}


@dataclass
class TrainConfig:
    """Everything `medseg_helpers.training.job.train_from_config` needs to run one training.

    Attributes:
        model: name for `medseg_helpers.networks.build_model` (``"unet"``, ``"monai_unet"``...).
        model_kwargs: constructor overrides, e.g. ``{"base_channels": 16}``.
        spatial_dims: 2 (slices, ``(B, C, H, W)``) or 3 (patches, ``(B, C, D, H, W)``).
        in_channels: image channels.
        num_classes: classes including background; None: from the dataset's labels.
        loss: loss name (``"dice_ce"``, ``"dice"``, ``"ce"``, ``"focal"``, ``"tversky"``).
        loss_kwargs: keyword arguments for the loss.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: base learning rate.
        weight_decay: weight decay (decoupled for AdamW).
        momentum: SGD momentum. nesterov: SGD Nesterov momentum.
        scheduler: ``"constant"``, ``"cosine"``, ``"step"``, ``"poly"`` or ``"plateau"``.
        warmup_epochs: linear warm-up (cosine), in epochs.
        scheduler_kwargs: more `schedules.build_scheduler` arguments (lengths in steps).
        max_epochs: epochs to train. batch_size: per process.
        patch_size: 3D training patch ``(D, H, W)``; also the sliding-window size for 3D
            validation unless ``sw_roi_size`` is set. Unused in 2D (whole slices).
        sw_roi_size: sliding-window size for validation (None: ``patch_size`` in 3D).
        sw_batch_size: windows per forward pass in sliding-window validation.
        val_every: validate every this many epochs. patience: early-stopping patience in
            epochs (None: off).
        seed: seeds RNGs, the split and the data order.
        amp: mixed precision on CUDA (float16 with loss scaling).
        cpu_bf16: bfloat16 autocast on a CPU with AVX-512 BF16 or AMX (ignored on other
            CPUs, where it would be emulated). Off by default: on an AMX Xeon it trained
            the course model 1.4x faster but 0.014 lower in test mean Dice (0.03 on the
            lesion), paired over seeds 0-2 (`benchmarks/bench_course_model.py`).
        grad_clip_norm: None disables clipping.
        profile: ``full``, ``smoke`` or ``decathlon`` (see `medseg_helpers.course.profiles`).
        dataset: ``"synthetic"`` or a Decathlon task such as ``"Task04_Hippocampus"``.
        data_dir: a Decathlon-layout folder; None: the profile's dataset (generated or
            downloaded by `course_data.ensure_course_dataset`).
        run_dir: output folder; None: ``$MEDSEG_RUN_DIR/train-<profile>-<model>-<dims>d``.
        val_fraction: share of patients for validation (split by patient).
        test_fraction: share of patients held out for the final evaluation (never seen in
            training or model selection); the split is saved as ``run_dir/splits.json``.
        augmentation: 2D/3D augmentation preset (``light``, ``medium``, ``heavy``) or None.
        empty_slice_fraction: share of background-only slices kept per epoch (2D, whole
            slices).
        crop_size: 2D only: train on random ``(H, W)`` crops of the slices, centred by
            ``centre_ratios`` (`data.crop_dataset.SliceCropDataset`), instead of whole
            slices; None: whole slices. Validation always predicts whole slices.
        centre_ratios: with ``crop_size``: relative shares of crop centres per class;
            index 0 is anywhere (mostly background), ``k >= 1`` a pixel of class ``k``.
        samples_per_epoch: with ``crop_size``: crops per epoch.
        num_workers: DataLoader worker processes.
        device: ``"cpu"``, ``"cuda"``... None: automatic.
        resume: continue from ``run_dir/checkpoints/last.pt`` if it exists.
        progress: show progress bars. tensorboard: log to TensorBoard if installed.
    """

    model: str = "unet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    spatial_dims: int = 2
    in_channels: int = 1
    num_classes: int | None = None
    loss: str = "dice_ce"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.99
    nesterov: bool = True
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    max_epochs: int = 10
    batch_size: int = 8
    patch_size: tuple[int, ...] | None = None
    sw_roi_size: tuple[int, ...] | None = None
    sw_batch_size: int = 4
    val_every: int = 1
    patience: int | None = None
    seed: int = 0
    amp: bool = True
    cpu_bf16: bool = False
    grad_clip_norm: float | None = 12.0
    profile: str = "smoke"
    dataset: str = "synthetic"
    data_dir: str | None = None
    run_dir: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    augmentation: str | None = "light"
    empty_slice_fraction: float = 0.2
    crop_size: tuple[int, ...] | None = None
    centre_ratios: tuple[float, ...] = (1.0, 1.0, 2.0)
    samples_per_epoch: int = 1024
    num_workers: int = 0
    device: str | None = None
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        problems = []
        types = _field_types()
        for item in fields(self):
            try:
                setattr(self, item.name, _coerce(getattr(self, item.name), types[item.name]))
            except ValueError as err:
                problems.append(f"{item.name}: {err}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))
        if self.spatial_dims not in (2, 3):
            problems.append(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler {self.scheduler!r} not in {SCHEDULERS}")
        for name in ("lr", "max_epochs", "batch_size", "val_every", "in_channels",
                     "samples_per_epoch"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if value is not None and len(value) != self.spatial_dims and self.spatial_dims == 3:
                problems.append(f"{name} {value} must have {self.spatial_dims} values")
        if self.crop_size is not None and (self.spatial_dims != 2 or len(self.crop_size) != 2):
            problems.append(f"crop_size {self.crop_size} is for 2D training: (H, W)")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    # ------------------------------------------------------------- construction
    @classmethod
    def from_profile(cls, profile: str | None = None, **overrides: Any) -> TrainConfig:
        """Defaults of ``profile`` (`config.profile_defaults`), then ``overrides``.

        The profile sets ``max_epochs``, ``batch_size``, ``dataset``, the 3D
        ``patch_size``, the model width (``base_channels`` of our U-Net, or the
        equivalent ``channels``/``features`` of MONAI's U-Nets) and, for 2D training,
        its crops (``crop_size``, ``samples_per_epoch``; ``crop_size=None`` trains on
        whole slices) and ``cpu_bf16``.

        Raises:
            ValueError: an unknown profile or override name (closest field suggested).
        """
        _check_keys(overrides)
        defaults = profile_defaults(profile)
        spatial_dims = overrides.get("spatial_dims", 2)
        model = overrides.get("model", cls.model)
        base = {"profile": defaults.name, "dataset": defaults.dataset,
                "max_epochs": defaults.max_epochs, "batch_size": defaults.batch_size,
                "patch_size": defaults.patch_size_3d if spatial_dims == 3 else None,
                "crop_size": defaults.crop_size if spatial_dims == 2 else None,
                "samples_per_epoch": defaults.samples_per_epoch, "cpu_bf16": defaults.cpu_bf16,
                "model_kwargs": _width_kwargs(model, spatial_dims, defaults.base_channels)}
        model_kwargs = {**base["model_kwargs"], **overrides.pop("model_kwargs", {})}
        return cls(**{**base, **overrides, "model_kwargs": model_kwargs})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (e.g. parsed YAML); unknown keys raise ``ValueError``."""
        _check_keys(values)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (tuples as lists): safe for YAML, JSON and checkpoints."""
        values = asdict(self)
        for name in _TUPLE_FIELDS:
            if values[name] is not None:
                values[name] = list(values[name])
        return values

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write the config as YAML (atomically) and return the path."""
        import yaml

        return write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a YAML file written by `to_yaml` (or by hand; missing keys get defaults)."""
        import yaml

        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(values)}")
        return cls.from_dict(values)

    def updated(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated like the constructor)."""
        _check_keys(changes)
        return replace(self, **changes)


def learning_fields(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``config`` (or of its saved ``to_dict``) that define what a run
    learns: all but `VOLATILE_FIELDS`. Two runs whose learning fields are equal on the
    same data train the same model, so a cached run may stand in for the other."""
    values = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    return {k: v for k, v in values.items() if k not in VOLATILE_FIELDS}


@functools.cache
def _field_types() -> dict[str, Any]:
    """``{field name: resolved type}`` of `TrainConfig` (its annotations are strings)."""
    return typing.get_type_hints(TrainConfig)


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (a `TrainConfig` annotation); ``ValueError`` if it is not one.

    ``X | None`` keeps None; ``float`` takes numbers and numeric strings (``"1e-3"``);
    ``int`` takes whole numbers and integer strings; ``bool`` only booleans; ``str`` strings
    and paths; ``tuple[int, ...]`` a list or tuple of integers; ``dict`` a mapping.
    """
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        (hint,) = (a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    if hint is Any:
        return value
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if origin is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and float(value).is_integer():
            return int(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.strip())
        raise ValueError(f"expected an integer, got {value!r}")
    if origin is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value.strip())
        raise ValueError(f"expected a number, got {value!r}")
    if origin is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise ValueError(f"expected a string, got {value!r}")
    if origin is tuple:
        item = typing.get_args(hint)[0]  # tuple[int, ...] or tuple[float, ...]
        if isinstance(value, (list, tuple)):
            try:
                return tuple(_coerce(v, item) for v in value)
            except ValueError:
                pass
        kind = "integers" if item is int else "numbers"
        raise ValueError(f"expected a list of {kind}, got {value!r}")
    if origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ValueError(f"expected a mapping, got {value!r}")
    raise TypeError(f"no coercion for the annotation {hint!r}")


def _check_keys(values: dict[str, Any]) -> None:
    known = [f.name for f in fields(TrainConfig)]
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = [_COMMON_MISTAKES[key]] if key in _COMMON_MISTAKES else \
                difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise ValueError(f"unknown TrainConfig field(s): {', '.join(hints)}")


def _width_kwargs(model: str, spatial_dims: int, base: int) -> dict[str, Any]:
    """Model-size arguments for a base width, per registry model (empty if unknown)."""
    if model == "unet":
        return {"base_channels": base}
    if model in ("monai_unet", "monai_attention_unet"):
        return {"channels": [base, 2 * base, 4 * base, 8 * base], "strides": [2, 2, 2]}
    if model == "monai_basic_unet":
        return {"features": [base, 2 * base, 4 * base, 8 * base, 16 * base, base]}
    if model == "monai_segresnet":
        return {"init_filters": base}
    return {}
