"""Run an exported segmentation network outside eager PyTorch.

Two runtimes execute the same ``.onnx`` file from `medseg_helpers.deploy.export.export_onnx`
(float32, or int8 from `medseg_helpers.deploy.quantize`):

* `OnnxSegmenter`: ONNX Runtime, CPU provider (the ``deploy`` extra).
* `OpenVinoSegmenter`: Intel's OpenVINO, CPU plugin (the optional ``openvino`` extra). It can
  also compute a float32 file in **bfloat16** (``precision="bf16"``), which CPUs with
  AVX-512 BF16 or AMX run natively; elsewhere OpenVINO falls back to float32.

Both are called like a network: a ``(B, C, *S)`` float32 tensor in, logits ``(B, K, *S)``
out, so whole volumes go through `medseg_helpers.inferers` (slice by slice, or by sliding
window) exactly as eager models do. Sizes that are not multiples of the file's
``medseg.size_multiple`` are padded and cropped back. `load_exported` turns any exported
file (``.onnx``, ``.pt2``, ``.pt``/``.ts``) into such a callable.

Files written outside the output path: ONNX Runtime writes a device-id database under
``$XDG_CACHE_HOME/Microsoft/DeveloperTools`` (``~/.cache`` when unset) on the first
session. Point that variable into the run directory in CI.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

PathLike = str | os.PathLike

__all__ = ["RUNTIME_PRECISIONS", "ExportedSegmenter", "OnnxSegmenter", "OpenVinoSegmenter",
           "as_float32_array", "load_exported", "load_onnx", "openvino_available"]

#: Runtime -> the compute precisions it offers for a float32 file (an int8 file is int8).
RUNTIME_PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}


def as_float32_array(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """``image`` as a C-contiguous float32 NumPy array (a tensor is detached and moved to CPU)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return np.ascontiguousarray(image, dtype=np.float32)


def openvino_available() -> bool:
    """Whether the optional OpenVINO runtime is installed (``pip install openvino``)."""
    return importlib.util.find_spec("openvino") is not None


