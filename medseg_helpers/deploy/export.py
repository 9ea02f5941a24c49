"""Export a trained segmentation network and run it outside PyTorch.

Three routes, all checked against eager PyTorch with `check_parity`:

* **ONNX** (`export_onnx`, the main deployment route): the ``torch.export``-based ("dynamo")
  exporter, one self-contained ``.onnx`` file (``external_data=False``), run with ONNX
  Runtime through `OnnxSegmenter`. `quantize_onnx_int8` makes a static int8 (QDQ) copy.
* **torch.export** (`export_program`): a ``.pt2`` ``ExportedProgram`` for PyTorch-only
  deployment (AOTInductor, ExecuTorch).
* **TorchScript** (`export_torchscript`): the legacy route, deprecated in torch 2.13.

Shape rule for the exported graphs: the course U-Net pads inputs to a multiple of
``2**depth`` with a Python ``if``; tracing records the branch taken for the example, so
the exported graph accepts any batch size and any spatial size that is a **multiple of
``size_multiple``** (the example's sizes must be one too). `export_onnx` stores
``size_multiple`` in the model's metadata and `OnnxSegmenter` pads other sizes itself.

Files written outside the output path: ONNX Runtime writes a device-id database under
``$XDG_CACHE_HOME/Microsoft/DeveloperTools`` (``~/.cache`` when unset) on the first session;
the int8 quantiser writes its augmented calibration model in a temporary folder under
``$TMPDIR`` (removed afterwards). Point both variables into the run directory in CI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg_helpers.fileutil import atomic_path

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


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: PathLike,
                dynamic_batch: bool = True, dynamic_spatial: bool = True,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` to one self-contained ONNX file with the ``torch.export`` exporter.

    The legacy TorchScript-based exporter (``dynamo=False``) raises a ``DeprecationWarning``
    and several ``TracerWarning`` s in torch 2.13; this exporter raises only a
    ``FutureWarning`` from torch's own pytree code (``isinstance(treespec, LeafSpec)``) and
    logs "torchvision is not installed" at WARNING level via ``logging``. Weights
    are embedded (``external_data=False``): no ``.onnx.data`` file, fine below 2 GB.

    Metadata ``medseg.size_multiple`` (the model's ``size_multiple``, 1 if it has none) and
    ``medseg.spatial_dims`` are stored for `OnnxSegmenter`.

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
                "medseg.spatial_dims": str(example.ndim - 2)}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    logger.info("exported ONNX (opset %d) to %s", opset, path)
    return path


def export_torchscript(model: nn.Module, example_input: torch.Tensor, path: PathLike,
                       freeze: bool = True) -> Path:
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
        torch.jit.save(module, str(tmp))
    return path


def export_program(model: nn.Module, example_input: torch.Tensor, path: PathLike,
                   dynamic_batch: bool = True, dynamic_spatial: bool = True) -> Path:
    """Export ``model`` with ``torch.export`` and save the ``ExportedProgram`` (``.pt2``).

    Load it with ``torch.export.load(path).module()``. ``torch.export.load`` unpickles
    parts of the archive: load only files you made (never user uploads).

    Args:
        model, example_input, dynamic_batch, dynamic_spatial: as in `export_onnx`.
        path: destination ``.pt2`` file, written atomically.

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
        torch.export.save(program, str(tmp))
    return path


