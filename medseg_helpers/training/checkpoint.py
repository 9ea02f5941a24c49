"""Checkpoints that are safe to load, written atomically, and enough for an exact resume.

A checkpoint is a plain dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, PyTorch's safe loader: it only rebuilds tensors and
plain Python values (dict, list, tuple, str, int, float, bool, None), never arbitrary
objects, so opening a downloaded checkpoint cannot run code. Everything stored is therefore
converted first (`to_plain`): NumPy's RNG state (an ndarray inside a tuple) becomes a
tensor, paths become strings, NumPy scalars become Python numbers. Without that,
``weights_only=True`` refuses the file ("Unsupported global: numpy...").

The `Trainer` stores (see ``Trainer.state_dict``): ``model``, ``model_class``,
``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``global_step``,
``best_metric``, ``best_epoch``, ``history``, ``rng`` (`capture_rng_state`) and ``config``.

Files are written to a temporary name beside the target, flushed to disk and renamed
(`atomic_path`), so an interrupted save (a kill, a power loss) never leaves a truncated
``last.pt``; the previous one stays valid. The temporaries of killed saves
(``.last.<pid>.<random>.tmp.pt``) are removed by the next `save_checkpoint` of the same file
(`remove_stale_temporaries`). A file that is damaged anyway (copied halfway, written by an
older version without ``fsync``) raises `CheckpointReadError`: one line naming the file and
the problem, e.g. ``runs/x/checkpoints/last.pt is empty (0 bytes): ...``.
"""

from __future__ import annotations

import contextlib
import os
import random
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg_helpers.fileutil import atomic_path, remove_stale_temporaries

FORMAT_VERSION = 1

__all__ = ["FORMAT_VERSION", "CheckpointMismatchError", "CheckpointReadError",
           "capture_rng_state", "load_checkpoint",
           "load_model_weights", "model_class_name", "preserve_rng", "restore_rng_state",
           "save_checkpoint", "to_plain", "unwrap_model"]


class CheckpointMismatchError(ValueError):
    """A checkpoint's model weights do not fit the model they are loaded into."""


class CheckpointReadError(ValueError):
    """A checkpoint file is empty, truncated, unreadable or not a safe medseg checkpoint.

    A `ValueError`, so the ``medseg`` command line prints it as one line.
    """


def to_plain(value: Any) -> Any:
    """``value`` with paths, NumPy values and dataclass-like objects made ``weights_only`` safe.

    Tensors, None, bool, int, float and str pass through; mappings (keys and values), lists
    and tuples are converted recursively (tuples stay tuples, int keys stay int: optimiser
    state is keyed by int); ``os.PathLike`` becomes ``str``; NumPy scalars become Python
    numbers and arrays become tensors. Unlike `medseg_helpers.fileutil.to_json_ready` (for
    JSON and YAML files) it keeps tensors, tuples, int keys, NaN and infinities, which
    ``torch.save`` stores exactly (``best_metric`` starts at ``-inf``).

    Raises:
        TypeError: any other type (name and type in the message).
    """
    if isinstance(value, np.generic):  # before float: np.float64 subclasses float
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, Mapping):  # keys stay as they are (optimiser state uses int keys)
        return {to_plain(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        converted = [to_plain(v) for v in value]
        return tuple(converted) if isinstance(value, tuple) else converted
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in a weights_only checkpoint")


# ---------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global), torch CPU and every CUDA device's RNG state, plain types."""
    numpy_state = np.random.get_state(legacy=False)  # noqa: NPY002 - the global legacy RNG
    key = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))  # uint32 -> int64
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {"key": key, "pos": int(numpy_state["state"]["pos"])}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return to_plain(state)


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Undo `capture_rng_state`: set every RNG back to the captured state.

    CUDA states are restored when this machine has as many devices as were captured; a
    checkpoint from a GPU machine resumed on CPU restores the CPU-side states only.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    key = np.asarray(numpy_state["state"]["key"], dtype=np.int64).astype(np.uint32)
    numpy_state["state"] = {"key": key, "pos": int(numpy_state["state"]["pos"])}
    np.random.set_state(numpy_state)  # noqa: NPY002 - the global legacy RNG
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block without changing any RNG state seen afterwards (e.g. a data check)."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


