"""Run an exported segmentation network outside eager PyTorch.

`OnnxSegmenter` runs an ``.onnx`` file from `medseg_helpers.deploy.export.export_onnx` with
ONNX Runtime (CPU provider). Called with a tensor it returns a tensor, like a network, so
whole volumes go through `medseg_helpers.inferers` (slice by slice, or by sliding window
for images larger than the training patch) exactly as eager models do. `load_exported`
turns any exported file (``.onnx``, ``.pt2``, ``.pt``/``.ts``) into one such callable.

Files written outside the output path: ONNX Runtime writes a device-id database under
``$XDG_CACHE_HOME/Microsoft/DeveloperTools`` (``~/.cache`` when unset) on the first
session. Point that variable into the run directory in CI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

PathLike = str | os.PathLike


def as_float32_array(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """``image`` as a C-contiguous float32 NumPy array (a tensor is detached and moved to CPU)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return np.ascontiguousarray(image, dtype=np.float32)


class OnnxSegmenter:
    """ONNX Runtime inference for an exported segmentation network (CPU provider).

    ``session.run`` is thread-safe: one instance can serve several threads.

    Attributes:
        metadata: the file's ``metadata_props`` as ``{key: value}`` (``medseg.*`` entries
            written by `export_onnx`).

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
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.size_multiple = int(size_multiple or self.metadata.get("medseg.size_multiple", 1))
        self.pad_mode = pad_mode

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
        logits = self.session.run(None, {self.input_name: array})[0]
        crop = (slice(None), slice(None)) + tuple(
            slice(before, before + size) for (before, _), size in zip(pads[2:], spatial,
                                                                      strict=True))
        return np.ascontiguousarray(logits[crop])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """`predict_logits` tensor to tensor: ``(B, C, *S)`` -> ``(B, K, *S)`` float32 on
        the CPU, so an inferer (`medseg_helpers.inferers`) can use it as the model."""
        return torch.from_numpy(self.predict_logits(image))


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
        return OnnxSegmenter(path, num_threads=num_threads)
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
