"""A hardened HTTP inference service for an exported (ONNX) segmentation model.

Endpoints of the app built by `create_app`:

* ``POST /v1/segment`` - multipart form with one file field (any name) holding a NIfTI-1
  volume (``.nii`` or ``.nii.gz``; recognised by content: gzip magic ``1f 8b``, then the
  NIfTI header size 348 and magic ``n+1`` at byte 344, never by file name) or a zip of one
  DICOM series (magic ``PK``; ``?series_uid=`` picks one of several). The body is counted
  while it streams in: more than ``max_upload_bytes`` gives 413 before the rest is stored,
  and a body that stops arriving for ``body_timeout_s`` gives 408. The volume must be 3D,
  at most ``max_voxels`` voxels both as uploaded and on the grid the model sees (after
  resampling to the training spacing), checked from the header before any voxel is
  decoded, with a finite affine, real and finite voxels. It is preprocessed as the model's
  training data
  was (the `Preprocessing` stored in the ONNX file: resampling, normalisation), segmented
  by ONNX Runtime through `medseg_helpers.inferers.predict_logits` (slice by slice for a
  2D model, whole volume or sliding window for a 3D one), mapped back to the input's grid,
  and the mask is returned as ``.nii.gz`` bytes (``application/gzip``) with the input's
  affine and header, plus the summary in header ``X-Medseg-Summary`` (compact JSON). With
  ``?format=json`` the reply is JSON ``{"summary": ..., "mask_nii_gz_base64": ...}``.
  The summary holds ``shape_xyz``, ``voxel_volume_ml`` and ``volumes_ml`` / ``voxels`` per
  class (keys are class indices as strings).
* ``GET /health`` - ``{"status": "ok", "runtime": "openvino bf16", "parity": {...}, ...}``:
  the runtime the model runs in (`deployment.load_deployment`) and its load-time parity.
* ``GET /metrics`` - Prometheus text format: requests by path and status, a latency
  histogram of ``/v1/segment``, and the mean and standard deviation of each input's raw
  intensities (summaries with ``_sum``/``_count`` plus the last value) for drift monitoring.

Errors are JSON ``{"detail": "..."}``: 408 body stalled, 413 too large, 415 not a
NIfTI/zip, 422 content (wrong dimensionality, an empty axis, too many voxels, NaN/Inf,
unreadable, several DICOM series without ``series_uid``), 503 when every inference slot
stayed busy for ``queue_timeout_s``; an unexpected failure is a 500 without details (logged,
and counted in ``/metrics`` like every answer). Nothing uploaded is unpickled: the model is
ONNX, uploads are parsed as NIfTI/DICOM only (`medseg_helpers.deploy.uploads`; the
``/metrics`` counters are `medseg_helpers.deploy.service_metrics`).

**Memory.** At most ``max_concurrency`` requests decode and segment at once: a request
holds only its upload (at most ``max_upload_bytes``) while it waits for a slot. A running
request needs about ``(K + 4) x 4`` bytes per voxel of the model's grid (K classes: the
float32 input, its preprocessed copy, the logits, the mask) plus the network's activations,
which `deploy.segmenter.VolumeSegmenter` bounds by giving each ONNX Runtime call at most
``voxels_per_call`` voxels (larger slices or volumes go by sliding window).
`benchmarks/bench_service.py` measures the peak. A model exported without its
preprocessing is refused when the app is built (`MissingPreprocessingError`, one line),
never served with guessed inputs, as is a model that needs more than one input channel.

The module has no ``from __future__ import annotations``: FastAPI resolves the endpoint
annotations (``Request``), which are imported inside `create_app`.
"""

import asyncio
import base64
import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg_helpers.data.volume import Volume
from medseg_helpers.deploy.segmenter import VolumeSegmenter
from medseg_helpers.deploy.service_metrics import ServiceMetrics
from medseg_helpers.deploy.uploads import (
    ServiceError,
    mask_to_nifti_gz,
    parse_dicom_zip,
    parse_nifti,
    sniff_format,
)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
_DRAIN_BYTES = 8 * 2**20  # read (and drop) this much past the limit so clients see the 413


