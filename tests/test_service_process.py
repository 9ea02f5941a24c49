"""`BackgroundService`: ``medseg serve`` in a child process, started and stopped cleanly."""

from __future__ import annotations

import socket
import time

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from medseg_helpers.deploy.export import export_onnx  # noqa: E402
from medseg_helpers.deploy.preprocessing import Preprocessing  # noqa: E402
from medseg_helpers.deploy.service_process import (  # noqa: E402
    BackgroundService,
    ServiceStartError,
    free_port,
)
from medseg_helpers.networks.unet import UNet  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    model = UNet(2, 1, 3, base_channels=4, depth=2).eval()
    return export_onnx(model, torch.randn(1, 1, 16, 16),
                       tmp_path_factory.mktemp("svc") / "model.onnx",
                       preprocessing=Preprocessing("zscore", {}, None, axis=0))


def test_service_answers_health_and_stops_on_exit(model_path, tmp_path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    with BackgroundService(model_path, num_classes=3, log_dir=tmp_path, env=env) as service:
        reply = httpx.get(f"{service.url}/health", timeout=10)
        assert reply.status_code == 200 and reply.json()["num_classes"] == 3
        process = service.process
    assert process.poll() is not None and not service.running
    service.stop()  # idempotent


def test_a_busy_port_fails_fast_with_the_server_log(model_path, tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        service = BackgroundService(model_path, num_classes=3, port=port, log_dir=tmp_path,
                                    start_timeout_s=120)
        start = time.monotonic()
        with pytest.raises(ServiceStartError, match="exited with code"):
            service.start()
        assert time.monotonic() - start < 110 and not service.running


def test_a_model_without_preprocessing_stops_the_service_with_one_line(tmp_path) -> None:
    bare = export_onnx(UNet(2, 1, 3, base_channels=4, depth=2).eval(),
                       torch.randn(1, 1, 16, 16), tmp_path / "bare.onnx")
    service = BackgroundService(bare, num_classes=3, log_dir=tmp_path,
                                env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    with pytest.raises(ServiceStartError, match="exited with code 2") as caught:
        service.start()
    assert "Traceback" not in str(caught.value)
    assert str(caught.value).splitlines()[-1] == (
        "medseg: error: bare.onnx carries no 'medseg.preprocessing' metadata, so its input "
        "preprocessing is unknown: re-export it with "
        "preprocessing=Preprocessing.from_settings(cache.settings) (or `medseg export`)")


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_model_is_reported(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no model file"):
        BackgroundService(tmp_path / "nope.onnx", num_classes=3)
