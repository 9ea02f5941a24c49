"""Export routes (ONNX, torch.export, TorchScript), ONNX Runtime inference, int8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _image_helpers import smooth_images

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from medseg_helpers.deploy.export import (  # noqa: E402
    check_parity,
    export_onnx,
    export_program,
    export_torchscript,
)
from medseg_helpers.deploy.preprocessing import (  # noqa: E402
    MissingPreprocessingError,
    Preprocessing,
    read_preprocessing,
)
from medseg_helpers.deploy.quantize import quantize_onnx_int8  # noqa: E402
from medseg_helpers.deploy.runtime import OnnxSegmenter, load_exported  # noqa: E402
from medseg_helpers.inferers import SlidingWindowInferer, predict_logits  # noqa: E402
from medseg_helpers.networks.unet import UNet  # noqa: E402

# torch 2.13's own ONNX exporter uses a deprecated pytree API internally (not our code).
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

TORCHSCRIPT_WARNINGS = [
    "ignore::DeprecationWarning",
    "ignore::torch.jit.TracerWarning",
]
#: A slice cache's settings as `build_slice_cache` records them (CT window, resampled).
CACHE_SETTINGS = {"normalisation": "ct_window", "normalisation_kwargs": {"preset": "soft_tissue"},
                  "spacing_mm": [2.5, 0.75, 0.75], "axis": 0, "slice_shape": None}
EXPORTERS = {".onnx": export_onnx, ".pt2": export_program, ".pt": export_torchscript}


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path, monkeypatch):
    """ONNX Runtime writes a device-id file under $XDG_CACHE_HOME; keep it out of $HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _unet(spatial_dims: int, out_channels: int = 3, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(spatial_dims, 1, out_channels, base_channels=4, depth=2).eval()


@pytest.fixture(scope="module")
def unet2d_onnx(tmp_path_factory):
    model = _unet(2)
    path = export_onnx(model, torch.randn(1, 1, 32, 32), tmp_path_factory.mktemp("x") / "m.onnx",
                       preprocessing=Preprocessing.from_settings(CACHE_SETTINGS))
    return model, path


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_onnx_matches_eager_for_dynamic_batch_and_sizes(spatial_dims, tmp_path):
    model = _unet(spatial_dims)
    size = (16,) * spatial_dims
    path = export_onnx(model, torch.randn(1, 1, *size), tmp_path / "m.onnx")
    # Other batch sizes, other multiples of 4, and sizes the segmenter must pad (odd ones).
    inputs = [torch.randn(3, 1, *size), torch.randn(1, 1, *(8,) * (spatial_dims - 1), 24),
              torch.randn(2, 1, *(13,) * spatial_dims)]
    report = check_parity(model, path, inputs)
    assert report["passed"] and report["max_abs_diff"] <= 1e-4, report
    assert report["argmax_agreement"] == 1.0
    assert report["num_inputs"] == 3


def test_onnx_is_one_self_contained_file(unet2d_onnx):
    _, path = unet2d_onnx
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]  # no m.onnx.data


def test_onnx_metadata_records_size_multiple(unet2d_onnx):
    _, path = unet2d_onnx
    assert OnnxSegmenter(path).size_multiple == 4  # 2**depth, depth=2


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torch_export_program_matches_eager(spatial_dims, tmp_path):
    model = _unet(spatial_dims)
    size = (16,) * spatial_dims
    path = export_program(model, torch.randn(1, 1, *size), tmp_path / "m.pt2")
    report = check_parity(model, path, [torch.randn(1, 1, *size), torch.randn(3, 1, *(8,) *
                                                                             spatial_dims)])
    assert report["passed"], report


@pytest.mark.filterwarnings(*TORCHSCRIPT_WARNINGS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript_matches_eager(spatial_dims, tmp_path):
    model = _unet(spatial_dims)
    size = (16,) * spatial_dims
    path = export_torchscript(model, torch.randn(2, 1, *size), tmp_path / "m.pt")
    report = check_parity(model, path, [torch.randn(1, 1, *size), torch.randn(2, 1, *size)])
    assert report["passed"], report


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_warns_deprecation(tmp_path):
    with pytest.warns(DeprecationWarning, match="deprecated"):
        export_torchscript(_unet(2), torch.randn(1, 1, 16, 16), tmp_path / "m.pt")


def test_example_size_not_a_multiple_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"multiple of the model's size_multiple=4"):
        export_onnx(_unet(2), torch.randn(1, 1, 30, 32), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_example_must_be_a_batch(tmp_path):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        export_onnx(_unet(2), torch.randn(1, 32, 32), tmp_path / "m.onnx")


def test_onnx_runs_in_the_sliding_window_inferer_like_the_eager_model(unet2d_onnx):
    model, path = unet2d_onnx
    segmenter = OnnxSegmenter(path, num_threads=1)
    image = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 70, 45)).astype(
        np.float32))
    windows = SlidingWindowInferer((32, 32), overlap=0.5)
    logits = windows(segmenter, image)
    assert logits.shape == (1, 3, 70, 45) and logits.dtype == torch.float32
    # The same windows and blending run on the eager model give the same logits.
    with torch.no_grad():
        eager = windows(model, image)
    torch.testing.assert_close(logits, eager, atol=1e-4, rtol=0)
    assert torch.equal(logits.argmax(1), eager.argmax(1))


