"""The service under hostile input: every bad upload is a 4xx with a one-line reason, no
server path leaks, failures are counted, memory is bounded before decoding, and a fuzzer
finds no 5xx. In process (FastAPI's TestClient and raw ASGI calls), no sockets."""

from __future__ import annotations

import asyncio
import gzip
import io
import re
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")
nib = pytest.importorskip("nibabel")
hypothesis = pytest.importorskip("hypothesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medseg_helpers.data.volume import Volume  # noqa: E402
from medseg_helpers.deploy.export import export_onnx  # noqa: E402
from medseg_helpers.deploy.preprocessing import Preprocessing  # noqa: E402
from medseg_helpers.deploy.segmenter import VolumeSegmenter  # noqa: E402
from medseg_helpers.deploy.serve import create_app  # noqa: E402
from medseg_helpers.deploy.service_metrics import ServiceMetrics  # noqa: E402
from medseg_helpers.networks.unet import UNet  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")]

NUM_CLASSES = 3
MAX_VOXELS = 24 * 24 * 8
AXIAL = Preprocessing("zscore", {}, None, axis=0)
ONE_MM = Preprocessing("zscore", {}, (1.0, 1.0, 1.0), axis=0)  # resamples to 1 mm


def _export(folder, preprocessing=AXIAL, in_channels=1):
    torch.manual_seed(0)
    model = UNet(2, in_channels, NUM_CLASSES, base_channels=4, depth=2).eval()
    return export_onnx(model, torch.randn(1, in_channels, 16, 16),
                       folder / f"model-{in_channels}ch.onnx", preprocessing=preprocessing)


@pytest.fixture(scope="module")
def model_path(axial_onnx_model):
    return axial_onnx_model


@pytest.fixture(scope="module")
def client(model_path):
    app = create_app(model_path, num_classes=NUM_CLASSES, max_upload_bytes=256 * 1024,
                     max_voxels=MAX_VOXELS, num_threads=1)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _nifti(array: np.ndarray, affine=None, compress: bool = True) -> bytes:
    data = nib.Nifti1Image(array, np.eye(4) if affine is None else affine).to_bytes()
    return gzip.compress(data) if compress else data


def _post(client, payload: bytes, **params):
    return client.post("/v1/segment", params=params,
                       files={"file": ("scan", payload, "application/octet-stream")})


def _count(client, status: int) -> int:
    found = re.search(rf'medseg_requests_total{{path="/v1/segment",status="{status}"}} (\d+)',
                      client.get("/metrics").text)
    return int(found.group(1)) if found else 0


def _assert_clean_4xx(response, status: int, *fragments: str) -> None:
    """``status``, a one-line JSON reason holding ``fragments``, no server path in it."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert "/tmp" not in detail and "medseg-dicom-" not in detail
    for fragment in fragments:
        assert fragment in detail


def test_a_volume_with_an_empty_axis_is_422_and_does_not_poison_the_drift_metric(client):
    _assert_clean_4xx(_post(client, _nifti(np.zeros((16, 0, 4), np.float32))), 422,
                      "(16, 0, 4) has an empty axis")
    assert _post(client, _nifti(np.ones((16, 16, 4), np.float32))).status_code == 200
    text = client.get("/metrics").text
    total = float(re.search(r"medseg_input_intensity_mean_sum (\S+)", text).group(1))
    assert np.isfinite(total) and total > 0


def test_metrics_ignore_a_non_finite_intensity():
    metrics = ServiceMetrics()
    metrics.observe_intensity(float("nan"), 1.0)
    metrics.observe_intensity(2.0, 3.0)
    assert metrics.intensity == {"mean": [2.0, 1, 2.0], "std": [3.0, 1, 3.0]}


@pytest.mark.parametrize("affine_value", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_non_finite_affine_is_422(client, affine_value):
    header = nib.Nifti1Header()
    header.set_data_shape((8, 8, 4))
    header.set_data_dtype(np.float32)
    raw = bytearray(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)).to_bytes())
    # srow_x[0] lives at byte 280 (NIfTI-1 header: srow_x float32[4] at offset 280)
    raw[280:284] = np.float32(affine_value).tobytes()
    _assert_clean_4xx(_post(client, bytes(raw)), 422, "affine")


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def test_a_zip_member_with_a_bad_crc_is_422(client):
    data = bytearray(_zip({"a.dcm": b"DICM" * 500}))
    central = data.rindex(b"PK\x01\x02")  # central directory entry: CRC-32 at offset 16
    data[central + 16:central + 20] = b"\x00\x00\x00\x00"
    _assert_clean_4xx(_post(client, bytes(data)), 422, "corrupt zip")


def test_a_zip_member_longer_than_its_declared_size_is_422(client):
    data = bytearray(_zip({"a.dcm": b"DICM" * 500}))
    # Shrink the declared size in the central directory (offset 24 of its entry).
    central = data.rindex(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    _assert_clean_4xx(_post(client, bytes(data)), 422, "zip")


def test_a_zip_of_two_dicom_series_lists_them_and_series_uid_picks_one(
        client, tmp_path, write_dicom_series):
    uids = ("1.2.826.0.1.3680043.2.1125.7.1", "1.2.826.0.1.3680043.2.1125.7.2")
    for k, uid in enumerate(uids):
        volume = Volume(np.full((4 + k, 12, 10), 100 * (k + 1), np.int16), (2.0, 1.0, 1.0))
        write_dicom_series(volume, tmp_path / "series", series_uid=uid)
    payload = _zip({f.name: f.read_bytes() for f in sorted((tmp_path / "series").iterdir())})
    _assert_clean_4xx(_post(client, payload), 422, uids[0], uids[1])
    picked = _post(client, payload, series_uid=uids[1], format="json")
    assert picked.status_code == 200, picked.text
    assert picked.json()["summary"]["shape_xyz"] == [10, 12, 5]
    _assert_clean_4xx(_post(client, payload, series_uid="9.9.9"), 422, "9.9.9")
    assert _post(client, payload, series_uid="x; rm -rf /").status_code == 422


def test_the_grid_after_resampling_is_checked_before_decoding(tmp_path):
    # 8 x 8 x 4 voxels of 10 mm: a 1 KB upload that becomes 80 x 80 x 40 = 256,000 voxels
    # at the model's 1 mm; the budget is checked from the header, before resampling.
    app = create_app(_export(tmp_path, ONE_MM), num_classes=NUM_CLASSES, max_voxels=50_000,
                     num_threads=1)
    with TestClient(app) as client:
        response = _post(client, _nifti(np.ones((8, 8, 4), np.float32), np.diag([10.0] * 3
                                                                               + [1.0])))
        _assert_clean_4xx(response, 422, "becomes (80, 80, 40) = 256000 voxels",
                          "the limit is 50000")
        small = _post(client, _nifti(np.ones((8, 8, 4), np.float32), np.diag([2.0] * 3
                                                                            + [1.0])))
        assert small.status_code == 200, small.text


def test_a_model_with_two_input_channels_is_refused_at_start_up(tmp_path):
    with pytest.raises(ValueError, match="takes 2 input channels; the service segments "
                                         "single-channel volumes"):
        create_app(_export(tmp_path, in_channels=2), num_classes=NUM_CLASSES)


@pytest.mark.parametrize("option, value, message", [
    ("max_concurrency", 0, "max_concurrency must be at least 1; got 0"),
    ("max_upload_bytes", -1, "max_upload_bytes must be at least 1; got -1"),
    ("max_voxels", 0, "max_voxels must be at least 1; got 0"),
    ("queue_timeout_s", 0.0, "queue_timeout_s must be positive; got 0.0"),
])
def test_limits_below_one_are_refused_at_start_up(model_path, option, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_app(model_path, num_classes=NUM_CLASSES, **{option: value})


def test_an_unexpected_failure_is_a_counted_500_without_details(client, monkeypatch):
    before_500, before_latency = _count(client, 500), client.app.state.metrics.latency_count

    def broken(scan):
        raise RuntimeError("/secret/path exploded")

    monkeypatch.setattr(client.app.state.segmenter, "segment", broken)
    response = _post(client, _nifti(np.ones((16, 16, 4), np.float32)))
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error (logged)"}
    assert _count(client, 500) == before_500 + 1
    assert client.app.state.metrics.latency_count == before_latency + 1


def test_a_body_shorter_than_its_content_length_gets_408(model_path):
    app = create_app(model_path, num_classes=NUM_CLASSES, body_timeout_s=0.2, num_threads=1)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/segment", "raw_path": b"",
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1234),
             "headers": [(b"content-type", b"multipart/form-data; boundary=x"),
                         (b"content-length", b"100000")]}
    sent, chunks = [], [{"type": "http.request", "body": b"--x\r\n", "more_body": True}]

    async def receive():
        if chunks:
            return chunks.pop()
        await asyncio.sleep(3600)  # the client never sends the rest

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 408
    assert b"no request data for 0.2 s" in body


def test_openapi_documents_the_upload_and_every_error(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1/segment"]["post"]
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["format"] == "binary"
    assert {"200", "408", "413", "415", "422", "503"} <= set(operation["responses"])
    assert {p["name"] for p in operation["parameters"]} == {"format", "series_uid"}


class _Recorder:
    """Wraps the ONNX runtime callable and records the shape of every call."""

    def __init__(self, runtime):
        self.runtime, self.shapes = runtime, []

    def __call__(self, batch):
        self.shapes.append(tuple(batch.shape))
        return self.runtime(batch)


@pytest.mark.parametrize("slice_xy, calls_expected", [((16, 16), "batched"),
                                                      ((70, 50), "windowed")])
def test_no_onnx_call_sees_more_than_voxels_per_call(model_path, slice_xy, calls_expected):
    segmenter = VolumeSegmenter(model_path, num_classes=NUM_CLASSES, voxels_per_call=1024)
    recorder = _Recorder(segmenter.runner)
    segmenter.runner = recorder
    scan = Volume(np.random.default_rng(0).normal(size=(9, *slice_xy[::-1]))
                  .astype(np.float32))
    pred = segmenter.segment(scan)
    assert pred.array.shape == scan.array.shape
    assert max(int(np.prod(s[:1] + s[2:])) for s in recorder.shapes) <= 1024
    if calls_expected == "batched":  # 1024 // 256 = 4 slices of 16 x 16 per call
        assert [s[0] for s in recorder.shapes] == [4, 4, 1]
    else:  # a 70 x 50 slice is larger than 1024 px: windows of 32 x 32, one per call
        assert {s[2:] for s in recorder.shapes} == {(32, 32)}


# ------------------------------------------------------------------- fuzzing
_DTYPES = [2, 4, 8, 16, 64, 256, 512, 768, 32, 128, 1792, 2304, 0, 1, 9999]  # incl. bad


def _mutated_nifti(shape, dtype_code, pixdim, vox_offset, srow, sform_code, cut, gz) -> bytes:
    """A NIfTI-1 file whose header fields are set to arbitrary (possibly lying) values."""
    raw = bytearray(nib.Nifti1Image(np.ones((4, 4, 2), np.float32), np.eye(4)).to_bytes())
    dims = [len(shape), *shape] + [1] * (7 - len(shape))
    raw[40:56] = np.array(dims, "<i2").tobytes()  # dim[8]
    raw[70:72] = np.array(dtype_code, "<i2").tobytes()  # datatype
    raw[76:108] = np.array([1.0, *pixdim, 1.0, 1.0, 1.0, 1.0], "<f4").tobytes()[:32]
    raw[108:112] = np.array(vox_offset, "<f4").tobytes()
    raw[254:256] = np.array(sform_code, "<i2").tobytes()
    raw[280:328] = np.array(srow, "<f4").tobytes()
    data = bytes(raw[:cut]) if cut is not None else bytes(raw)
    return gzip.compress(data) if gz else data


_finite_or_not = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, np.nan, np.inf, -np.inf]))


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(shape=st.lists(st.integers(-3, 32_767), min_size=0, max_size=7),  # int16 dim[]
       dtype_code=st.sampled_from(_DTYPES),
       pixdim=st.lists(_finite_or_not, min_size=3, max_size=3),
       vox_offset=st.sampled_from([0.0, 352.0, 348.0, 1e9, -5.0, np.nan]),
       srow=st.lists(_finite_or_not, min_size=12, max_size=12),
       sform_code=st.integers(0, 5), cut=st.one_of(st.none(), st.integers(0, 480)),
       gz=st.booleans())
def test_fuzzed_nifti_headers_never_get_a_5xx(client, shape, dtype_code, pixdim, vox_offset,
                                              srow, sform_code, cut, gz):
    payload = _mutated_nifti(shape, dtype_code, pixdim, vox_offset, srow, sform_code, cut, gz)
    response = _post(client, payload)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], (str, list))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=400).map(lambda b: b"PK\x03\x04" + b),
    st.binary(max_size=400).map(lambda b: b"\x1f\x8b" + b),
    st.binary(max_size=400).map(gzip.compress),
    st.lists(st.binary(max_size=300), min_size=1, max_size=3).map(
        lambda parts: _zip({f"{i}.dcm": p for i, p in enumerate(parts)}))))
def test_fuzzed_bytes_and_archives_never_get_a_5xx(client, payload):
    response = _post(client, payload)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
