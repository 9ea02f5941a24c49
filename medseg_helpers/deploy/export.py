"""Export a trained segmentation network for use outside PyTorch, and check its parity.

Three routes, all checked against eager PyTorch with `check_parity`:

* **ONNX** (`export_onnx`, the main deployment route): the ``torch.export``-based ("dynamo")
  exporter, one self-contained ``.onnx`` file (``external_data=False``), run with ONNX
  Runtime through `medseg_helpers.deploy.runtime.OnnxSegmenter`;
  `medseg_helpers.deploy.quantize.quantize_onnx_int8` makes a static int8 (QDQ) copy.
* **torch.export** (`export_program`): a ``.pt2`` ``ExportedProgram`` for PyTorch-only
  deployment (AOTInductor, ExecuTorch).
* **TorchScript** (`export_torchscript`): the legacy route, deprecated in torch 2.13.

Shape rule for the exported graphs: the course U-Net pads inputs to a multiple of
``2**depth`` with a Python ``if``; tracing records the branch taken for the example, so
the exported graph accepts any batch size and any spatial size that is a **multiple of
``size_multiple``** (the example's sizes must be one too). `export_onnx` stores
``size_multiple`` in the model's metadata and `OnnxSegmenter` pads other sizes itself.

Each exporter takes the model's input preprocessing (`deploy.preprocessing.Preprocessing`,
from the training cache's settings) and stores it in the file: ONNX ``metadata_props``
``medseg.preprocessing``, or an extra file of that name in the ``.pt2``/``.pt`` archive
(`deploy.preprocessing.read_preprocessing` reads either). The service refuses a model without it.
`export_onnx` also stores the model's post-processing rule when given (``medseg.postprocessing``),
which `deploy.segmenter.VolumeSegmenter` applies to every label map it returns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg_helpers.deploy.preprocessing import METADATA_KEY, POSTPROCESSING_KEY, Preprocessing
from medseg_helpers.deploy.runtime import load_exported
from medseg_helpers.fileutil import atomic_path
from medseg_helpers.transforms.postprocess import SmallComponentFilter

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18


def _prepare_example(model: nn.Module, example_input: torch.Tensor,
                     dynamic_batch: bool) -> torch.Tensor:
    """Check the example's layout; repeat a batch of 1 to 2 (see `export_onnx`)."""
    if not isinstance(example_input, torch.Tensor) or example_input.ndim not in (4, 5):
        shape = getattr(example_input, "shape", None)
        raise ValueError(f"example_input must be a (B, C, H, W) or (B, C, D, H, W) tensor; "
                         f"got shape {shape}")
    multiple = getattr(model, "size_multiple", 1)
    spatial = tuple(example_input.shape[2:])
    if any(s % multiple for s in spatial):
        raise ValueError(f"example spatial size {spatial} must be a multiple of the model's "
                         f"size_multiple={multiple}: the exported graph keeps the padding "
                         "branch taken for the example")
    if dynamic_batch and example_input.shape[0] == 1:
        # A size of 1 is specialised by torch.export ("0/1 specialisation").
        example_input = example_input.repeat(2, *([1] * (example_input.ndim - 1)))
    return example_input.detach().float()


def _dynamic_shapes(ndim: int, dynamic_batch: bool, dynamic_spatial: bool
                    ) -> tuple[dict[int, Any]]:
    axes: dict[int, Any] = {}
    if dynamic_batch:
        axes[0] = torch.export.Dim.DYNAMIC
    if dynamic_spatial:
        axes.update({axis: torch.export.Dim.DYNAMIC for axis in range(2, ndim)})
    return (axes,)


def _extra_files(preprocessing: Preprocessing | None) -> dict[str, str]:
    """The archive extra files holding ``preprocessing`` (none without it)."""
    return {} if preprocessing is None else {METADATA_KEY: preprocessing.to_json()}


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: PathLike,
                dynamic_batch: bool = True, dynamic_spatial: bool = True,
                opset: int = DEFAULT_OPSET, *,
                preprocessing: Preprocessing | None = None,
                postprocessing: SmallComponentFilter | None = None) -> Path:
    """Export ``model`` to one self-contained ONNX file with the ``torch.export`` exporter.

    The legacy TorchScript-based exporter (``dynamo=False``) raises a ``DeprecationWarning``
    and several ``TracerWarning`` s in torch 2.13; this exporter raises only a
    ``FutureWarning`` from torch's own pytree code (``isinstance(treespec, LeafSpec)``) and
    logs "torchvision is not installed" at WARNING level via ``logging``. Weights
    are embedded (``external_data=False``): no ``.onnx.data`` file, fine below 2 GB.

    Metadata ``medseg.size_multiple`` (the model's ``size_multiple``, 1 if it has none) and
    ``medseg.spatial_dims`` are stored for `OnnxSegmenter`, and ``medseg.preprocessing``
    and ``medseg.postprocessing`` (JSON of ``preprocessing`` and ``postprocessing``) when
    given.

    Args:
        model: network mapping ``(B, C, *S)`` float32 to logits ``(B, K, *S)``; put in eval
            mode (it stays there).
        example_input: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` float32 on CPU, spatial sizes
            multiples of ``model.size_multiple``. A batch of 1 is repeated to 2 when
            ``dynamic_batch`` so the exporter does not fix the batch axis to 1.
        path: destination ``.onnx`` file, written atomically (parents created).
        dynamic_batch: let the batch axis vary (input name ``"image"``).
        dynamic_spatial: let the spatial axes vary (multiples of ``size_multiple``).
        opset: ONNX opset version.
        preprocessing: how the model's inputs were prepared in training (required by the
            service, `deploy.serve`); None stores nothing.
        postprocessing: the rule applied to the model's label maps (`TrainedModel`'s
            ``postprocessing``); None stores nothing (no rule).

    Returns:
        ``path`` as a `Path`.

    Raises:
        ValueError: wrong example layout or a spatial size the graph could not generalise.
    """
    import onnx

    model.eval()
    example = _prepare_example(model, example_input, dynamic_batch)
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp, torch.no_grad():
        torch.onnx.export(
            model, (example,), str(tmp), dynamo=True, external_data=False,
            opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=_dynamic_shapes(example.ndim, dynamic_batch, dynamic_spatial),
            verbose=False)
        proto = onnx.load(str(tmp))
        meta = {"medseg.size_multiple": str(getattr(model, "size_multiple", 1)),
                "medseg.spatial_dims": str(example.ndim - 2), **_extra_files(preprocessing),
                **({} if postprocessing is None else
                   {POSTPROCESSING_KEY: postprocessing.to_json()})}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    logger.info("exported ONNX (opset %d) to %s", opset, path)
    return path


