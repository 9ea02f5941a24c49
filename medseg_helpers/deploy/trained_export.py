"""Export a trained course model: ``medseg export``, with a parity check.

`export_trained_model` is what ``medseg export`` runs: a trained run's network exported
to ONNX, TorchScript, a ``torch.export`` program or static int8 ONNX (`export_int8`), with
an example input (`example_input`) and int8 calibration slices (`calibration_images`)
taken from the run's own (preprocessed) training data, carrying the run's preprocessing
(its slice cache's settings) in the file, then checked against eager PyTorch on real test
slices. `quiet_exporters` silences the exporters' expected messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medseg_helpers.deploy.export import (
    check_parity,
    export_onnx,
    export_program,
    export_torchscript,
)
from medseg_helpers.deploy.preprocessing import Preprocessing
from medseg_helpers.deploy.quantize import pixel_shuffle_upsampling, quantize_onnx_int8

if TYPE_CHECKING:
    from medseg_helpers.course.model import TrainedModel

__all__ = ["EXPORT_FORMATS", "calibration_images", "example_input", "export_int8",
           "export_trained_model", "quiet_exporters"]

PathLike = str | os.PathLike
#: ``medseg export --format`` -> file suffix.
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "program": ".pt2", "int8": ".onnx"}
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript",
                     "onnxruntime", "root")


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the *expected* messages of the exporters while exporting.

    torch 2.13's ONNX exporter logs "torchvision is not installed" and raises a
    ``FutureWarning`` from its own pytree code; TorchScript raises ``DeprecationWarning``
    and ``TracerWarning`` (the U-Net's padding test becomes a constant, which is intended:
    see `export.export_torchscript`); the int8 quantiser logs advice through ``logging``.
    None of them is about the model. Errors still propagate.
    """
    levels = {name: logging.getLogger(name).level for name in _EXPORTER_LOGGERS}
    try:
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*quant_pre_process.*")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _model_multiple(model: nn.Module) -> int:
    return int(getattr(model, "size_multiple", 1))


