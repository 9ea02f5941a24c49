"""One table of size, latency and Dice per deployment variant, on the same held-out
test patients.

`variant_table` scores any mix of variants on the test patients of `TrainedModel.split`:
eager models (plain, or as a `TorchVariant`: bf16 autocast, channels-last,
``torch.compile``; pruned ones from `medseg_helpers.deploy.prune`) and exported files (a
path, or an `ExportedVariant` naming the runtime and precision that run it; the files
come from `medseg_helpers.deploy.trained_export`):

* Dice on the **preprocessed grid** (the network's own grid: z-scored slices padded to
  the cache's slice shape, label padded with background), mean foreground Dice per
  patient with `metrics.compute_dice` (a class absent from both masks is ignored), then
  the mean over patients; the same for every variant, so differences are the variant's.
  ``agreement``: the share of voxels whose class equals the reference's.
* latency: median wall time to segment one whole test volume (all its slices, in batches
  of ``batch_size``), rounds interleaved across variants so a busy machine slows all of
  them alike, each timed pass preceded by one untimed batch of the same variant (the
  previous runtime's worker threads may still be spinning); ``speedup`` is the
  reference's latency over the variant's, in this run.
* ``file_mb``: the deployable file (an eager model: its serialised ``state_dict``);
  ``zipped_mb``: the same bytes gzip-compressed (only this shrinks with unstructured
  sparsity).
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import io
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from medseg_helpers.deploy.runtime import OnnxSegmenter, load_exported, load_onnx
from medseg_helpers.deploy.trained_export import quiet_exporters
from medseg_helpers.inferers import predict_logits
from medseg_helpers.metrics.overlap import compute_dice

if TYPE_CHECKING:
    import pandas as pd

    from medseg_helpers.course.model import TrainedModel

__all__ = ["ExportedVariant", "TorchVariant", "Variant", "variant_table"]

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class TorchVariant:
    """An eager model run in a faster PyTorch mode (all CPU).

    Attributes:
        model: the network (eval mode; no pruning masks).
        bf16: ``torch.autocast("cpu", torch.bfloat16)``: fast on CPUs with AVX-512 BF16 or
            AMX, *slower* than float32 on others (the arithmetic is emulated).
        channels_last: weights and inputs in ``(B, H, W, C)`` memory order, the layout
            oneDNN's convolution kernels prefer on CPUs.
        compile: ``torch.compile`` (inductor); the first call compiles (tens of seconds).
    """

    model: nn.Module
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False


@dataclasses.dataclass(frozen=True)
class ExportedVariant:
    """An exported ``.onnx`` file and the runtime and precision that run it
    (`runtime.load_onnx`); a plain path means ONNX Runtime in float32 (or int8 for an int8
    file). ``default_options``: ONNX Runtime with ``SessionOptions()`` untouched (the
    baseline for tuned session settings)."""

    path: PathLike
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    default_options: bool = False


Variant = nn.Module | PathLike | TorchVariant | ExportedVariant


def _state_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _torch_runner(variant: TorchVariant) -> Callable[[torch.Tensor], torch.Tensor]:
    from medseg_helpers.deploy.prune import is_pruned

    if is_pruned(variant.model):
        raise ValueError("a pruned model still has its masks: call prune.make_permanent "
                         "first (its state dict would hold weight_orig and weight_mask)")
    module = variant.model.cpu().eval()
    layout = torch.channels_last if variant.channels_last else torch.contiguous_format
    if variant.channels_last:  # a copy: Module.to changes the module itself
        module = copy.deepcopy(module).to(memory_format=torch.channels_last)
    if variant.compile:
        module = torch.compile(module)

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:  # channels_last is a 2D layout (channels_last_3d for volumes)
            x = x.contiguous()
        else:
            x = x.contiguous(memory_format=layout)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                    enabled=variant.bf16):
            return module(x).float().contiguous()

    return run


def _runner(variant: Variant, num_threads: int
            ) -> tuple[Callable[[torch.Tensor], torch.Tensor], bytes]:
    if isinstance(variant, nn.Module):
        variant = TorchVariant(variant)
    if isinstance(variant, TorchVariant):
        return _torch_runner(variant), _state_bytes(variant.model)
    if isinstance(variant, ExportedVariant):
        path = Path(variant.path)
        if variant.default_options:
            return OnnxSegmenter(path, default_options=True), path.read_bytes()
        return (load_onnx(path, runtime=variant.runtime, precision=variant.precision,
                          num_threads=num_threads), path.read_bytes())
    path = Path(variant)
    with quiet_exporters():
        return load_exported(path, num_threads=num_threads), path.read_bytes()


def variant_table(trained: TrainedModel, variants: Mapping[str, Variant], *,
                  patient_ids: Sequence[str] | None = None, reference: str | None = None,
                  repeats: int = 5, batch_size: int = 16, num_threads: int | None = None
                  ) -> pd.DataFrame:
    """Size, latency and Dice of each variant on the same test patients (see module doc).

    Args:
        trained: the course model (its config, test split, preprocessed data).
        variants: ``{name: variant}``: an eager ``nn.Module``, a `TorchVariant`, an
            exported file (``.onnx``, ``.pt2``, ``.pt``) or an `ExportedVariant`; eager
            models must not carry pruning masks (`prune.make_permanent`).
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
        is worse), ``agreement`` (share of all voxels of all patients classed as the
        reference classes them), ``max_abs_diff`` (largest logit difference to the
        reference on the first patient).

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

        dice, first_logits, predictions, agreement = {}, {}, {}, {}
        for name in [reference] + [n for n in names if n != reference]:
            scores, same, total = [], 0, 0  # the warm-up pass also gives the Dice
            for index, (image, label) in enumerate(data):
                logits = segment(name, image)
                prediction = logits.argmax(0)
                if index == 0:
                    first_logits[name] = logits
                if name == reference:
                    predictions[index] = prediction
                same += int((prediction == predictions[index]).sum())
                total += prediction.numel()
                scores.append(compute_dice(prediction[None], label[None],
                                           trained.num_classes)[0])
            dice[name] = torch.stack(scores)  # (patients, K - 1), NaN where absent
            agreement[name] = same / total
        times: dict[str, list[float]] = {name: [] for name in names}
        first_batch = (data[0][0][:, :batch_size] if trained.config.spatial_dims == 2
                       else data[0][0])
        for _ in range(repeats):
            for name in names:
                segment(name, first_batch)  # untimed: wakes this runtime's threads
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
        row["agreement"] = agreement[name]
        row["max_abs_diff"] = float((first_logits[name] - first_logits[reference]).abs().max())
        rows.append(row)
    table = pd.DataFrame(rows).set_index("variant")
    table.insert(3, "speedup", table.loc[reference, "latency_ms"] / table["latency_ms"])
    table["dice_drop"] = table.loc[reference, "dice"] - table["dice"]
    return table