def export_torchscript(model: nn.Module, example_input: torch.Tensor, path: PathLike,
                       freeze: bool = True, *,
                       preprocessing: Preprocessing | None = None) -> Path:
    """Trace ``model`` to TorchScript (legacy route) and save it.

    Deprecated in torch 2.13: ``torch.jit.trace``, ``freeze``, ``save`` and ``load`` each
    raise a ``DeprecationWarning`` pointing to ``torch.export``/``torch.compile``, and tracing
    the course U-Net raises ``TracerWarning`` s (its padding test becomes a constant). These
    warnings are not suppressed here: filter them in the caller if they are expected.
    Prefer `export_program` or `export_onnx`.

    Args:
        model: as in `export_onnx` (set to eval mode).
        example_input: ``(B, C, *S)`` float32, spatial sizes multiples of ``size_multiple``;
            the trace then accepts other batch sizes and other multiples.
        path: destination (``.pt`` or ``.ts``), written atomically.
        freeze: inline the weights as constants (``torch.jit.freeze``).
        preprocessing: stored as the archive's extra file ``medseg.preprocessing``.

    Returns:
        ``path`` as a `Path`.
    """
    model.eval()
    example = _prepare_example(model, example_input, dynamic_batch=False)
    with torch.no_grad():
        module = torch.jit.trace(model, example)
        if freeze:
            module = torch.jit.freeze(module)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.jit.save(module, str(tmp), _extra_files=_extra_files(preprocessing))
    return path


def export_program(model: nn.Module, example_input: torch.Tensor, path: PathLike,
                   dynamic_batch: bool = True, dynamic_spatial: bool = True, *,
                   preprocessing: Preprocessing | None = None) -> Path:
    """Export ``model`` with ``torch.export`` and save the ``ExportedProgram`` (``.pt2``).

    Load it with ``torch.export.load(path).module()``. ``torch.export.load`` unpickles
    parts of the archive: load only files you made (never user uploads).

    Args:
        model, example_input, dynamic_batch, dynamic_spatial: as in `export_onnx`.
        path: destination ``.pt2`` file, written atomically.
        preprocessing: stored as the archive's extra file ``medseg.preprocessing``.

    Returns:
        ``path`` as a `Path`.
    """
    model.eval()
    example = _prepare_example(model, example_input, dynamic_batch)
    with torch.no_grad():
        program = torch.export.export(
            model, (example,),
            dynamic_shapes=_dynamic_shapes(example.ndim, dynamic_batch, dynamic_spatial))
    path = Path(path)
    with atomic_path(path, suffix=".pt2") as tmp:
        torch.export.save(program, str(tmp), extra_files=_extra_files(preprocessing))
    return path


def check_parity(model: nn.Module, exported_path: PathLike,
                 inputs: torch.Tensor | Sequence[torch.Tensor], atol: float = 1e-4
                 ) -> dict[str, Any]:
    """Compare an exported model with eager PyTorch on the same inputs.

    Args:
        model: the eager model (set to eval mode).
        exported_path: ``.onnx``, ``.pt2`` or ``.pt``/``.ts`` file (see `load_exported`).
        inputs: one ``(B, C, *S)`` float32 tensor or several (sizes may differ).
        atol: tolerance on the largest absolute logit difference for ``passed``.

    Returns:
        ``{"format", "max_abs_diff", "mean_abs_diff", "argmax_agreement" (fraction of
        voxels with the same predicted class, in [0, 1]), "num_inputs", "passed"}``.
    """
    model.eval()
    batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    run = load_exported(exported_path)
    max_diff, diff_sum, count, agree = 0.0, 0.0, 0, 0
    for x in batches:
        with torch.no_grad():
            ref = model(x.float())
        out = run(x.float())
        if out.shape != ref.shape:
            raise ValueError(f"exported output shape {tuple(out.shape)} differs from eager "
                             f"{tuple(ref.shape)} for input {tuple(x.shape)}")
        diff = (out.float() - ref).abs()
        max_diff = max(max_diff, float(diff.max()))
        diff_sum += float(diff.sum())
        count += diff.numel()
        agree += int((out.argmax(1) == ref.argmax(1)).sum())
    voxels = count // max(1, ref.shape[1])
    return {"format": Path(exported_path).suffix.lstrip("."), "max_abs_diff": max_diff,
            "mean_abs_diff": diff_sum / count, "argmax_agreement": agree / voxels,
            "num_inputs": len(batches), "passed": max_diff <= atol}
