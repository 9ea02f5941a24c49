"""Receptive field arithmetic, checked by hand and against gradients of real models."""

from __future__ import annotations

import pytest
import torch

from medseg_helpers.networks import EncoderDecoder, SegNet, UNet
from medseg_helpers.networks.receptive_field import (
    Layer,
    encoder_decoder_layers,
    input_interval,
    measure_receptive_field,
    receptive_field,
    receptive_field_range,
    receptive_field_steps,
    unet_layers,
)

CONV3 = Layer("conv")  # 3x3, stride 1, padding 1
POOL2 = Layer("pool", "conv", kernel_size=2, stride=2, padding=0)


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ([], 1),
        ([CONV3], 3),
        ([CONV3, CONV3, CONV3], 7),  # 1 + 2 + 2 + 2
        ([Layer("atrous", dilation=2, padding=2)], 5),  # taps at -2, 0, +2
        # conv: 3; pool: + (2 - 1) * 1 = 4, jump 2; conv: + (3 - 1) * 2 = 8
        ([CONV3, POOL2, CONV3], 8),
    ],
)
def test_hand_worked_fields(layers, expected):
    assert receptive_field(layers) == expected


def test_interval_of_conv_pool_conv_by_hand():
    # Output unit 0 -> conv reads units [-1, 1] -> pool reads pixels [-2, 3] -> conv [-3, 4].
    assert input_interval([CONV3, POOL2, CONV3], 0) == (-3, 4)


def test_outline_model_sees_seven_pixels():
    assert receptive_field_range(encoder_decoder_layers()) == (7, 7)


def test_unet_depth_one_by_hand():
    # stem 1+2+2 = 5; pool +1 = 6 (jump 2); 2 convs +4+4 = 14; transposed conv (one input
    # pixel per output) +0, jump 1; 2 convs +2+2 = 18; 1x1 head +0.
    assert receptive_field_range(unet_layers(1)) == (18, 18)


def test_field_depends_on_position_after_down_and_upsampling():
    low, high = receptive_field_range(unet_layers(3))
    assert (low, high) == (92, 100)  # measured below at every grid position
    sizes = {b - a + 1 for a, b in (input_interval(unet_layers(3), p) for p in range(8))}
    assert sizes == {92, 100}


def test_steps_grow_and_end_at_the_field():
    steps = receptive_field_steps(unet_layers(2))
    assert [s["rf_max"] for s in steps] == sorted(s["rf_max"] for s in steps)
    assert steps[-1]["rf_max"] == receptive_field(unet_layers(2))
    assert max(s["jump"] for s in steps) == 4 and steps[-1]["jump"] == 1


def test_deeper_unet_sees_more():
    fields = [receptive_field(unet_layers(d)) for d in (1, 2, 3, 4)]
    assert fields == sorted(fields) and fields[-1] > 2 * fields[-2] - 10


@pytest.mark.parametrize(("depth", "upsample"), [(1, "transpose"), (2, "transpose"),
                                                  (2, "upsample"), (3, "transpose")])
def test_unet_intervals_match_gradients_at_every_grid_position(depth, upsample):
    model = UNet(2, 1, 2, base_channels=4, depth=depth, upsample=upsample)
    layers, size = unet_layers(depth, upsample=upsample), 160
    for p in range(size // 2, size // 2 + 2**depth):
        measured = measure_receptive_field(model, (size, size), position=(p, size // 2))
        assert measured[0] == input_interval(layers, p)


def test_measured_outline_model_and_3d_unet():
    assert measure_receptive_field(EncoderDecoder(2, 1, 3), (24, 24)) == ((9, 15), (9, 15))
    measured = measure_receptive_field(UNet(3, 1, 2, base_channels=4, depth=1), (32, 32, 32))
    assert {b - a + 1 for a, b in measured} == {18}


def test_measure_leaves_the_model_unchanged():
    model = UNet(2, 1, 2, base_channels=4, depth=2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_receptive_field(model, (64, 64))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_norm_statistics_are_ignored():
    # Instance norm's per-image mean reaches every pixel; the measured field is the
    # convolutional one, as documented.
    plain = measure_receptive_field(UNet(2, 1, 2, 4, depth=1, norm="none"), (48, 48))
    assert measure_receptive_field(UNet(2, 1, 2, 4, depth=1, norm="instance"), (48, 48)) == plain


def test_field_larger_than_input_raises():
    with pytest.raises(ValueError, match="reaches the border"):
        measure_receptive_field(UNet(2, 1, 2, base_channels=4, depth=2), (32, 32))


def test_max_unpooling_is_rejected():
    with pytest.raises(ValueError, match="max-unpooling"):
        measure_receptive_field(SegNet(2, 1, 2, base_channels=4, depth=2), (32, 32))


def test_non_dense_output_is_rejected():
    with pytest.raises(ValueError, match="differs from the input"):
        measure_receptive_field(torch.nn.Conv2d(1, 1, 3), (16, 16))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kind": "pool"}, "kind must be"), ({"kernel_size": 0}, ">= 1"),
     ({"padding": -1}, "padding >= 0")],
)
def test_invalid_layers_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Layer("bad", **kwargs)


def test_invalid_unet_layers_raise():
    with pytest.raises(ValueError, match="depth must be"):
        unet_layers(0)
    with pytest.raises(ValueError, match="upsample must be"):
        unet_layers(2, upsample="nearest")