class ExportedSegmenter:
    """What both runtimes share: the file's metadata, padding to ``size_multiple``, and
    the network-like call. Subclasses implement `_run` on a padded ``(B, C, *S)`` array.

    Attributes:
        path: the ``.onnx`` file.
        metadata: its ``metadata_props`` as ``{key: value}`` (``medseg.*`` entries written by
            `export_onnx`).
        input_shape, output_shape: the graph's shapes, a string for each dynamic axis.
        size_multiple: spatial sizes the graph accepts are multiples of this.
        runtime, precision: e.g. ``"onnxruntime"``, ``"fp32"``.
        parity, descriptor: set by `deployment.load_deployment` (its load-time parity
            check and the ``*.deploy.json`` it followed); None otherwise.
    """

    runtime = ""
    precision = "fp32"

    def __init__(self, path: PathLike, metadata: dict[str, str], size_multiple: int | None,
                 pad_mode: str) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self.size_multiple = int(size_multiple or metadata.get("medseg.size_multiple", 1))
        self.pad_mode = pad_mode
        self.input_shape: list[int | str] = []
        self.output_shape: list[int | str] = []
        self.parity: dict[str, float] | None = None
        self.descriptor: dict | None = None

    def _run(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_logits(self, image: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits ``(B, K, *S)`` float32 for ``image`` ``(B, C, *S)`` (normalised input).

        Spatial sizes that are not multiples of ``size_multiple`` are padded (split evenly,
        as the course U-Net does) and the output is cropped back.
        """
        array = as_float32_array(image)
        if array.ndim not in (4, 5):
            raise ValueError(f"image must be (B, C, H, W) or (B, C, D, H, W); got {array.shape}")
        spatial = array.shape[2:]
        pads = [(0, 0), (0, 0)]
        for size in spatial:
            total = -size % self.size_multiple
            pads.append((total // 2, total - total // 2))
        if any(p for pair in pads for p in pair):
            array = np.pad(array, pads, mode=self.pad_mode)
        logits = self._run(array)
        crop = (slice(None), slice(None)) + tuple(
            slice(before, before + size) for (before, _), size in zip(pads[2:], spatial,
                                                                      strict=True))
        return np.ascontiguousarray(logits[crop], dtype=np.float32)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """`predict_logits` tensor to tensor: ``(B, C, *S)`` -> ``(B, K, *S)`` float32 on
        the CPU, so an inferer (`medseg_helpers.inferers`) can use it as the model."""
        return torch.from_numpy(self.predict_logits(image))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.name!r}, {self.runtime} {self.precision})"


class OnnxSegmenter(ExportedSegmenter):
    """ONNX Runtime inference for an exported segmentation network (CPU provider).

    ``session.run`` is thread-safe: one instance can serve several threads.

    Args:
        path: ``.onnx`` file from `export_onnx` (or any model with one input
            ``(B, C, *S)`` float32 and one output ``(B, K, *S)``).
        num_threads: intra-op threads (``None``: ONNX Runtime's default, all cores).
        size_multiple: default from the file's ``medseg.size_multiple`` metadata, else 1.
        pad_mode: ``"reflect"`` (as the course U-Net pads) or ``"constant"`` (zeros).
        default_options: use ``SessionOptions()`` untouched (all cores, spinning, two
            thread pools), the baseline the benchmarks compare tuned settings against.
    """

    runtime = "onnxruntime"

    def __init__(self, path: PathLike, *, num_threads: int | None = None,
                 size_multiple: int | None = None, pad_mode: str = "reflect",
                 default_options: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if not default_options:
            if num_threads is not None:
                options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        super().__init__(path, metadata, size_multiple, pad_mode)
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = list(self.session.get_inputs()[0].shape)
        self.output_shape = list(self.session.get_outputs()[0].shape)

    def _run(self, array: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: array})[0]


class OpenVinoSegmenter(ExportedSegmenter):
    """OpenVINO inference (CPU plugin) for the same ``.onnx`` files as `OnnxSegmenter`.

    OpenVINO reads ONNX directly (no conversion step) and runs a QDQ int8 file with its
    int8 kernels. One compiled model serves several threads: each thread gets its own
    infer request.

    Args:
        path: ``.onnx`` file (float32 or QDQ int8).
        precision: ``"fp32"`` computes in float32; ``"bf16"`` in bfloat16 (8 bits of
            mantissa: logits differ by about 1e-1, classes rarely), native on CPUs with
            AVX-512 BF16 or AMX. OpenVINO's own default on such CPUs is bf16, so it is
            always set explicitly here.
        num_threads: inference threads (``None``: OpenVINO's default, all cores).
        size_multiple, pad_mode: as `OnnxSegmenter`.

    Raises:
        ImportError: OpenVINO is not installed (one line saying how to install it).
        ValueError: an unknown precision.
    """

    runtime = "openvino"

    def __init__(self, path: PathLike, *, precision: str = "fp32",
                 num_threads: int | None = None, size_multiple: int | None = None,
                 pad_mode: str = "reflect") -> None:
        if precision not in RUNTIME_PRECISIONS["openvino"]:
            raise ValueError(f"OpenVINO precision must be 'fp32' or 'bf16', got {precision!r}")
        if not openvino_available():
            raise ImportError("OpenVINO is not installed: pip install 'medseg-helpers[openvino]'")
        import onnx
        import openvino as ov

        header = onnx.load(str(path), load_external_data=False)
        super().__init__(path, {p.key: p.value for p in header.metadata_props},
                         size_multiple, pad_mode)
        self.precision = precision
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY"}
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = num_threads
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.input_shape = _ov_shape(self.compiled.inputs[0].get_partial_shape())
        self.output_shape = _ov_shape(self.compiled.outputs[0].get_partial_shape())
        self._local = threading.local()

    def _run(self, array: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({0: array})
        return request.get_output_tensor(0).data.copy()


def _ov_shape(shape) -> list[int | str]:
    """An OpenVINO partial shape as `OnnxSegmenter` reports shapes (str: dynamic axis)."""
    return [int(d.get_length()) if d.is_static else "?" for d in shape]


def load_onnx(path: PathLike, *, runtime: str = "onnxruntime", precision: str = "fp32",
              num_threads: int | None = None) -> ExportedSegmenter:
    """An ``.onnx`` file in the named runtime (``"onnxruntime"`` or ``"openvino"``).

    Raises:
        ValueError: an unknown runtime, or a precision the runtime does not offer.
        ImportError: OpenVINO asked for but not installed.
    """
    if runtime not in RUNTIME_PRECISIONS:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of "
                         f"{', '.join(RUNTIME_PRECISIONS)}")
    if precision not in RUNTIME_PRECISIONS[runtime]:
        raise ValueError(f"{runtime} offers precisions {RUNTIME_PRECISIONS[runtime]}, "
                         f"not {precision!r}")
    if runtime == "openvino":
        return OpenVinoSegmenter(path, precision=precision, num_threads=num_threads)
    return OnnxSegmenter(path, num_threads=num_threads)


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
        return load_onnx(path, num_threads=num_threads)
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
