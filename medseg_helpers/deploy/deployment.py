"""The shipped deployment: the fastest measured variant that keeps the model's accuracy.

`choose_deployment` (what ``medseg export --format best`` runs) exports the course model as
float32 and int8 ONNX, runs every candidate (each file in each installed runtime and
precision, see `candidates`) on the run's **validation** patients with
`variants.variant_table`, and keeps the fastest whose mean Dice is at most
``max_dice_drop`` below eager PyTorch and whose voxels agree with eager's classes at
least ``min_agreement`` of the time. Beside the model file (``model.onnx``) it writes:

* ``model.deploy.json``: the chosen runtime and precision, the file's SHA-256, the
  parity tolerance, the CPU it was measured on, and the whole measured table;
* ``model.probe.npz``: a few real validation inputs and eager PyTorch's logits for them.

`load_deployment` (what `segmenter.VolumeSegmenter` and ``medseg serve`` use) opens the file
in the recorded runtime and **checks parity at load**: the probe must give eager's
classes (``min_agreement``) and logits within the recorded tolerance, else it refuses to
start. A file without a descriptor runs in ONNX Runtime, float32, as before.

Which variant wins depends on the CPU: with AVX-512 BF16 or AMX, bfloat16 and int8
kernels are several times faster than float32; without them, bf16 is emulated and int8
gains little. Choose on the machine that will serve (the descriptor records the CPU, and
loading on another CPU logs a warning).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medseg_helpers.deploy.export import export_onnx
from medseg_helpers.deploy.preprocessing import Preprocessing
from medseg_helpers.deploy.runtime import (
    ExportedSegmenter,
    OnnxSegmenter,
    load_onnx,
    openvino_available,
)
from medseg_helpers.deploy.trained_export import example_input, export_int8, quiet_exporters
from medseg_helpers.deploy.variants import ExportedVariant, variant_table
from medseg_helpers.device import cpu_description
from medseg_helpers.fileutil import atomic_path, to_json_ready, write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

    from medseg_helpers.course.model import TrainedModel

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

__all__ = ["Candidate", "DeploymentError", "candidates", "choose_deployment",
           "descriptor_path", "load_deployment"]

#: Format version of ``*.deploy.json``.
DESCRIPTOR_VERSION = 1


class DeploymentError(ValueError):
    """A deployment that must not serve: its file changed or fails the parity check."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to deploy: which exported file (``"fp32"`` or ``"int8"`` ONNX), in which
    runtime (`runtime.RUNTIME_PRECISIONS`) and compute precision."""

    file: str
    runtime: str
    precision: str = "fp32"

    @property
    def name(self) -> str:
        """E.g. ``"openvino bf16"`` or ``"onnxruntime int8"``."""
        return f"{self.runtime} {'int8' if self.file == 'int8' else self.precision}"


def candidates(openvino: bool | None = None) -> list[Candidate]:
    """The candidates `choose_deployment` measures: ONNX Runtime float32 and int8, and with
    OpenVINO (``openvino=None``: if installed) its float32, bfloat16 and int8."""
    found = [Candidate("fp32", "onnxruntime"), Candidate("int8", "onnxruntime")]
    if openvino_available() if openvino is None else openvino:
        found += [Candidate("fp32", "openvino"), Candidate("fp32", "openvino", "bf16"),
                  Candidate("int8", "openvino")]
    return found


def descriptor_path(model_path: PathLike) -> Path:
    """``model.deploy.json`` beside ``model.onnx``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".deploy.json")


def _probe_path(model_path: PathLike) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".probe.npz")


def _sha256(path: Path) -> str:
    from data_download.downloader import compute_checksums

    return compute_checksums(path, ("sha256",))["sha256"]


