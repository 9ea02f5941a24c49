"""A hardened HTTP inference service for an exported (ONNX) segmentation model.

Endpoints of the app built by `create_app`:

* ``POST /v1/segment`` - multipart form with one file field (any name) holding a NIfTI-1
  volume (``.nii`` or ``.nii.gz``; recognised by content: gzip magic ``1f 8b``, then the
  NIfTI header size 348 and magic ``n+1`` at byte 344, never by file name) or a zip of one
  DICOM series (magic ``PK``). The body is counted while it streams in: more than
  ``max_upload_bytes`` gives 413 before the rest is stored. The volume must be 3D, at most
  ``max_voxels`` voxels, real and finite. It is preprocessed as the model's training data
  was (the `Preprocessing` stored in the ONNX file: resampling, normalisation), segmented
  by ONNX Runtime through `medseg_helpers.inferers.predict_logits` (slice by slice for a
  2D model, whole volume or sliding window for a 3D one), mapped back to the input's grid,
  and the mask is returned as ``.nii.gz`` bytes (``application/gzip``) with the input's
  affine and header, plus the summary in header ``X-Medseg-Summary`` (compact JSON). With
  ``?format=json`` the reply is JSON ``{"summary": ..., "mask_nii_gz_base64": ...}``.
  The summary holds ``shape_xyz``, ``voxel_volume_ml`` and ``volumes_ml`` / ``voxels`` per
  class (keys are class indices as strings).
* ``GET /health`` - ``{"status": "ok", ...}``.
* ``GET /metrics`` - Prometheus text format: requests by path and status, a latency
  histogram of ``/v1/segment``, and the mean and standard deviation of each input's raw
  intensities (summaries with ``_sum``/``_count`` plus the last value) for drift monitoring.

Errors are JSON ``{"detail": "..."}``: 413 too large, 415 not a NIfTI/zip, 422 content
(wrong dimensionality, too many voxels, NaN/Inf, unreadable), 503 when every inference slot
stayed busy for ``queue_timeout_s``. Nothing uploaded is unpickled: the model is ONNX,
uploads are parsed as NIfTI/DICOM only (`medseg_helpers.deploy.uploads`; the ``/metrics``
counters are `medseg_helpers.deploy.service_metrics`). Inference runs in the thread pool, at most
``max_concurrency`` at a time. A model exported without its preprocessing is refused when
the app is built (`MissingPreprocessingError`, one line), never served with guessed inputs.

The module has no ``from __future__ import annotations``: FastAPI resolves the endpoint
annotations (``Request``), which are imported inside `create_app`.
"""

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg_helpers.data.volume import Volume
from medseg_helpers.deploy.preprocessing import preprocessing_from_metadata
from medseg_helpers.deploy.runtime import OnnxSegmenter
from medseg_helpers.deploy.service_metrics import ServiceMetrics
from medseg_helpers.deploy.uploads import (
    ServiceError,
    mask_to_nifti_gz,
    parse_dicom_zip,
    parse_nifti,
    sniff_format,
)
from medseg_helpers.inferers import Model, SlidingWindowInferer, predict_logits

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
_DRAIN_BYTES = 8 * 2**20  # read (and drop) this much past the limit so clients see the 413