def _pad_to(array: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad the spatial axes (all but the first) of ``(C, *S)`` up to a multiple."""
    pads = [(0, 0)] + [(0, -s % multiple) for s in array.shape[1:]]
    return np.pad(array, pads, mode="reflect") if any(p for _, p in pads) else array


def example_input(trained: TrainedModel, batch_size: int = 1) -> torch.Tensor:
    """A real example for export: ``(B, C, H, W)`` (2D) or ``(B, C, D, H, W)`` (3D) float32.

    The middle slice (2D) or the whole volume (3D, cropped to ``patch_size``) of the first
    training patient, preprocessed as in training, reflect-padded to a multiple of the
    model's ``size_multiple``, repeated ``batch_size`` times.
    """
    image, _ = trained.preprocessed(trained.split.train[0])  # (C, D, H, W)
    if trained.config.spatial_dims == 2:
        array = image[:, image.shape[1] // 2].numpy()
    else:
        patch = trained.config.patch_size or image.shape[1:]
        array = image[:, :patch[0], :patch[1], :patch[2]].numpy()
    array = _pad_to(array, _model_multiple(trained.model))
    return torch.from_numpy(np.ascontiguousarray(array))[None].repeat(
        batch_size, *[1] * array.ndim).float()


def calibration_images(trained: TrainedModel, count: int = 32, seed: int = 0
                       ) -> list[np.ndarray]:
    """Real training inputs for static int8 calibration: ``count`` arrays ``(C, H, W)``.

    Slices of the training patients only (never test), preprocessed exactly as at
    inference; half of them show foreground, the rest are drawn at random, so the observed
    activation ranges cover both anatomy and background. 3D models get whole training
    volumes ``(C, D, H, W)`` (at most ``count``). Sizes are padded to the model's
    ``size_multiple``.

    Raises:
        ValueError: ``count`` < 1.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    multiple = _model_multiple(trained.model)
    if trained.config.spatial_dims == 3:
        volumes = [trained.preprocessed(pid)[0].numpy() for pid in trained.split.train[:count]]
        return [_pad_to(v, multiple) for v in volumes]
    rng = np.random.default_rng(seed)
    images, pool, foreground = {}, [], []
    for pid in trained.split.train:
        images[pid], label = trained.preprocessed(pid)
        for z in range(label.shape[0]):
            pool.append((pid, z))
            if label[z].any():
                foreground.append((pid, z))
    picks = [foreground[i] for i in rng.permutation(len(foreground))[:count // 2]]
    chosen = set(picks)
    rest = [p for p in pool if p not in chosen]
    picks += [rest[i] for i in rng.permutation(len(rest))[:count - len(picks)]]
    return [_pad_to(images[pid][:, z].numpy(), multiple) for pid, z in picks]


def _test_batches(trained: TrainedModel, max_slices: int = 8) -> list[torch.Tensor]:
    """Parity inputs: real test data, a batch of slices (2D) or one volume (3D)."""
    image, _ = trained.preprocessed(trained.split.test[0] if trained.split.test
                                    else trained.split.val[0])
    if trained.config.spatial_dims == 3:
        return [image[None].float()]
    start = max(0, image.shape[1] // 2 - max_slices // 2)
    slices = image[:, start:start + max_slices].transpose(0, 1).float()  # (n, C, H, W)
    return [slices, slices[:1]]


def export_trained_model(trained: TrainedModel, fmt: str, out_path: PathLike, *,
                         calibration_count: int = 32, atol: float = 1e-4) -> dict[str, Any]:
    """Export a trained course model and check it against eager PyTorch.

    Args:
        trained: from `course_model.load_trained_model` (moved to the CPU here).
        fmt: ``"onnx"``, ``"torchscript"``, ``"program"`` (``torch.export``) or ``"int8"``
            (`export_int8`).
        out_path: destination file (suffix of `EXPORT_FORMATS` recommended).
        calibration_count: training slices for int8 calibration.
        atol: parity tolerance on the logits for the float formats; int8 is expected to
            differ (``passed`` then says whether >= 99 % of voxels keep their class).

    The file carries ``Preprocessing.from_settings(trained.cache.settings)``, what
    `medseg_helpers.deploy.serve` applies to uploads; ONNX files (``onnx``, ``int8``) also
    carry the model's post-processing rule (``trained.postprocessing``).

    Returns:
        ``{"format", "path", "size_mb", "seconds", "max_abs_diff", "mean_abs_diff",
        "argmax_agreement", "num_inputs", "passed"}`` (parity on real test slices).

    Raises:
        ValueError: an unknown format.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    model = trained.model.cpu().eval()
    example = example_input(trained)
    preprocessing = Preprocessing.from_settings(trained.cache.settings)
    out_path = Path(out_path)
    start = time.perf_counter()
    with quiet_exporters():
        if fmt == "onnx":
            export_onnx(model, example, out_path, preprocessing=preprocessing,
                        postprocessing=trained.postprocessing)
        elif fmt == "program":
            export_program(model, example, out_path, preprocessing=preprocessing)
        elif fmt == "torchscript":
            export_torchscript(model, example, out_path, preprocessing=preprocessing)
        else:
            export_int8(trained, out_path, calibration_count=calibration_count)
        seconds = time.perf_counter() - start
        report = check_parity(model, out_path, _test_batches(trained), atol=atol)
    if fmt == "int8":
        report["passed"] = report["argmax_agreement"] >= 0.99
    return {**report, "format": fmt, "path": str(out_path),
            "size_mb": out_path.stat().st_size / 2**20, "seconds": seconds}


def export_int8(trained: TrainedModel, out_path: PathLike, *, calibration_count: int = 32,
                pixel_shuffle: bool = True, activation_type: str = "uint8") -> Path:
    """Static int8 ONNX of the course model, calibrated on `calibration_images`.

    With ``pixel_shuffle`` the transposed convolutions are first rewritten as 1x1
    convolution + pixel shuffle (`quantize.pixel_shuffle_upsampling`, exact), so no
    operator of the U-Net is left in float between int8 ones.

    Returns:
        ``out_path`` as a `Path` (carrying the model's preprocessing and post-processing
        rule, like `export_onnx`).
    """
    model = trained.model.cpu().eval()
    if pixel_shuffle:
        model, _ = pixel_shuffle_upsampling(model)
    preprocessing = Preprocessing.from_settings(trained.cache.settings)
    with quiet_exporters(), tempfile.TemporaryDirectory(prefix="medseg-int8-") as tmp:
        fp32 = export_onnx(model, example_input(trained), Path(tmp) / "fp32.onnx",
                           preprocessing=preprocessing, postprocessing=trained.postprocessing)
        return quantize_onnx_int8(fp32, out_path,
                                  calibration_images(trained, calibration_count),
                                  activation_type=activation_type)