def _probe_input(trained: TrainedModel, max_slices: int = 2) -> torch.Tensor:
    """Real validation input for the load-time parity check: the ``max_slices`` slices
    with the most foreground of the first validation patient (2D), or the model's
    example volume (3D). Float32, ``(B, C, *S)``."""
    if trained.config.spatial_dims == 3:
        return example_input(trained)
    image, label = trained.preprocessed(trained.split.val[0])  # (C, D, H, W), (D, H, W)
    order = torch.argsort((label > 0).flatten(1).sum(1), descending=True)[:max_slices]
    return image[:, order.sort().values].transpose(0, 1).float().contiguous()


def _parity(segmenter: ExportedSegmenter, image: np.ndarray, reference: np.ndarray
            ) -> tuple[float, float]:
    logits = segmenter.predict_logits(image)
    return (float(np.abs(logits - reference).max()),
            float((logits.argmax(1) == reference.argmax(1)).mean()))


def choose_deployment(trained: TrainedModel, out_path: PathLike, *,
                      max_dice_drop: float = 0.01, min_agreement: float = 0.99,
                      repeats: int = 5, num_threads: int | None = None,
                      choices: list[Candidate] | None = None
                      ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Measure the candidates on the validation patients and ship the fastest good one.

    Args:
        trained: the trained model (`course.model.load_trained_model`), moved to the CPU.
        out_path: where the chosen ``.onnx`` goes; the descriptor and probe go beside it.
        max_dice_drop: largest accepted mean-Dice drop against eager PyTorch.
        min_agreement: smallest accepted share of voxels classed as eager classes them.
        repeats: timed rounds per candidate (`variant_table`).
        num_threads: threads for every runtime (default: torch's setting).
        choices: the candidates (default `candidates`).

    Returns:
        The descriptor written to ``model.deploy.json`` and the measured table (one row per
        candidate plus ``eager``, the reference).

    Raises:
        DeploymentError: no candidate meets both limits (the table is in the message).
    """
    out_path = Path(out_path)
    choices = choices or candidates()
    model = trained.model.cpu().eval()
    preprocessing = Preprocessing.from_settings(trained.cache.settings)
    with tempfile.TemporaryDirectory(prefix="medseg-best-") as tmp:
        files = {"fp32": Path(tmp) / "fp32.onnx", "int8": Path(tmp) / "int8.onnx"}
        with quiet_exporters():
            export_onnx(model, example_input(trained), files["fp32"], preprocessing=preprocessing,
                        postprocessing=trained.postprocessing)
        if any(c.file == "int8" for c in choices):
            export_int8(trained, files["int8"])
        variants = {"eager": model, **{c.name: ExportedVariant(files[c.file], c.runtime,
                                                               c.precision) for c in choices}}
        table = variant_table(trained, variants, patient_ids=trained.split.val,
                              repeats=repeats, num_threads=num_threads)
        passed = table.drop(index="eager")
        passed = passed[(passed["dice_drop"] <= max_dice_drop)
                        & (passed["agreement"] >= min_agreement)]
        if passed.empty:
            raise DeploymentError(f"no candidate keeps Dice within {max_dice_drop} and "
                                  f"agreement above {min_agreement}:\n{table.to_string()}")
        best_name = str(passed["latency_ms"].idxmin())
        best = next(c for c in choices if c.name == best_name)
        with atomic_path(out_path, suffix=".onnx") as tmp_out:
            shutil.copyfile(files[best.file], tmp_out)
    probe = _probe_input(trained)
    with torch.inference_mode():
        reference = model(probe).float().numpy()
    chosen = load_onnx(out_path, runtime=best.runtime, precision=best.precision,
                       num_threads=num_threads)
    probe_diff, _ = _parity(chosen, probe.numpy(), reference)
    with atomic_path(_probe_path(out_path), suffix=".npz") as tmp_probe, \
            open(tmp_probe, "wb") as file:
        np.savez_compressed(file, image=probe.numpy(), logits=reference)
    descriptor = {
        "version": DESCRIPTOR_VERSION, "file": out_path.name, "sha256": _sha256(out_path),
        "variant": best_name, "runtime": best.runtime, "precision": best.precision,
        "quantized": best.file,
        "tolerance": {"max_abs_diff": max(2 * probe_diff, 1e-4),
                      "min_agreement": min_agreement},
        "limits": {"max_dice_drop": max_dice_drop, "min_agreement": min_agreement},
        "speedup_vs_eager": float(table.loc[best_name, "speedup"]),
        "measured_on": {"patients": list(trained.split.val), "cpu": cpu_description(),
                        "threads": num_threads or torch.get_num_threads()},
        "table": table.reset_index().to_dict(orient="records"),
    }
    write_text_atomic(descriptor_path(out_path),
                      json.dumps(to_json_ready(descriptor), indent=1) + "\n")
    return descriptor, table


def load_deployment(model_path: PathLike, *, num_threads: int | None = None
                    ) -> ExportedSegmenter:
    """Open ``model.onnx`` as `choose_deployment` chose it, after a parity check.

    Without ``model.deploy.json`` beside it: ONNX Runtime, float32 (no check). With it:
    the recorded runtime and precision (ONNX Runtime, logged, when OpenVINO is not
    installed), then the probe inputs must reproduce eager PyTorch's logits within the
    recorded tolerance. The returned segmenter carries ``parity`` (``max_abs_diff``,
    ``agreement``) and ``descriptor``.

    Raises:
        DeploymentError: the file's SHA-256 differs from the descriptor's, the probe is
            missing, or the parity check fails (one line each, naming the file).
    """
    model_path = Path(model_path)
    described = descriptor_path(model_path)
    if not described.is_file():
        return OnnxSegmenter(model_path, num_threads=num_threads)
    try:
        descriptor = json.loads(described.read_text(encoding="utf-8"))
        runtime, precision = descriptor["runtime"], descriptor["precision"]
        tolerance = descriptor["tolerance"]
    except (ValueError, KeyError, TypeError) as error:
        raise DeploymentError(f"{described.name}: not a deployment descriptor ({error})"
                              ) from None
    if _sha256(model_path) != descriptor.get("sha256"):
        raise DeploymentError(f"{model_path.name}: the file changed since {described.name} "
                              "measured it (SHA-256 differs); run medseg export --format "
                              "best again")
    if runtime == "openvino" and not openvino_available():
        logger.warning("%s was chosen for OpenVINO %s, which is not installed; running it "
                       "with ONNX Runtime (slower: see %s)", model_path.name, precision,
                       described.name)
        runtime, precision = "onnxruntime", "fp32"
    measured_cpu = descriptor.get("measured_on", {}).get("cpu", {})
    here = cpu_description()
    if measured_cpu and measured_cpu != here:
        logger.warning("%s was measured on %s (%s); this CPU is %s (%s): another variant may "
                       "be faster here", model_path.name, measured_cpu.get("model"),
                       ", ".join(measured_cpu.get("features", [])), here["model"],
                       ", ".join(here["features"]))
    segmenter = load_onnx(model_path, runtime=runtime, precision=precision,
                          num_threads=num_threads)
    probe_file = _probe_path(model_path)
    try:
        with np.load(probe_file) as probe:
            image, reference = probe["image"], probe["logits"]
    except (OSError, KeyError, ValueError) as error:
        raise DeploymentError(f"{probe_file.name}: cannot read the parity probe ({error})"
                              ) from None
    max_abs_diff, agreement = _parity(segmenter, image, reference)
    if max_abs_diff > tolerance["max_abs_diff"] or agreement < tolerance["min_agreement"]:
        raise DeploymentError(
            f"{model_path.name}: parity check at load failed in {runtime} {precision}: max "
            f"|logit difference| {max_abs_diff:.3g} (tolerance "
            f"{tolerance['max_abs_diff']:.3g}), class agreement {agreement:.4f} (at least "
            f"{tolerance['min_agreement']})")
    segmenter.parity = {"max_abs_diff": max_abs_diff, "agreement": agreement}
    segmenter.descriptor = descriptor
    return segmenter
