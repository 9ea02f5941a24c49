"""`VolumeSegmenter`: one raw scan in, its label map out, through an exported ONNX model,
prepared exactly as the model's training data was, with bounded memory per call.

The model runs as `deploy.deployment.load_deployment` says: in the runtime and precision
that ``medseg export --format best`` chose and recorded beside it (after a parity check),
else in ONNX Runtime, float32.

The service (`deploy.serve`) runs one per app; it is also usable on its own::

    segmenter = VolumeSegmenter("runs/export/model.onnx", num_classes=3)
    labels = segmenter.segment(read_volume("scan.nii.gz"))  # Volume (Z, Y, X) uint8
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from medseg_helpers.data.volume import Volume
from medseg_helpers.deploy.deployment import load_deployment
from medseg_helpers.deploy.preprocessing import (
    postprocessing_from_metadata,
    preprocessing_from_metadata,
)
from medseg_helpers.inferers import Model, SlidingWindowInferer, predict_logits

__all__ = ["VolumeSegmenter"]

PathLike = str | os.PathLike


class VolumeSegmenter:
    """Preprocess and segment one scan with an ONNX model, as the model was trained.

    The file's own `deploy.preprocessing.Preprocessing` (stored by the exporters) prepares
    the scan with the training cache's functions; `inferers.predict_logits` runs the
    model over it (slices cut along the training axis for a 2D model) in the runtime that
    `load_deployment` opens; the argmax goes back to the scan's grid, where the file's
    post-processing rule, if it carries one, is applied (as `TrainedModel.predict` does).

    Args:
        model_path: ``.onnx`` from `medseg_helpers.deploy.export.export_onnx` with
            ``preprocessing=`` given; one input channel per scan channel.
        num_classes: classes including background (the model's output channels).
        patch_size: training patch; larger inputs use sliding-window inference. ``(H, W)``
            for a 2D model (windows over each slice), ``(D, H, W)`` for 3D; ``None`` runs
            whole slices/volumes.
        slice_batch: at most this many slices per runtime call for a 2D model.
        window_batch: at most this many sliding windows per runtime call.
        num_threads: the runtime's threads per call.
        voxels_per_call: a bound on the voxels (pixels for 2D) one runtime call sees,
            which bounds the network's activation memory: fewer slices per call for large
            slices; without ``patch_size``, a slice or volume larger than this goes by
            sliding window with square (cubic) windows of the largest multiple of 16 that
            fits.

    Attributes:
        runner: the model in its runtime (`runtime.ExportedSegmenter`).
        postprocessing: the file's rule (`SmallComponentFilter`; empty when it has none).
        in_channels: the model's input channels (None if the graph leaves it dynamic).

    Raises:
        MissingPreprocessingError: the file carries no preprocessing metadata.
        DeploymentError: a recorded deployment fails its parity check.
        ValueError: output channels differ from ``num_classes``, ``patch_size`` has the
            wrong length, or a 2D model's preprocessing names no slicing axis.
    """

    def __init__(self, model_path: PathLike, *, num_classes: int,
                 patch_size: Sequence[int] | None = None, slice_batch: int = 16,
                 window_batch: int = 4, num_threads: int | None = None,
                 voxels_per_call: int = 2**18) -> None:
        self.runner = load_deployment(model_path, num_threads=num_threads)
        self.preprocessing = preprocessing_from_metadata(self.runner.metadata, model_path)
        self.postprocessing = postprocessing_from_metadata(self.runner.metadata)
        input_shape = self.runner.input_shape
        rank = len(input_shape)
        self.in_channels = input_shape[1] if isinstance(input_shape[1], int) else None
        self.spatial_dims = int(self.runner.metadata.get("medseg.spatial_dims", rank - 2))
        out_channels = self.runner.output_shape[1]
        if isinstance(out_channels, int) and out_channels != num_classes:
            raise ValueError(f"model has {out_channels} output channels; num_classes={num_classes}")
        if patch_size is not None and len(patch_size) != self.spatial_dims:
            raise ValueError(f"patch_size {tuple(patch_size)} must have {self.spatial_dims} "
                             "entries for this model")
        if self.spatial_dims == 2 and self.preprocessing.axis is None:
            raise ValueError(f"{Path(model_path).name}: a 2D model's preprocessing must name "
                             "the axis its training slices were cut along")
        self.num_classes, self.slice_batch, self.window_batch = (num_classes, slice_batch,
                                                                 window_batch)
        self.patch_size = None if patch_size is None else tuple(patch_size)
        self.voxels_per_call = voxels_per_call

    def _window(self, spatial_shape: Sequence[int]) -> tuple[int, ...] | None:
        """The sliding window for inputs of ``spatial_shape`` (None: whole inputs)."""
        if self.patch_size is not None:
            return self.patch_size
        if math.prod(spatial_shape) <= self.voxels_per_call:
            return None
        side = int(self.voxels_per_call ** (1 / len(spatial_shape)) + 1e-9) // 16 * 16
        return (max(16, side),) * len(spatial_shape)

    def _windows_per_call(self, window: Sequence[int]) -> int:
        """Sliding windows per runtime call: ``window_batch``, fewer if they would
        exceed ``voxels_per_call`` (at least one)."""
        return max(1, min(self.window_batch, self.voxels_per_call // math.prod(window)))

    def _slice_model(self, slice_shape: Sequence[int]) -> Model:
        """The 2D model the slice inferer runs: the runner, windowed over large slices."""
        window = self._window(slice_shape)
        if window is None:
            return self.runner
        windows = SlidingWindowInferer(window, self._windows_per_call(window))
        return lambda chunk: windows(self.runner, chunk)

    def segment(self, image: Volume) -> Volume:
        """Labels ``(Z, Y, X)`` uint8 in ``[0, num_classes)`` on the grid of ``image``.

        Args:
            image: the raw scan, ``(Z, Y, X)`` or ``(C, Z, Y, X)`` with its geometry.
        """
        prepared = self.preprocessing.apply(image)  # (C, Z', Y', X') on the training grid
        volume = torch.from_numpy(prepared.array)
        if self.spatial_dims == 2:
            axis = 1 + self.preprocessing.axis  # the slices' axis becomes D of (C, D, H, W)
            slices = volume.movedim(axis, 1)
            pixels = math.prod(slices.shape[2:])
            per_call = max(1, min(self.slice_batch, self.voxels_per_call // pixels))
            logits = predict_logits(self._slice_model(slices.shape[2:]), slices, 2,
                                    batch_size=per_call, device="cpu")
            labels = logits.argmax(0).to(torch.uint8).movedim(0, axis - 1)
        else:
            window = self._window(volume.shape[1:])
            per_call = 1 if window is None else self._windows_per_call(window)
            labels = predict_logits(self.runner, volume, 3, roi_size=window, batch_size=per_call,
                                    device="cpu").argmax(0).to(torch.uint8)
        pred = prepared.with_array(labels.numpy())
        return self.postprocessing.apply(self.preprocessing.to_source_grid(pred, image))