# ----------------------------------------------------------------------- model identity


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel/DataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def model_class_name(model: nn.Module) -> str:
    """``"package.module.ClassName"`` of the (unwrapped) model, as stored in checkpoints."""
    cls = type(unwrap_model(model))
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------- save / load


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` (made plain by `to_plain`) to ``path`` atomically; returns the path.

    Leftover temporaries of earlier, killed saves of ``path`` are removed first
    (`remove_stale_temporaries`; another process's save in progress is kept).
    """
    payload = to_plain({"format_version": FORMAT_VERSION, **checkpoint})
    remove_stale_temporaries(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _recovery_hint(path: Path) -> str:
    """What to do about a damaged checkpoint: resume from ``best.pt`` beside it if there is one."""
    best = path.with_name("best.pt")
    if path.name != best.name and best.is_file():
        return (f"delete it to start over, or copy {best.name} over it to resume from the "
                "best epoch")
    if path.name == "last.pt":
        return "delete it to start the run over"
    return "delete it and save it again"


def _first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type name when the message is empty."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _load_error(path: Path, error: Exception) -> CheckpointReadError:
    """The one-line error for a ``torch.load`` failure of ``path``, by cause."""
    if isinstance(error, PermissionError):
        return CheckpointReadError(f"{path} cannot be read: permission denied")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; its directory comes last
        size = path.stat().st_size
        return CheckpointReadError(
            f"{path} is truncated or damaged ({size} bytes, not a complete PyTorch file): "
            f"a save or copy was interrupted; {_recovery_hint(path)}")
    return CheckpointReadError(f"{path} cannot be loaded with weights_only=True (is it a "
                               f"medseg checkpoint?): {_first_line(error)}")


def load_checkpoint(path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: a ``.pt`` file written by `save_checkpoint`.
        map_location: where tensors go (default CPU, so a GPU checkpoint opens anywhere).

    Raises:
        FileNotFoundError: no such file.
        CheckpointReadError: (a `ValueError`) one line naming ``path`` and the problem:
            empty (0 bytes), truncated or damaged (both with what to do: delete it, or
            resume from ``best.pt`` beside it), unreadable (permissions), refused by the
            safe loader, or not a medseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointReadError(f"{path} is empty (0 bytes): a save was interrupted; "
                                  f"{_recovery_hint(path)}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise _load_error(path, error) from None  # the message says it all, in one line
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointReadError(f"{path} is not a medseg checkpoint (no 'model' entry)")
    return checkpoint


def _describe(checkpoint: Mapping[str, Any]) -> str:
    arch = checkpoint.get("model_class", "an unknown architecture")
    name = (checkpoint.get("config") or {}).get("model")
    return f"{arch!r}" + (f" (config model={name!r})" if name else "")


def load_model_weights(model: nn.Module, checkpoint: Mapping[str, Any] | str | os.PathLike,
                       strict: bool = True) -> nn.Module:
    """Load a checkpoint's (or a bare state dict's) weights, explaining any mismatch.

    Args:
        model: the model to fill (wrappers such as DDP are unwrapped).
        checkpoint: a checkpoint dict, a path to one, or a plain ``state_dict``.
        strict: require exactly the same keys (shapes must always match).

    Returns:
        ``model``.

    Raises:
        CheckpointMismatchError: names the architecture in the checkpoint and the model's,
            and lists a few missing, unexpected and differently shaped keys.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_checkpoint(checkpoint)
    state = checkpoint["model"] if "model" in checkpoint else checkpoint
    target = unwrap_model(model)
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if reshaped or (strict and (missing or unexpected)):
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("with another shape", reshaped)):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise CheckpointMismatchError(
            f"the checkpoint holds {_describe(checkpoint)} but the model is "
            f"{model_class_name(model)!r}; its weights do not fit: {'; '.join(problems)}. "
            "Build the model with the checkpoint's config (model name and kwargs).")
    target.load_state_dict(state, strict=strict)
    return model
