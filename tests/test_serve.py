"""The inference service, tested through a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import socket
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
nib = pytest.importorskip("nibabel")

from medseg_helpers.data.volume import Volume  # noqa: E402
from medseg_helpers.deploy.export import export_onnx  # noqa: E402
from medseg_helpers.deploy.preprocessing import (  # noqa: E402
    MissingPreprocessingError,
    Preprocessing,
)
from medseg_helpers.deploy.segmenter import VolumeSegmenter  # noqa: E402
from medseg_helpers.deploy.serve import create_app  # noqa: E402
from medseg_helpers.deploy.service_metrics import ServiceMetrics  # noqa: E402
from medseg_helpers.deploy.uploads import sniff_format  # noqa: E402
from medseg_helpers.networks.unet import UNet  # noqa: E402
from medseg_helpers.transforms.postprocess import SmallComponentFilter  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

MAX_UPLOAD = 512 * 1024  # bytes
MAX_VOXELS = 64 * 64 * 32
NUM_CLASSES = 3
TIMEOUT = httpx.Timeout(30.0)
# Voxel size 0.8 x 0.9 x 2.5 mm, rotated about z and shifted: geometry must round-trip.
AFFINE = np.array([[0.0, -0.9, 0.0, 10.0], [0.8, 0.0, 0.0, -20.0],
                   [0.0, 0.0, 2.5, 30.0], [0.0, 0.0, 0.0, 1.0]])
ZSCORE_AXIAL = Preprocessing("zscore", {}, None, axis=0)  # the course slice cache's default


@pytest.fixture(scope="module")
def server(axial_onnx_model):
    """Base URL of a uvicorn server on a free loopback port (stopped after the module)."""
    app = create_app(axial_onnx_model, num_classes=NUM_CLASSES, max_upload_bytes=MAX_UPLOAD,
                     max_voxels=MAX_VOXELS, max_concurrency=2, num_threads=1)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", limit_concurrency=32)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 20 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


def _nifti_bytes(array: np.ndarray, compress: bool = True) -> bytes:
    data = nib.Nifti1Image(array, AFFINE).to_bytes()
    return gzip.compress(data) if compress else data


def _scan(shape=(40, 36, 6), seed: int = 0) -> np.ndarray:
    """An MR-like ``(X, Y, Z)`` float32 image: a bright disc on a noisy background."""
    rng = np.random.default_rng(seed)
    xx, yy = np.mgrid[:shape[0], :shape[1]]
    disc = ((xx - shape[0] / 2) ** 2 + (yy - shape[1] / 2) ** 2 < 80).astype(np.float32)
    image = 100 + 300 * disc[..., None] + 10 * rng.normal(size=shape)
    return image.astype(np.float32)


def _post(url: str, payload: bytes, filename: str = "scan.nii.gz", **params):
    with httpx.Client(timeout=TIMEOUT) as client:
        return client.post(f"{url}/v1/segment", params=params,
                           files={"file": (filename, payload, "application/octet-stream")})


def _request_count(url: str, status: int) -> int:
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    found = re.search(rf'medseg_requests_total{{path="/v1/segment",status="{status}"}} (\d+)', text)
    return int(found.group(1)) if found else 0


def test_valid_request_returns_mask_with_input_geometry(server):
    image = _scan()
    response = _post(server, _nifti_bytes(image))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    assert mask.shape == image.shape
    np.testing.assert_allclose(mask.affine, AFFINE, atol=1e-6)
    assert mask.get_data_dtype() == np.uint8
    pred = np.asarray(mask.dataobj)
    assert set(np.unique(pred)) <= set(range(NUM_CLASSES))
    summary = json.loads(response.headers["X-Medseg-Summary"])
    voxel_ml = 0.8 * 0.9 * 2.5 / 1000  # mm^3 -> mL
    assert summary["voxel_volume_ml"] == pytest.approx(voxel_ml)
    assert sorted(summary["volumes_ml"]) == ["0", "1", "2"]
    assert sum(summary["volumes_ml"].values()) == pytest.approx(image.size * voxel_ml)
    assert summary["voxels"]["1"] == int((pred == 1).sum())


def test_json_format_and_uncompressed_nifti_detected_by_content(server):
    image = _scan(seed=1)
    response = _post(server, _nifti_bytes(image, compress=False), filename="upload.bin",
                     format="json")
    assert response.status_code == 200, response.text
    body = response.json()
    import base64

    mask = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(body["mask_nii_gz_base64"])))
    assert mask.shape == image.shape
    assert body["summary"]["shape_xyz"] == list(image.shape)


def test_oversized_upload_is_413_and_server_stays_healthy(server):
    response = _post(server, b"\x00" * (MAX_UPLOAD + 1024))
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert httpx.get(f"{server}/health", timeout=TIMEOUT).json()["status"] == "ok"


@pytest.mark.parametrize("payload, status", [
    (b"hello, I am not a scan" * 40, 415),
    (b"\x1f\x8bthis is not deflate data", 422),
    (_nifti_bytes(_scan())[:300], 422),  # truncated gzip
    (_nifti_bytes(_scan(), compress=False)[:1000], 422),  # header fine, voxels missing
    (gzip.compress(b"x" * 400), 415),  # gzip of something that is not NIfTI
    (b"PK\x03\x04 broken zip", 422),
], ids=["text", "bad-gzip", "truncated-gzip", "truncated-nii", "gzipped-text", "bad-zip"])
def test_corrupt_or_foreign_upload_is_rejected(server, payload, status):
    response = _post(server, payload)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("shape", [(40, 36), (20, 20, 4, 2)], ids=["2d", "4d"])
def test_wrong_dimensionality_is_422(server, shape):
    response = _post(server, _nifti_bytes(np.ones(shape, np.float32)))
    assert response.status_code == 422
    assert "expected a 3D volume" in response.json()["detail"]


def test_nan_input_is_422(server):
    image = _scan()
    image[3, 4, 1] = np.nan
    response = _post(server, _nifti_bytes(image))
    assert response.status_code == 422
    assert "1 NaN/Inf voxels" in response.json()["detail"]


def test_too_many_voxels_is_422(server):
    response = _post(server, _nifti_bytes(np.zeros((64, 64, 40), np.uint8)))
    assert response.status_code == 422
    assert f"the limit is {MAX_VOXELS}" in response.json()["detail"]


def test_non_multipart_body_is_415(server):
    response = httpx.post(f"{server}/v1/segment", content=_nifti_bytes(_scan()), timeout=TIMEOUT)
    assert response.status_code == 415


def test_zipped_dicom_series_is_segmented(server, tmp_path, write_dicom_series):
    volume = Volume(np.round(_scan(shape=(32, 28, 4))).transpose(2, 1, 0),
                    spacing_mm=(2.5, 0.9, 0.8))
    folder = write_dicom_series(volume, tmp_path / "dicom")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, arcname=f"../evil/{file.name}")  # names are never used
    response = _post(server, buffer.getvalue(), filename="series.zip")
    assert response.status_code == 200, response.text
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    assert mask.shape == (32, 28, 4)
    np.testing.assert_allclose(mask.header.get_zooms(), (0.8, 0.9, 2.5), atol=1e-4)
    assert not (tmp_path.parent / "evil").exists()


def test_health_and_metrics(server):
    assert httpx.get(f"{server}/health", timeout=TIMEOUT).json()["num_classes"] == NUM_CLASSES
    before = _request_count(server, 200)
    assert _post(server, _nifti_bytes(_scan())).status_code == 200
    assert _request_count(server, 200) == before + 1
    metrics = httpx.get(f"{server}/metrics", timeout=TIMEOUT)
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("medseg_segment_latency_seconds_bucket{le=\"+Inf\"}",
                 "medseg_input_intensity_mean_sum", "medseg_input_intensity_std_count"):
        assert name in metrics.text


def test_concurrent_requests_all_succeed(server):
    payloads = [_nifti_bytes(_scan(seed=seed)) for seed in range(8)]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda p: _post(server, p).status_code, payloads))
    assert statuses == [200] * 8
    assert time.monotonic() - start < 30


def test_sniff_format_ignores_names_and_reads_magic():
    assert sniff_format(b"\x1f\x8b\x08") == "nifti_gz"
    assert sniff_format(_nifti_bytes(_scan(), compress=False)) == "nifti"
    assert sniff_format(b"PK\x03\x04") == "zip"


def test_metrics_text_is_prometheus_format():
    metrics = ServiceMetrics(buckets=(0.1, 1.0))
    metrics.observe_latency(0.5)  # falls in le=1.0 and +Inf, not le=0.1
    metrics.observe_request("/v1/segment", 200)
    metrics.observe_request("/secret/../x", 404)
    text = metrics.render()
    assert 'medseg_segment_latency_seconds_bucket{le="0.1"} 0' in text
    assert 'medseg_segment_latency_seconds_bucket{le="1.0"} 1' in text
    assert 'medseg_requests_total{path="other",status="404"} 1' in text


def test_metrics_report_the_process_resources_under_prometheus_names():
    from medseg_helpers.deploy.service_metrics import process_metrics

    samples = dict(line.split(" ") for line in ServiceMetrics().render().splitlines()
                   if line.startswith("process_"))
    assert set(samples) == {"process_resident_memory_bytes", "process_resident_memory_max_bytes",
                            "process_cpu_seconds_total", "process_threads"}
    now = process_metrics()
    status = Path("/proc/self/status")
    if status.exists():  # Linux: VmRSS and VmHWM in kB, this process image's own
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        assert abs(now["process_resident_memory_bytes"]
                   - int(fields["VmRSS"].split()[0]) * 1024) < 64 * 2**20
        assert now["process_threads"] == int(fields["Threads"])
    assert 0 < now["process_resident_memory_bytes"] <= now["process_resident_memory_max_bytes"]
    assert now["process_cpu_seconds_total"] > 0 and now["process_threads"] >= 1


@pytest.mark.parametrize("q, expected", [
    (0.5, 0.1 + (0.25 - 0.1) * (5 - 4) / 4),  # rank 5 of 10 in (0.1, 0.25]: 1 of its 4
    (0.95, 0.5 + (1.0 - 0.5) * (9.5 - 9) / 1),  # rank 9.5 in (0.5, 1.0]
    (0.2, 0.05 + (0.1 - 0.05) * (2 - 1) / 3),  # rank 2 in (0.05, 0.1], which holds 3
    (0.05, 0.05 * 0.5 / 1),  # rank 0.5 in the first bucket, which starts at 0
])
def test_histogram_quantile_interpolates_inside_the_bucket_as_promql(q, expected):
    from medseg_helpers.deploy.service_metrics import histogram_quantile

    # 10 answers: 1 <= 0.05 s, 3 more <= 0.1, 4 more <= 0.25, 1 more <= 0.5, 1 more <= 1.0
    bounds, cumulative = (0.05, 0.1, 0.25, 0.5, 1.0), (1, 4, 8, 9, 10, 10)
    assert histogram_quantile(q, bounds, cumulative) == pytest.approx(expected)


def test_histogram_quantile_edge_cases():
    from medseg_helpers.deploy.service_metrics import histogram_quantile

    assert math.isnan(histogram_quantile(0.5, (0.1, 1.0), (0, 0, 0)))
    assert histogram_quantile(0.99, (0.1, 1.0), (1, 1, 10)) == 1.0  # in +Inf: the last bound
    with pytest.raises(ValueError, match="q must be in"):
        histogram_quantile(1.5, (0.1,), (1, 1))
    with pytest.raises(ValueError, match="one count per bound"):
        histogram_quantile(0.5, (0.1, 1.0), (1, 1))


@pytest.mark.parametrize("spatial_dims, patch", [(2, (16, 16)), (3, (16, 16, 16)), (3, None)])
def test_volume_segmenter_keeps_xyz_shape(tmp_path, spatial_dims, patch):
    torch.manual_seed(0)
    model = UNet(spatial_dims, 1, 2, base_channels=4, depth=2).eval()
    path = export_onnx(model, torch.randn(1, 1, *(16,) * spatial_dims), tmp_path / "m.onnx",
                       preprocessing=ZSCORE_AXIAL)
    segmenter = VolumeSegmenter(path, num_classes=2, patch_size=patch, slice_batch=4)
    scan = Volume(_scan(shape=(30, 21, 18)).transpose(2, 1, 0))  # larger than the patch
    pred = segmenter.segment(scan)
    assert pred.array.shape == (18, 21, 30) and pred.array.dtype == np.uint8
    assert set(np.unique(pred.array)) <= {0, 1}


def test_volume_segmenter_checks_num_classes_and_patch(tmp_path):
    model = UNet(2, 1, 3, base_channels=4, depth=2).eval()
    path = export_onnx(model, torch.randn(1, 1, 16, 16), tmp_path / "m.onnx",
                       preprocessing=ZSCORE_AXIAL)
    with pytest.raises(ValueError, match="3 output channels; num_classes=2"):
        VolumeSegmenter(path, num_classes=2)
    with pytest.raises(ValueError, match="must have 2 entries"):
        VolumeSegmenter(path, num_classes=3, patch_size=(16, 16, 16))


def test_a_model_without_preprocessing_metadata_is_refused_at_start_up(tmp_path):
    model = UNet(2, 1, 3, base_channels=4, depth=2).eval()
    path = export_onnx(model, torch.randn(1, 1, 16, 16), tmp_path / "bare.onnx")
    with pytest.raises(MissingPreprocessingError) as caught:
        create_app(path, num_classes=3)
    message = str(caught.value)
    assert "bare.onnx carries no 'medseg.preprocessing' metadata" in message
    assert "\n" not in message  # one line


def test_a_2d_model_needs_the_slicing_axis(tmp_path):
    model = UNet(2, 1, 3, base_channels=4, depth=2).eval()
    path = export_onnx(model, torch.randn(1, 1, 16, 16), tmp_path / "m.onnx",
                       preprocessing=Preprocessing("zscore", {}, None, axis=None))
    with pytest.raises(ValueError, match="must name the axis"):
        VolumeSegmenter(path, num_classes=3)


def test_the_segmenter_applies_the_post_processing_rule_the_file_carries(tmp_path):
    model = UNet(2, 1, 2, base_channels=4, depth=2).eval()
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 50.0]))  # class 1 everywhere
    example = torch.randn(1, 1, 16, 16)
    plain = export_onnx(model, example, tmp_path / "plain.onnx", preprocessing=ZSCORE_AXIAL)
    rule = SmallComponentFilter({1: 1e12})  # every class-1 component is "too small"
    ruled = export_onnx(model, example, tmp_path / "ruled.onnx", preprocessing=ZSCORE_AXIAL,
                        postprocessing=rule)
    scan = Volume(_scan(shape=(20, 18, 6)).transpose(2, 1, 0))
    without = VolumeSegmenter(plain, num_classes=2)
    assert without.postprocessing == SmallComponentFilter()  # no rule stored: none applied
    assert (without.segment(scan).array == 1).all()
    with_rule = VolumeSegmenter(ruled, num_classes=2)
    assert with_rule.postprocessing == rule
    assert (with_rule.segment(scan).array == 0).all()
