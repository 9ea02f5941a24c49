"""Fast inference paths: the int8-friendly upsampling rewrite, u8s8 quantisation that keeps
the whole U-Net in int8, the OpenVINO runtime, per-operator profiles and CPU features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _image_helpers import smooth_images
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

from medseg_helpers.deploy import runtime  # noqa: E402
from medseg_helpers.deploy.export import export_onnx  # noqa: E402
from medseg_helpers.deploy.profiling import (  # noqa: E402
    onnxruntime_profile,
    optimized_operators,
    torch_profile,
)
from medseg_helpers.deploy.quantize import (  # noqa: E402
    PixelShuffleUp,
    pixel_shuffle_upsampling,
    quantize_onnx_int8,
)
from medseg_helpers.deploy.runtime import (  # noqa: E402
    OnnxSegmenter,
    OpenVinoSegmenter,
    load_onnx,
)
from medseg_helpers.device import CPU_FEATURES, cpu_description  # noqa: E402
from medseg_helpers.networks.unet import UNet  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
needs_openvino = pytest.mark.skipif(not runtime.openvino_available(),
                                    reason="OpenVINO is an optional extra")


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(2, 1, 3, base_channels=8, depth=2)
    model.train()
    with torch.no_grad():  # batch-norm statistics of smooth images, not of the init
        model(torch.from_numpy(np.stack(smooth_images(16, seed=seed + 10))))
    return model.eval()


# ----------------------------------------------------------- the upsampling rewrite
def test_pixel_shuffle_up_reproduces_a_hand_worked_transposed_convolution():
    transposed = nn.ConvTranspose2d(1, 1, kernel_size=2, stride=2)
    transposed.weight.data = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    transposed.bias.data = torch.tensor([0.5])
    x = torch.tensor([[[[1.0, 10.0]]]])  # (1, 1, 1, 2)
    # each input pixel paints its 2x2 block: value * kernel + bias
    expected = torch.tensor([[[[1.5, 2.5, 10.5, 20.5], [3.5, 4.5, 30.5, 40.5]]]])
    assert torch.equal(transposed(x), expected)
    assert torch.equal(PixelShuffleUp(transposed)(x), expected)


def test_pixel_shuffle_up_matches_transposed_convolutions_with_many_channels():
    torch.manual_seed(0)
    transposed = nn.ConvTranspose2d(6, 5, kernel_size=2, stride=2)
    x = torch.randn(3, 6, 7, 9)
    torch.testing.assert_close(PixelShuffleUp(transposed)(x), transposed(x))


@pytest.mark.parametrize("module", [nn.ConvTranspose2d(2, 2, 3, stride=2),
                                    nn.ConvTranspose2d(2, 2, 2, stride=1),
                                    nn.ConvTranspose3d(2, 2, 2, stride=2)])
def test_pixel_shuffle_up_refuses_what_it_cannot_reproduce(module):
    with pytest.raises(ValueError, match="not a 2x2, stride-2"):
        PixelShuffleUp(module)


def test_rewritten_unet_computes_the_same_logits_and_leaves_the_original_alone():
    model = _unet()
    rewritten, count = pixel_shuffle_upsampling(model)
    assert count == 2  # one per decoder level
    assert all(isinstance(up.up, nn.ConvTranspose2d) for up in model.ups)
    assert all(isinstance(up.up, PixelShuffleUp) for up in rewritten.ups)
    x = torch.from_numpy(np.stack(smooth_images(4)))
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_3d_unet_keeps_its_transposed_convolutions():
    _, count = pixel_shuffle_upsampling(UNet(3, 1, 2, base_channels=4, depth=2).eval())
    assert count == 0


# ----------------------------------------------------------- int8 that runs in int8
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """fp32 ONNX of a U-Net, its int8 as before (s8, transposed convs) and as shipped."""
    folder = tmp_path_factory.mktemp("fast")
    model = _unet()
    example = torch.from_numpy(np.stack(smooth_images(2)))
    calibration = smooth_images(16, seed=1)
    fp32 = export_onnx(model, example, folder / "fp32.onnx")
    rewritten, _ = pixel_shuffle_upsampling(model)
    fp32_shuffle = export_onnx(rewritten, example, folder / "fp32_shuffle.onnx")
    return {"model": model, "fp32": fp32,
            "int8 s8": quantize_onnx_int8(fp32, folder / "s8.onnx", calibration,
                                          activation_type="int8"),
            "int8": quantize_onnx_int8(fp32_shuffle, folder / "u8.onnx", calibration)}


def _zero_point_types(path) -> set[int]:
    graph = onnx.load(str(path)).graph
    zero_points = {node.input[2] for node in graph.node if node.op_type == "QuantizeLinear"}
    return {init.data_type for init in graph.initializer if init.name in zero_points}


def test_activations_are_unsigned_by_default_and_signed_on_request(files):
    assert _zero_point_types(files["int8"]) == {onnx.TensorProto.UINT8}
    assert _zero_point_types(files["int8 s8"]) == {onnx.TensorProto.INT8}


def test_shipped_int8_leaves_no_convolution_in_float(files):
    shipped = optimized_operators(files["int8"])
    assert shipped["QLinearConv"] == 13  # 10 convs + head + 2 rewritten upsamplings
    assert shipped["Conv"] == 0 and shipped["ConvTranspose"] == 0
    assert shipped["QuantizeLinear"] == 1 and shipped["DequantizeLinear"] == 1  # in, out
    before = optimized_operators(files["int8 s8"])
    assert before["ConvTranspose"] == 2  # float, wrapped in dequantise/quantise pairs
    assert before["DequantizeLinear"] > 10


def test_shipped_int8_agrees_with_float(files):
    test = np.stack(smooth_images(8, seed=2))
    fp32 = OnnxSegmenter(files["fp32"]).predict_logits(test).argmax(1)
    int8 = OnnxSegmenter(files["int8"]).predict_logits(test).argmax(1)
    assert (fp32 == int8).mean() >= 0.97


def test_unknown_activation_type_is_rejected(files, tmp_path):
    with pytest.raises(ValueError, match="activation_type must be 'uint8' or 'int8'"):
        quantize_onnx_int8(files["fp32"], tmp_path / "x.onnx", smooth_images(1),
                           activation_type="fp8")


# ----------------------------------------------------------- profiles
def test_onnxruntime_profile_covers_every_operator_of_the_optimised_graph(files):
    table = onnxruntime_profile(files["fp32"], np.stack(smooth_images(4)), runs=3, num_threads=1)
    counts = optimized_operators(files["fp32"])
    assert dict(table["nodes"]) == {op: n for op, n in counts.items()}
    assert table["share"].sum() == pytest.approx(1.0)
    assert table.index[0] == "Conv"  # convolutions take the time
    assert list(table["ms_per_run"]) == sorted(table["ms_per_run"], reverse=True)


def test_torch_profile_counts_calls_per_run(files):
    table = torch_profile(files["model"], torch.from_numpy(np.stack(smooth_images(2))), runs=3)
    convs = sum(isinstance(m, nn.Conv2d) for m in files["model"].modules())
    assert table.loc["aten::convolution", "nodes"] == convs + 2  # + 2 transposed convs
    assert table["share"].sum() == pytest.approx(1.0)


# ----------------------------------------------------------- OpenVINO
@needs_openvino
def test_openvino_fp32_matches_onnxruntime(files):
    test = np.stack(smooth_images(3, seed=3))
    reference = OnnxSegmenter(files["fp32"]).predict_logits(test)
    openvino = OpenVinoSegmenter(files["fp32"], num_threads=1)
    np.testing.assert_allclose(openvino.predict_logits(test), reference, atol=1e-4)
    assert openvino.metadata == OnnxSegmenter(files["fp32"]).metadata
    assert openvino.input_shape[1] == 1 and openvino.output_shape[1] == 3


@needs_openvino
def test_openvino_pads_sizes_that_are_not_multiples(files):
    image = np.stack(smooth_images(2, size=30, seed=4))  # size multiple 4
    logits = OpenVinoSegmenter(files["fp32"]).predict_logits(image)
    assert logits.shape == (2, 3, 30, 30)
    np.testing.assert_allclose(logits, OnnxSegmenter(files["fp32"]).predict_logits(image),
                               atol=1e-4)


@needs_openvino
@pytest.mark.parametrize("key, precision", [("fp32", "bf16"), ("int8", "fp32")])
def test_openvino_bf16_and_int8_keep_the_classes(files, key, precision):
    test = np.stack(smooth_images(8, seed=2))
    reference = OnnxSegmenter(files["fp32"]).predict_logits(test).argmax(1)
    fast = load_onnx(files[key], runtime="openvino", precision=precision)
    assert (fast.runtime, fast.precision) == ("openvino", precision)
    assert (fast.predict_logits(test).argmax(1) == reference).mean() >= 0.97


@needs_openvino
def test_one_openvino_model_serves_several_threads(files):
    from concurrent.futures import ThreadPoolExecutor

    segmenter = OpenVinoSegmenter(files["fp32"])
    inputs = [np.stack(smooth_images(2, seed=s)) for s in range(6)]
    expected = [segmenter.predict_logits(x) for x in inputs]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(segmenter.predict_logits, inputs))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_openvino_missing_says_how_to_install(files, monkeypatch):
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'medseg-helpers\[openvino\]'"):
        OpenVinoSegmenter(files["fp32"])


@pytest.mark.parametrize("kwargs, message", [
    ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'"),
    ({"runtime": "onnxruntime", "precision": "bf16"}, "onnxruntime offers precisions"),
    ({"runtime": "openvino", "precision": "fp16"}, "openvino offers precisions")])
def test_load_onnx_rejects_unknown_runtimes_and_precisions(files, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_onnx(files["fp32"], **kwargs)


# ----------------------------------------------------------- CPU features
def test_cpu_description_names_the_model_and_known_features_in_order():
    cpu = cpu_description()
    assert isinstance(cpu["model"], str) and cpu["model"]
    assert cpu["features"] == [f for f in CPU_FEATURES if f in cpu["features"]]


def test_time_by_category_sums_a_hand_made_profile():
    import pandas as pd

    from medseg_helpers.deploy.profiling import OPERATOR_CATEGORIES, time_by_category

    table = pd.DataFrame({"ms_per_run": [3.0, 2.0, 1.0, 0.5, 0.25]},
                         index=["QLinearConv", "Conv", "DequantizeLinear", "QuantizeLinear",
                                "Softmax"])
    sums = time_by_category(table)
    assert list(sums.index) == [*OPERATOR_CATEGORIES, "other"]
    assert sums["int8 convolution"] == 3.0 and sums["float convolution"] == 2.0
    assert sums["quantise / dequantise"] == 1.5 and sums["other"] == 0.25
    assert sums["layout change"] == 0.0
