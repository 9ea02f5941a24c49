"""Deployment variants of the course model: export with a parity check, and one table
of size, latency and Dice per variant on the same held-out test patients.

`export_trained_model` is what ``medseg export`` runs: a trained run's network exported
to ONNX, TorchScript, a ``torch.export`` program or static int8 ONNX, with an example
input and int8 calibration slices taken from the run's own (preprocessed) training data,
carrying the run's preprocessing (its slice cache's settings) in the file, then checked
against eager PyTorch on real test slices.

`variant_table` scores any mix of eager models (e.g. pruned ones, `medseg_helpers.deploy.prune`)
and exported files on the test patients of `TrainedModel.split`:

* Dice on the **preprocessed grid** (the network's own grid: z-scored slices padded to
  the cache's slice shape, label padded with background), mean foreground Dice per
  patient with `metrics.compute_dice` (a class absent from both masks is ignored), then
  the mean over patients; the same for every variant, so differences are the variant's.
* latency: median wall time to segment one whole test volume (all its slices, in batches
  of ``batch_size``), rounds interleaved across variants so a busy machine slows all of
  them alike; ``speedup`` is the reference's latency over the variant's, in this run.
* ``file_mb``: the deployable file (an eager model: its serialised ``state_dict``);
  ``zipped_mb``: the same bytes gzip-compressed (only this shrinks with unstructured
  sparsity).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from medseg_helpers.deploy.quantize import quantize_onnx_int8
from medseg_helpers.deploy.runtime import load_exported
from medseg_helpers.inferers import predict_logits
from medseg_helpers.metrics.overlap import compute_dice

if TYPE_CHECKING:
    import pandas as pd

    from medseg_helpers.course.model import TrainedModel

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMATS", "calibration_images", "example_input", "export_trained_model",
           "quiet_exporters", "variant_table"]

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
            (static QDQ ONNX calibrated on `calibration_images`).
        out_path: destination file (suffix of `EXPORT_FORMATS` recommended).
        calibration_count: training slices for int8 calibration.
        atol: parity tolerance on the logits for the float formats; int8 is expected to
            differ (``passed`` then says whether >= 99 % of voxels keep their class).

    The file carries ``Preprocessing.from_settings(trained.cache.settings)``, what
    `medseg_helpers.deploy.serve` applies to uploads.

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
            export_onnx(model, example, out_path, preprocessing=preprocessing)
        elif fmt == "program":
            export_program(model, example, out_path, preprocessing=preprocessing)
        elif fmt == "torchscript":
            export_torchscript(model, example, out_path, preprocessing=preprocessing)
        else:
            with tempfile.TemporaryDirectory(prefix="medseg-int8-") as tmp:
                fp32 = export_onnx(model, example, Path(tmp) / "fp32.onnx",
                                   preprocessing=preprocessing)
                quantize_onnx_int8(fp32, out_path, calibration_images(trained, calibration_count))
        seconds = time.perf_counter() - start
        report = check_parity(model, out_path, _test_batches(trained), atol=atol)
    if fmt == "int8":
        report["passed"] = report["argmax_agreement"] >= 0.99
    return {**report, "format": fmt, "path": str(out_path),
            "size_mb": out_path.stat().st_size / 2**20, "seconds": seconds}


def _state_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _runner(variant: nn.Module | PathLike, num_threads: int
            ) -> tuple[Callable[[torch.Tensor], torch.Tensor], bytes]:
    if isinstance(variant, nn.Module):
        from medseg_helpers.deploy.prune import is_pruned

        if is_pruned(variant):
            raise ValueError("a pruned model still has its masks: call prune.make_permanent "
                             "first (its state dict would hold weight_orig and weight_mask)")
        module = variant.cpu().eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return module(x)

        return run, _state_bytes(module)
    path = Path(variant)
    with quiet_exporters():
        return load_exported(path, num_threads=num_threads), path.read_bytes()


def variant_table(trained: TrainedModel, variants: Mapping[str, nn.Module | PathLike], *,
                  patient_ids: Sequence[str] | None = None, reference: str | None = None,
                  repeats: int = 5, batch_size: int = 16, num_threads: int | None = None
                  ) -> pd.DataFrame:
    """Size, latency and Dice of each variant on the same test patients (see module doc).

    Args:
        trained: the course model (its config, test split, preprocessed data).
        variants: ``{name: eager nn.Module or exported file}`` (``.onnx``, ``.pt2``,
            ``.pt``); eager models must not carry pruning masks (`prune.make_permanent`).
        patient_ids: cases to score; default ``trained.split.test``.
        reference: the baseline row for ``speedup``, ``dice_drop`` and ``max_abs_diff``;
            default the first variant (put eager PyTorch first).
        repeats: timed rounds per variant on the first patient, after one warm-up pass.
        batch_size: slices per forward pass (2D).
        num_threads: threads for PyTorch and ONNX Runtime alike; default torch's setting.

    Returns:
        One row per variant (index ``variant``): ``file_mb``, ``zipped_mb``,
        ``latency_ms`` (median per volume), ``speedup``, ``dice`` (mean foreground),
        ``dice_<class>`` per foreground class, ``dice_drop`` (reference minus variant, >0
        is worse), ``max_abs_diff`` (largest logit difference to the reference on the
        first patient).

    Raises:
        ValueError: no variants, an unknown ``reference``, or no patients.
    """
    import pandas as pd

    if not variants:
        raise ValueError("variant_table needs at least one variant")
    names = list(variants)
    reference = reference or names[0]
    if reference not in variants:
        raise ValueError(f"reference {reference!r} is not one of {names}")
    patient_ids = list(trained.split.test if patient_ids is None else patient_ids)
    if not patient_ids:
        raise ValueError("no patients to evaluate")
    previous_threads = torch.get_num_threads()
    num_threads = num_threads or previous_threads
    torch.set_num_threads(num_threads)
    try:
        runners, raw = {}, {}
        for name in names:
            runners[name], raw[name] = _runner(variants[name], num_threads)
        data = [trained.preprocessed(pid) for pid in patient_ids]
        roi = trained.config.sw_roi_size or trained.config.patch_size

        def segment(name: str, image: torch.Tensor) -> torch.Tensor:
            return predict_logits(runners[name], image, trained.config.spatial_dims,
                                  roi_size=roi, batch_size=batch_size, device="cpu")

        dice, first_logits = {}, {}
        for name in names:  # the warm-up pass also gives the Dice
            scores = []
            for index, (image, label) in enumerate(data):
                logits = segment(name, image)
                if index == 0:
                    first_logits[name] = logits
                scores.append(compute_dice(logits.argmax(0)[None], label[None],
                                           trained.num_classes)[0])
            dice[name] = torch.stack(scores)  # (patients, K - 1), NaN where absent
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(repeats):
            for name in names:
                start = time.perf_counter()
                segment(name, data[0][0])
                times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
    rows = []
    for name in names:
        per_class = torch.nanmean(dice[name], dim=0)
        row = {"variant": name, "file_mb": len(raw[name]) / 2**20,
               "zipped_mb": len(gzip.compress(raw[name], compresslevel=6)) / 2**20,
               "latency_ms": 1000 * statistics.median(times[name]),
               "dice": float(torch.nanmean(dice[name].nanmean(dim=1)))}
        row.update({f"dice_{c}": float(v) for c, v in zip(trained.class_names[1:], per_class,
                                                          strict=True)})
        row["max_abs_diff"] = float((first_logits[name] - first_logits[reference]).abs().max())
        rows.append(row)
    table = pd.DataFrame(rows).set_index("variant")
    table.insert(3, "speedup", table.loc[reference, "latency_ms"] / table["latency_ms"])
    table["dice_drop"] = table.loc[reference, "dice"] - table["dice"]
    return table