def load_exported(path: PathLike, num_threads: int | None = None
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable ``(B, C, *S)`` float32 tensor → logits tensor for an exported file.

    Picks the runtime by suffix: ``.onnx`` → ONNX Runtime (`OnnxSegmenter`), ``.pt2`` →
    ``torch.export.load``, ``.pt``/``.ts`` → ``torch.jit.load`` (deprecation warning).

    Raises:
        ValueError: an unknown suffix.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        segmenter = OnnxSegmenter(path, num_threads=num_threads)
        return lambda x: torch.from_numpy(segmenter.predict_logits(x.detach().cpu().numpy()))
    if path.suffix == ".pt2":
        module = torch.export.load(str(path)).module()
    elif path.suffix in (".pt", ".ts"):
        module = torch.jit.load(str(path))
    else:
        raise ValueError(f"cannot tell the format of {path}; expected .onnx, .pt2, .pt or .ts")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


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


def _as_numpy(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return np.ascontiguousarray(image, dtype=np.float32)


class OnnxSegmenter:
    """ONNX Runtime inference for an exported segmentation network (CPU provider).

    ``session.run`` is thread-safe: one instance can serve several threads.

    Args:
        path: ``.onnx`` file from `export_onnx` (or any model with one input
            ``(B, C, *S)`` float32 and one output ``(B, K, *S)``).
        num_threads: intra-op threads (``None``: ONNX Runtime's default, all cores).
        size_multiple: spatial sizes the graph accepts are multiples of this; default from
            the file's ``medseg.size_multiple`` metadata, else 1.
        pad_mode: ``"reflect"`` (as the course U-Net pads) or ``"constant"`` (zeros).
    """

    def __init__(self, path: PathLike, *, num_threads: int | None = None,
                 size_multiple: int | None = None, pad_mode: str = "reflect") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.size_multiple = int(size_multiple or meta.get("medseg.size_multiple", 1))
        self.pad_mode = pad_mode

    def predict_logits(self, image: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits ``(B, K, *S)`` float32 for ``image`` ``(B, C, *S)`` (normalised input).

        Spatial sizes that are not multiples of ``size_multiple`` are padded (split evenly,
        as the course U-Net does) and the output is cropped back.
        """
        array = _as_numpy(image)
        if array.ndim not in (4, 5):
            raise ValueError(f"image must be (B, C, H, W) or (B, C, D, H, W); got {array.shape}")
        spatial = array.shape[2:]
        pads = [(0, 0), (0, 0)]
        for size in spatial:
            total = -size % self.size_multiple
            pads.append((total // 2, total - total // 2))
        if any(p for pair in pads for p in pair):
            array = np.pad(array, pads, mode=self.pad_mode)
        logits = self.session.run(None, {self.input_name: array})[0]
        crop = (slice(None), slice(None)) + tuple(
            slice(before, before + size) for (before, _), size in zip(pads[2:], spatial,
                                                                      strict=True))
        return np.ascontiguousarray(logits[crop])

    def sliding_window(self, image: np.ndarray | torch.Tensor, roi_size: Sequence[int],
                       overlap: float = 0.25, sw_batch_size: int = 4,
                       mode: str = "gaussian") -> np.ndarray:
        """Logits for an image larger than the training patch, by overlapping windows.

        Wraps ``monai.inferers.sliding_window_inference``: windows of ``roi_size`` are run
        through ONNX Runtime in batches of ``sw_batch_size`` and blended (``mode``
        ``"gaussian"`` down-weights window borders, ``"constant"`` averages).

        Args:
            image: ``(B, C, *S)`` float32, normalised; ``S`` may exceed ``roi_size``.
            roi_size: window size per spatial axis (the training patch size).
            overlap: fraction of a window shared with its neighbour, in [0, 1).
            sw_batch_size: windows per ONNX Runtime call.
            mode: ``"gaussian"`` or ``"constant"``.

        Returns:
            ``(B, K, *S)`` float32 logits.
        """
        from monai.inferers import sliding_window_inference

        tensor = torch.from_numpy(_as_numpy(image))

        def predictor(window: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.predict_logits(window.numpy()))

        with torch.no_grad():
            logits = sliding_window_inference(tensor, tuple(roi_size), sw_batch_size,
                                              predictor, overlap=overlap, mode=mode)
        return logits.numpy().astype(np.float32, copy=False)


class _ImageReader:
    """``CalibrationDataReader`` yielding one ``(1, C, *S)`` float32 image at a time."""

    def __init__(self, input_name: str, images: Iterable[np.ndarray | torch.Tensor]) -> None:
        self.input_name = input_name
        self._items = iter([_as_numpy(image) for image in images])

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._items, None)
        if image is None:
            return None
        return {self.input_name: image[None] if image.ndim in (3, 4) else image}


def quantize_onnx_int8(model_path: PathLike, out_path: PathLike,
                       calibration_images: Iterable[np.ndarray | torch.Tensor],
                       per_channel: bool = True) -> Path:
    """Static int8 quantisation (QDQ format) calibrated on real images.

    Weights become int8 per output channel; activation ranges are the min/max observed on
    ``calibration_images``, so those must be **real, normalised images** preprocessed
    exactly as at inference (a few dozen slices are enough). Calibrating on random noise
    gives ranges that fit noise, not anatomy: in MEASURED.md it dropped Dice from 0.67 to
    0.39.

    Why not dynamic quantisation: it quantises weights ahead of time but activations on the
    fly, and ONNX Runtime/PyTorch apply it to MatMul/Linear (and LSTM) layers, where weight
    loading dominates. A conv net spends its time in convolutions over large activation
    maps, which dynamic quantisation leaves in float, so the gain is small. Static int8 only
    pays when whole conv → ReLU chains stay in int8: instance norm and PReLU between convs
    force dequantise/quantise pairs (MEASURED: ~1.15× only); batch norm folded into the conv
    plus ReLU is the int8-friendly design.

    The quantiser logs warnings (e.g. suggesting ``quant_pre_process``) through ``logging``
    and writes an augmented model to a temporary folder under ``$TMPDIR``.

    Args:
        model_path: float32 ``.onnx`` (from `export_onnx`).
        out_path: destination ``.onnx``, written atomically; metadata is copied.
        calibration_images: ``(C, *S)`` or ``(B, C, *S)`` float32 arrays/tensors, all of one
            shape (spatial sizes multiples of ``size_multiple``).
        per_channel: one scale per output channel of each conv weight.

    Returns:
        ``out_path`` as a `Path`.

    Raises:
        ValueError: no calibration images.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    images = list(calibration_images)
    if not images:
        raise ValueError("quantize_onnx_int8 needs at least one calibration image")
    source = onnx.load(str(model_path))
    input_name = source.graph.input[0].name
    out_path = Path(out_path)
    with atomic_path(out_path, suffix=".onnx") as tmp:
        quantize_static(str(model_path), str(tmp), _ImageReader(input_name, images),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=per_channel)
        quantized = onnx.load(str(tmp))
        del quantized.metadata_props[:]
        quantized.metadata_props.extend(source.metadata_props)
        onnx.save(quantized, str(tmp))
    return out_path