class VolumeSegmenter:
    """Preprocess and segment one scan with an ONNX model, as the model was trained.

    The file's own `deploy.preprocessing.Preprocessing` (stored by the exporters) prepares
    the scan with the training cache's functions; `inferers.predict_logits` runs the ONNX
    Runtime session over it (slices cut along the training axis for a 2D model); the
    argmax goes back to the scan's grid.

    Args:
        model_path: ``.onnx`` from `medseg_helpers.deploy.export.export_onnx` with
            ``preprocessing=`` given; one input channel per scan channel.
        num_classes: classes including background (the model's output channels).
        patch_size: training patch; larger inputs use sliding-window inference. ``(H, W)``
            for a 2D model (windows over each slice), ``(D, H, W)`` for 3D; ``None`` runs
            whole slices/volumes.
        slice_batch: slices per ONNX Runtime call for a 2D model.
        window_batch: sliding windows per ONNX Runtime call.
        num_threads: ONNX Runtime intra-op threads per call.

    Raises:
        MissingPreprocessingError: the file carries no preprocessing metadata.
        ValueError: output channels differ from ``num_classes``, ``patch_size`` has the
            wrong length, or a 2D model's preprocessing names no slicing axis.
    """

    def __init__(self, model_path: PathLike, *, num_classes: int,
                 patch_size: Sequence[int] | None = None, slice_batch: int = 16,
                 window_batch: int = 4, num_threads: int | None = None) -> None:
        self.onnx = OnnxSegmenter(model_path, num_threads=num_threads)
        self.preprocessing = preprocessing_from_metadata(self.onnx.metadata, model_path)
        rank = len(self.onnx.session.get_inputs()[0].shape)
        self.spatial_dims = int(self.onnx.metadata.get("medseg.spatial_dims", rank - 2))
        out_channels = self.onnx.session.get_outputs()[0].shape[1]
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

    def _slice_model(self) -> Model:
        """The 2D model the slice inferer runs: ONNX Runtime, windowed over large slices."""
        if self.patch_size is None:
            return self.onnx
        windows = SlidingWindowInferer(self.patch_size, self.window_batch)
        return lambda chunk: windows(self.onnx, chunk)

    def segment(self, image: Volume) -> Volume:
        """Labels ``(Z, Y, X)`` uint8 in ``[0, num_classes)`` on the grid of ``image``.

        Args:
            image: the raw scan, ``(Z, Y, X)`` or ``(C, Z, Y, X)`` with its geometry.
        """
        prepared = self.preprocessing.apply(image)  # (C, Z', Y', X') on the training grid
        volume = torch.from_numpy(prepared.array)
        if self.spatial_dims == 2:
            axis = 1 + self.preprocessing.axis  # the slices' axis becomes D of (C, D, H, W)
            logits = predict_logits(self._slice_model(), volume.movedim(axis, 1), 2,
                                    batch_size=self.slice_batch, device="cpu")
            labels = logits.argmax(0).movedim(0, axis - 1)
        else:
            labels = predict_logits(self.onnx, volume, 3, roi_size=self.patch_size,
                                    batch_size=self.window_batch, device="cpu").argmax(0)
        pred = prepared.with_array(labels.numpy().astype(np.uint8))
        return self.preprocessing.to_source_grid(pred, image)