#: OpenAPI description of ``POST /v1/segment``'s body and error answers.
_SEGMENT_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description":
                            "NIfTI-1 (.nii / .nii.gz) or a zip of one DICOM series"}}}}}}
_ERRORS = {408: "the body stopped arriving (body_timeout_s)",
           413: "upload larger than max_upload_bytes",
           415: "not multipart, or the file is not NIfTI-1 or a zip",
           422: "bad content: not 3D, an empty axis, too many voxels, NaN/Inf, unreadable, "
                "several DICOM series without series_uid",
           503: "every inference slot stayed busy for queue_timeout_s"}


def create_app(model_path: PathLike, *, num_classes: int, max_upload_bytes: int = 64 * 2**20,
               max_voxels: int = 256**3, patch_size: Sequence[int] | None = None,
               max_concurrency: int = 2, queue_timeout_s: float = 30.0,
               body_timeout_s: float = 30.0, num_threads: int | None = None,
               voxels_per_call: int = 2**18, class_names: Sequence[str] | None = None):
    """Build the FastAPI app serving ``model_path`` (see the module docstring for the API).

    Args:
        model_path: ONNX model (never a pickle) exported with its ``preprocessing``, with
            one input channel.
        num_classes: classes including background.
        max_upload_bytes: largest accepted request body (413 beyond, counted while streaming).
        max_voxels: largest accepted volume (422 beyond), as uploaded and on the model's
            grid, checked from the header before the voxels are decoded; gzip bodies may
            expand to at most 8 bytes per voxel.
        patch_size: see `VolumeSegmenter`.
        max_concurrency: requests decoding and segmenting at once (the rest wait).
        queue_timeout_s: a request waiting longer for a slot gets 503.
        body_timeout_s: a request body that sends nothing for this long gets 408.
        num_threads: ONNX Runtime threads per inference.
        voxels_per_call: see `VolumeSegmenter`.
        class_names: optional names reported in ``/health``.

    Returns:
        A ``fastapi.FastAPI`` application (run it with uvicorn, see `run_server`).

    Raises:
        MissingPreprocessingError, ValueError: see `VolumeSegmenter`; ValueError also for
        a model with more than one input channel or a limit below 1.
    """
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.concurrency import run_in_threadpool

    limits = {"max_upload_bytes": max_upload_bytes, "max_voxels": max_voxels,
              "max_concurrency": max_concurrency, "voxels_per_call": voxels_per_call}
    for name, value in limits.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1; got {value}")
    for name, value in (("queue_timeout_s", queue_timeout_s), ("body_timeout_s", body_timeout_s)):
        if not value > 0:
            raise ValueError(f"{name} must be positive; got {value}")
    segmenter = VolumeSegmenter(model_path, num_classes=num_classes, patch_size=patch_size,
                                num_threads=num_threads, voxels_per_call=voxels_per_call)
    if segmenter.in_channels not in (None, 1):
        raise ValueError(f"{Path(model_path).name} takes {segmenter.in_channels} input "
                         "channels; the service segments single-channel volumes (one scan "
                         "per request)")
    runner = segmenter.runner
    logger.info("serving %s with %s %s%s", Path(model_path).name, runner.runtime,
                runner.precision, "" if runner.parity is None else
                f" (parity at load: max |logit difference| {runner.parity['max_abs_diff']:.2g}, "
                f"agreement {runner.parity['agreement']:.4f})")
    metrics = ServiceMetrics()
    slots = threading.BoundedSemaphore(max_concurrency)
    app = FastAPI(title="medseg segmentation service", version="1")
    app.state.metrics, app.state.segmenter = metrics, segmenter

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # a bug, not bad input: answer 500 without details, and count it
            logger.exception("unexpected error answering %s %s", request.method,
                             request.url.path)
            response = JSONResponse({"detail": "internal server error (logged)"},
                                    status_code=500)
        metrics.observe_request(request.url.path, response.status_code)
        if request.url.path == "/v1/segment":
            metrics.observe_latency(time.perf_counter() - start)
        return response

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, err: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    async def next_chunk(chunks) -> bytes | None:
        """The next body chunk (None at the end); 408 if none arrives in time."""
        try:
            return await asyncio.wait_for(anext(chunks), body_timeout_s)
        except StopAsyncIteration:
            return None
        except TimeoutError as err:
            raise ServiceError(408, f"no request data for {body_timeout_s:g} s: the body "
                                    "is shorter than its Content-Length, or stalled") from err

    async def read_body_limited(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        over = declared is not None and declared.isdigit() and int(declared) > max_upload_bytes
        body, drained = bytearray(), 0
        chunks = aiter(request.stream())
        while (chunk := await next_chunk(chunks)) is not None:
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

    def check_grid(shape_xyz: tuple[int, int, int],
                   spacing_xyz: tuple[float, float, float]) -> None:
        """422 if the model's grid (after resampling) holds more than ``max_voxels``."""
        prepared = segmenter.preprocessing.prepared_shape(shape_xyz[::-1], spacing_xyz[::-1])
        if math.prod(prepared) > max_voxels:
            raise ServiceError(
                422, f"volume {tuple(shape_xyz)} at {tuple(round(v, 4) for v in spacing_xyz)} "
                     f"mm becomes {prepared[::-1]} = {math.prod(prepared)} voxels on the "
                     f"model's {segmenter.preprocessing.spacing_mm[::-1]} mm grid; the limit "
                     f"is {max_voxels}")

    def decode(data: bytes, kind: str, series_uid: str | None) -> tuple[np.ndarray, Any]:
        """The upload's voxels ``(X, Y, Z)`` float32 and nibabel image (all limits checked);
        ``kind`` is `sniff_format`'s answer."""
        if kind == "zip":
            return parse_dicom_zip(data, max_voxels * 8 + 2**24, max_voxels, check_grid,
                                   series_uid)
        return parse_nifti(data, max_voxels, check_grid)

    def process(data: bytes, series_uid: str | None) -> tuple[bytes, dict[str, Any]]:
        kind = sniff_format(data)  # 415 without waiting for a slot
        if not slots.acquire(timeout=queue_timeout_s):
            raise ServiceError(503, "all inference slots busy; retry later")
        try:  # decode inside the slot: at most max_concurrency decoded volumes at once
            array, image = decode(data, kind, series_uid)
            metrics.observe_intensity(float(array.mean(dtype=np.float64)),
                                      float(array.std(dtype=np.float64)))
            try:
                scan = Volume.from_affine_ras(array, image.affine)
            except ValueError as err:  # a sheared affine has no ITK geometry
                raise ServiceError(422, f"unsupported geometry: {err}") from err
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

    @app.post("/v1/segment", openapi_extra={"requestBody": _SEGMENT_BODY},
              responses={200: {"description": "the mask as .nii.gz (``application/gzip``; "
                                              "summary in header X-Medseg-Summary), or JSON "
                                              "with ?format=json",
                               "content": {"application/gzip": {}}},
                         **{code: {"description": text, "content": {"application/json": {
                             "schema": {"type": "object", "properties": {
                                 "detail": {"type": "string"}}}}}}
                            for code, text in _ERRORS.items()}})
    async def segment(request: Request,
                      format_: str = Query("nifti", alias="format",
                                           pattern="^(nifti|json)$"),
                      series_uid: str | None = Query(
                          None, max_length=64, pattern=r"^[0-9.]+$",
                          description="SeriesInstanceUID, for a zip of several series")
                      ) -> Response:
        """Segment one uploaded volume (see the service's module documentation)."""
        start = time.perf_counter()
        data = await extract_upload(request)
        mask_bytes, summary = await run_in_threadpool(process, data, series_uid)
        summary["latency_s"] = round(time.perf_counter() - start, 4)
        if format_ == "json":
            return JSONResponse({"summary": summary,
                                 "mask_nii_gz_base64": base64.b64encode(mask_bytes).decode()})
        return Response(mask_bytes, media_type="application/gzip",
                        headers={"X-Medseg-Summary": json.dumps(summary, separators=(",", ":")),
                                 "Content-Disposition": 'attachment; filename="mask.nii.gz"'})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        runner = segmenter.runner
        return {"status": "ok", "model": Path(model_path).name, "num_classes": num_classes,
                "spatial_dims": segmenter.spatial_dims,
                "runtime": f"{runner.runtime} {runner.precision}", "parity": runner.parity,
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