@pytest.mark.parametrize("suffix", [".onnx", ".pt2", ".pt"])
@pytest.mark.filterwarnings(*TORCHSCRIPT_WARNINGS)
def test_exported_files_carry_the_training_preprocessing(suffix, tmp_path):
    expected = Preprocessing.from_settings(CACHE_SETTINGS)
    path = EXPORTERS[suffix](_unet(2), torch.randn(2, 1, 16, 16), tmp_path / f"m{suffix}",
                             preprocessing=expected)
    read = read_preprocessing(path)
    assert read == expected
    assert (read.normalisation, read.normalisation_kwargs, list(read.spacing_mm), read.axis) == (
        "ct_window", {"preset": "soft_tissue"}, CACHE_SETTINGS["spacing_mm"], 0)
    assert Preprocessing.from_json(read.to_json()) == read
    assert load_exported(path)(torch.zeros(1, 1, 16, 16)).shape == (1, 3, 16, 16)  # still loads


@pytest.mark.parametrize("suffix", [".onnx", ".pt2", ".pt"])
@pytest.mark.filterwarnings(*TORCHSCRIPT_WARNINGS)
def test_a_file_exported_without_preprocessing_says_so(suffix, tmp_path):
    path = EXPORTERS[suffix](_unet(2), torch.randn(2, 1, 16, 16), tmp_path / f"bare{suffix}")
    with pytest.raises(MissingPreprocessingError, match=f"bare{suffix} carries no"):
        read_preprocessing(path)


def test_preprocessing_rejects_unknown_normalisations_and_axes():
    with pytest.raises(ValueError, match="unknown normalisation 'histogram'"):
        Preprocessing("histogram", {}, None, 0)
    with pytest.raises(ValueError, match="axis must be 0, 1, 2 or None"):
        Preprocessing("zscore", {}, None, 3)
    with pytest.raises(ValueError, match="malformed medseg.preprocessing"):
        Preprocessing.from_json('{"normalisation": "zscore"}')


def test_onnx_segmenter_is_a_model_for_predict_logits(unet2d_onnx):
    model, path = unet2d_onnx
    volume = torch.randn(1, 5, 24, 20)  # (C, D, H, W): 5 slices, sizes the segmenter pads
    onnx_logits = predict_logits(OnnxSegmenter(path), volume, 2, batch_size=2)
    eager_logits = predict_logits(model, volume, 2, batch_size=2)
    torch.testing.assert_close(onnx_logits, eager_logits, atol=1e-4, rtol=0)


def test_predict_logits_rejects_unbatched_input(unet2d_onnx):
    with pytest.raises(ValueError, match=r"got \(32, 32\)"):
        OnnxSegmenter(unet2d_onnx[1]).predict_logits(np.zeros((32, 32), np.float32))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_int8_agrees_with_float_on_most_pixels(unet2d_onnx, tmp_path):
    _, path = unet2d_onnx
    int8_path = quantize_onnx_int8(path, tmp_path / "int8.onnx", smooth_images(16, seed=1))
    test = np.stack(smooth_images(8, seed=2))
    fp32 = OnnxSegmenter(path).predict_logits(test).argmax(1)
    int8_segmenter = OnnxSegmenter(int8_path)
    int8 = int8_segmenter.predict_logits(test).argmax(1)
    assert int8_segmenter.size_multiple == 4  # metadata copied
    assert read_preprocessing(int8_path) == Preprocessing.from_settings(CACHE_SETTINGS)
    assert (fp32 == int8).mean() >= 0.9
    ops = {node.op_type for node in __import__("onnx").load(str(int8_path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_int8_needs_calibration_images(unet2d_onnx, tmp_path):
    with pytest.raises(ValueError, match="at least one calibration image"):
        quantize_onnx_int8(unet2d_onnx[1], tmp_path / "q.onnx", [])