def create_app(model_path: PathLike, *, num_classes: int, max_upload_bytes: int = 64 * 2**20,
               max_voxels: int = 256**3, patch_size: Sequence[int] | None = None,
               max_concurrency: int = 2, queue_timeout_s: float = 30.0,
               num_threads: int | None = None, class_names: Sequence[str] | None = None):
    """Build the FastAPI app serving ``model_path`` (see the module docstring for the API).

    Args:
        model_path: ONNX model (never a pickle) exported with its ``preprocessing``.
        num_classes: classes including background.
        max_upload_bytes: largest accepted request body (413 beyond, counted while streaming).
        max_voxels: largest accepted volume (422 beyond), checked from the header before the
            voxels are decoded; gzip bodies may expand to at most 8 bytes per voxel.
        patch_size: see `VolumeSegmenter`.
        max_concurrency: inferences running at once (bounded semaphore; the rest wait).
        queue_timeout_s: a request waiting longer for a slot gets 503.
        num_threads: ONNX Runtime threads per inference.
        class_names: optional names reported in ``/health``.

    Returns:
        A ``fastapi.FastAPI`` application (run it with uvicorn, see `run_server`).

    Raises:
        MissingPreprocessingError, ValueError: see `VolumeSegmenter`.
    """
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.concurrency import run_in_threadpool

    segmenter = VolumeSegmenter(model_path, num_classes=num_classes, patch_size=patch_size,
                                num_threads=num_threads)
    metrics = ServiceMetrics()
    slots = threading.BoundedSemaphore(max_concurrency)
    app = FastAPI(title="medseg segmentation service", version="1")
    app.state.metrics, app.state.segmenter = metrics, segmenter

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        metrics.observe_request(request.url.path, response.status_code)
        if request.url.path == "/v1/segment":
            metrics.observe_latency(time.perf_counter() - start)
        return response

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, err: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    async def read_body_limited(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        over = declared is not None and declared.isdigit() and int(declared) > max_upload_bytes
        body, drained = bytearray(), 0
        async for chunk in request.stream():
            if not over and len(body) + len(chunk) <= max_upload_bytes:
                body.extend(chunk)
                continue
            over, drained = True, drained + len(chunk)
            if drained > _DRAIN_BYTES:
                break
        if over:
            raise ServiceError(413, f"upload larger than {max_upload_bytes} bytes")
        return bytes(body)

    async def extract_upload(request: Request) -> bytes:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ServiceError(415, "send the volume as multipart/form-data with one file field")
        body = await read_body_limited(request)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
        except Exception as err:  # malformed multipart
            raise ServiceError(422, f"malformed multipart body: {err}") from err
        uploads = [value for _, value in form.multi_items() if hasattr(value, "read")]
        if len(uploads) != 1:
            raise ServiceError(422, f"expected exactly one uploaded file; got {len(uploads)}")
        return await uploads[0].read()

    def process(data: bytes) -> tuple[bytes, dict[str, Any]]:
        kind = sniff_format(data)
        if kind == "zip":
            array, image = parse_dicom_zip(data, max_voxels * 8 + 2**24, max_voxels)
        else:
            array, image = parse_nifti(data, max_voxels)
        metrics.observe_intensity(float(array.mean(dtype=np.float64)),
                                  float(array.std(dtype=np.float64)))
        try:
            scan = Volume.from_affine_ras(array, image.affine)
        except ValueError as err:  # a sheared affine has no ITK geometry
            raise ServiceError(422, f"unsupported geometry: {err}") from err
        if not slots.acquire(timeout=queue_timeout_s):
            raise ServiceError(503, "all inference slots busy; retry later")
        try:
            pred = np.transpose(segmenter.segment(scan).array, (2, 1, 0))  # (X, Y, Z)
        finally:
            slots.release()
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        voxel_ml = float(np.prod(zooms)) / 1000.0
        counts = np.bincount(pred.ravel(), minlength=num_classes)
        summary = {"shape_xyz": list(pred.shape), "spacing_xyz_mm": zooms,
                   "voxel_volume_ml": voxel_ml,
                   "voxels": {str(k): int(c) for k, c in enumerate(counts)},
                   "volumes_ml": {str(k): float(c) * voxel_ml for k, c in enumerate(counts)}}
        return mask_to_nifti_gz(pred, image), summary

    @app.post("/v1/segment")
    async def segment(request: Request,
                      format_: str = Query("nifti", alias="format")) -> Response:
        if format_ not in ("nifti", "json"):
            raise ServiceError(422, f"format must be 'nifti' or 'json'; got {format_!r}")
        start = time.perf_counter()
        data = await extract_upload(request)
        mask_bytes, summary = await run_in_threadpool(process, data)
        summary["latency_s"] = round(time.perf_counter() - start, 4)
        if format_ == "json":
            return JSONResponse({"summary": summary,
                                 "mask_nii_gz_base64": base64.b64encode(mask_bytes).decode()})
        return Response(mask_bytes, media_type="application/gzip",
                        headers={"X-Medseg-Summary": json.dumps(summary, separators=(",", ":")),
                                 "Content-Disposition": 'attachment; filename="mask.nii.gz"'})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": Path(model_path).name, "num_classes": num_classes,
                "spatial_dims": segmenter.spatial_dims,
                "class_names": list(class_names) if class_names else None}

    @app.get("/metrics")
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def run_server(model_path: PathLike, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "info", **kw: Any) -> None:
    """Serve ``model_path`` with uvicorn until interrupted (blocks).

    Args:
        model_path, **kw: passed to `create_app` (``num_classes`` is required).
        host: interface; keep ``127.0.0.1`` unless behind a proxy (``0.0.0.0`` in Docker).
        port: TCP port.
        log_level: uvicorn log level.
    """
    import uvicorn

    uvicorn.run(create_app(model_path, **kw), host=host, port=port, log_level=log_level)
