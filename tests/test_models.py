"""The from-scratch U-Net, the teaching models and the model registry."""

import importlib.util

import pytest
import torch
from torch import nn

from medseg_helpers.losses import dice_ce_loss
from medseg_helpers.networks import (
    FCN,
    DeepLabV3,
    EncoderDecoder,
    ModelUnavailableError,
    SegNet,
    UNet,
    build_model,
    count_flops,
    count_parameters,
    list_models,
    model_summary_table,
)

HAS_EINOPS = importlib.util.find_spec("einops") is not None


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or a build that does not match this torch
        return False
    return True


UNET_SHAPES = [  # (spatial_dims, input shape, constructor arguments)
    (2, (2, 1, 64, 64), {}),
    (2, (2, 1, 37, 45), {}),
    (2, (2, 3, 37, 45), {"upsample": "upsample", "norm": "instance"}),
    (2, (1, 1, 37, 45), {"norm": "group", "pad_mode": "zeros", "in_channels": 1}),
    (2, (2, 1, 5, 7), {"depth": 2, "norm": "none"}),
    (3, (2, 1, 16, 16, 16), {"depth": 3, "base_channels": 8}),
    (3, (2, 1, 17, 19, 23), {"depth": 3, "base_channels": 8}),
    (3, (1, 2, 17, 19, 23), {"depth": 2, "base_channels": 8, "norm": "instance",
                             "upsample": "upsample"}),
]


@pytest.mark.parametrize(("dims", "shape", "kw"), UNET_SHAPES)
def test_unet_output_has_the_input_spatial_size(dims, shape, kw):
    kw = {"in_channels": shape[1], **kw}
    model = UNet(spatial_dims=dims, out_channels=3, **kw)
    assert model(torch.randn(shape)).shape == (shape[0], 3, *shape[2:])


def test_unet_parameter_count_worked_by_hand():
    # UNet(2D, in 1, out 2, base 4, depth 1, batch norm, transposed conv); convs before a
    # norm have no bias, a batch norm has 2 parameters per channel:
    #   stem  conv 3x3 1->4: 9*1*4 = 36, BN 8, conv 4->4: 9*4*4 = 144, BN 8       = 196
    #   down  conv 4->8: 9*4*8 = 288, BN 16, conv 8->8: 9*8*8 = 576, BN 16        = 896
    #   up    transposed 2x2 8->4: 4*8*4 + 4 bias = 132,
    #         conv (4+4)->4: 9*8*4 = 288, BN 8, conv 4->4: 144, BN 8              = 580
    #   head  conv 1x1 4->2: 4*2 + 2 bias                                          = 10
    #   total 196 + 896 + 580 + 10                                                 = 1682
    assert count_parameters(UNet(2, 1, 2, base_channels=4, depth=1)) == 1682
    # "upsample" replaces the transposed conv (132) by a 1x1 conv 8->4 with bias (36).
    assert count_parameters(UNet(2, 1, 2, base_channels=4, depth=1, upsample="upsample")) == 1586


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("depth", [1, 3, 4])
def test_unet_parameter_count_follows_the_closed_form(dims, depth):
    # With widths w_k = b * 2**k, k = 0..depth, kernel volume K = 3**dims and batch norm:
    # block(ci, co) = K*ci*co + K*co*co + 4*co; up_k = 2**dims * w_{k+1} * w_k + w_k;
    # total = block(in, w0) + sum_k block(w_k, w_{k+1}) + sum_k [up_k + block(2 w_k, w_k)]
    #         + head (w0 * out + out).
    b, c_in, c_out, k = 8, 2, 3, 3**dims
    w = [b * 2**i for i in range(depth + 1)]

    def block(ci, co):
        return k * ci * co + k * co * co + 4 * co

    expected = block(c_in, w[0]) + w[0] * c_out + c_out
    for i in range(depth):
        expected += block(w[i], w[i + 1])
        expected += 2**dims * w[i + 1] * w[i] + w[i] + block(2 * w[i], w[i])
    assert count_parameters(UNet(dims, c_in, c_out, base_channels=b, depth=depth)) == expected


def test_unet_gradients_reach_the_first_convolution():
    model = UNet(2, 1, 2, base_channels=4, depth=3)
    model(torch.randn(2, 1, 37, 45)).square().mean().backward()
    first = model.stem[0].weight.grad
    assert first is not None and torch.isfinite(first).all() and first.abs().sum() > 0


def test_unet_without_padding_rejects_sizes_that_are_not_multiples():
    model = UNet(2, 1, 2, depth=4, pad_input=False)
    with pytest.raises(ValueError, match=r"spatial size \(37, 45\) is not a multiple of 16"):
        model(torch.randn(1, 1, 37, 45))
    assert model.eval()(torch.randn(1, 1, 32, 48)).shape == (1, 2, 32, 48)


@pytest.mark.parametrize(("kw", "match"), [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"depth": 0}, "depth must be at least 1"),
    ({"norm": "layer"}, "norm must be"),
    ({"upsample": "pixelshuffle"}, "upsample mode must be"),
    ({"pad_mode": "circular"}, "pad_mode must be"),
    ({"norm": "group", "base_channels": 12}, "num_groups=8 does not divide 12"),
])
def test_unet_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kw)


def test_unet_rejects_a_batch_of_the_wrong_rank_and_too_small_reflect_inputs():
    with pytest.raises(ValueError, match=r"expected a 2D batch \(B, C, H, W\)"):
        UNet(2)(torch.randn(1, 64, 64))
    with pytest.raises(ValueError, match="use pad_mode='zeros'"):
        UNet(2, depth=4)(torch.randn(1, 1, 3, 3))  # 3 -> 16 needs 7 rows of reflection
    assert UNet(2, depth=4, pad_mode="zeros").eval()(torch.randn(1, 1, 3, 3)).shape[2:] == (3, 3)


def test_unet_padding_crops_back_to_the_input_window():
    # With norm "none" and zero padding every output voxel depends only on the input: the
    # crop must take the window where the input was placed, i.e. equal a manual pad + crop.
    torch.manual_seed(0)
    model = UNet(2, 1, 1, base_channels=4, depth=2, norm="none", pad_mode="zeros")
    x = torch.randn(1, 1, 5, 6)
    manual = model(nn.functional.pad(x, (1, 1, 1, 2)))[..., 1:6, 1:7]  # 5->8: 1+2, 6->8: 1+1
    torch.testing.assert_close(model(x), manual)


def test_dropout_is_active_in_training_and_off_in_eval():
    model = UNet(2, 1, 2, base_channels=4, depth=2, dropout=0.5)
    x = torch.randn(2, 1, 16, 16)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_no_skip_ablation_has_fewer_inputs_per_decoder_block():
    with_skips = UNet(2, 1, 2, base_channels=8, depth=3)
    without = UNet(2, 1, 2, base_channels=8, depth=3, skip_connections=False)
    assert count_parameters(without) < count_parameters(with_skips)
    assert without(torch.randn(2, 1, 24, 24)).shape == (2, 2, 24, 24)


def _discs(n: int, size: int, generator: torch.Generator):
    """Bright discs (radius 3-7) on a noisy background: image (n, 1, size, size), label."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.rand(n, 2, generator=generator) * (size - 12) + 6
    radius = torch.rand(n, generator=generator) * 4 + 3
    label = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2 \
        <= radius[:, None, None] ** 2
    image = label.float() + 0.5 * torch.randn(n, size, size, generator=generator)
    return image[:, None], label[:, None].long()


def test_unet_learns_to_segment_bright_discs_in_noise():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train_x, train_y = _discs(64, 32, g)
    test_x, test_y = _discs(32, 32, g)
    model = UNet(2, 1, 2, base_channels=8, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):  # about one second on a laptop CPU
        batch = torch.randint(0, 64, (16,), generator=g)
        loss = dice_ce_loss(model(train_x[batch]), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = model.eval()(test_x).argmax(dim=1, keepdim=True) == 1
    truth = test_y == 1
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.9


def test_unet_is_comparable_in_size_to_monai_basic_unet_and_unet():
    nets = pytest.importorskip("monai.networks.nets")
    ours = UNet(2, 1, 2, base_channels=16, depth=4)  # widths 16, 32, 64, 128, 256
    # BasicUNet is the same classic layout (max pooling, two convs per level, transposed
    # convs, concatenated skips); it adds conv biases and keeps 32 channels in its last
    # upsampling, so it has 0.3 % more parameters. MONAI's UNet with the same widths replaces
    # pooling by strided residual units: about 16 % fewer parameters, and no full-resolution
    # block, so about 4x fewer FLOPs (see benchmarks/bench_unet.py).
    basic = nets.BasicUNet(2, 1, 2, features=(16, 32, 64, 128, 256, 16))
    monai_unet = nets.UNet(2, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                           num_res_units=2)
    assert count_parameters(basic) / count_parameters(ours) == pytest.approx(1.0, abs=0.01)
    assert count_parameters(monai_unet) / count_parameters(ours) == pytest.approx(0.84, abs=0.02)
    x = torch.randn(1, 1, 64, 64)
    assert ours(x).shape == basic(x).shape == monai_unet(x).shape == (1, 2, 64, 64)


def test_outline_encoder_decoder_has_74691_parameters():
    # conv 3x3 1->64: (9*1 + 1)*64 = 640; two convs 64->64: 2 * (9*64 + 1)*64 = 73,856;
    # conv 1x1 64->3: (64 + 1)*3 = 195; total 640 + 73,856 + 195 = 74,691.
    model = EncoderDecoder(2, in_channels=1, out_channels=3)
    assert count_parameters(model) == 74_691
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


TEACHING = [EncoderDecoder, FCN, SegNet, DeepLabV3]


@pytest.mark.parametrize("cls", TEACHING)
@pytest.mark.parametrize(("dims", "shape"), [(2, (2, 2, 37, 45)), (3, (1, 1, 33, 35, 34))])
def test_teaching_models_keep_odd_spatial_sizes(cls, dims, shape):
    model = cls(spatial_dims=dims, in_channels=shape[1], out_channels=3)
    out = model(torch.randn(shape))
    assert out.shape == (shape[0], 3, *shape[2:])
    out.square().mean().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    assert first_conv.weight.grad.abs().sum() > 0


def test_segnet_unpooling_puts_values_only_where_the_maxima_were():
    model = SegNet(2, 1, 2, base_channels=4, depth=2)
    unpooled = []
    model.unpool.register_forward_hook(lambda module, args, out: unpooled.append(out))
    model(torch.randn(2, 1, 32, 32))
    for out in unpooled:  # at most one non-zero value in every 2x2 window
        windows = out.unfold(2, 2, 2).unfold(3, 2, 2)
        assert (windows != 0).sum(dim=(-1, -2)).max() <= 1


def test_deeplab_trains_on_a_batch_of_one_and_has_one_branch_per_rate():
    model = DeepLabV3(2, 1, 2, atrous_rates=(1, 3, 5))
    dilations = [b[0].dilation for b in model.aspp.branches]
    assert dilations == [(1, 1), (1, 1), (3, 3), (5, 5)]  # the 1x1 branch, then the rates
    model(torch.randn(1, 1, 40, 40)).mean().backward()  # global pooling branch has no BN


def test_registry_lists_every_model_of_the_course():
    expected = {"unet", "encoder_decoder", "fcn", "segnet", "deeplabv3", "monai_unet",
                "monai_basic_unet", "monai_attention_unet", "monai_segresnet", "monai_unetr",
                "monai_swin_unetr", "mask_rcnn"}
    assert set(list_models()) == expected
    assert "mask_rcnn" not in list_models(spatial_dims=3)


BUILDABLE = ["unet", "encoder_decoder", "fcn", "segnet", "deeplabv3", "monai_unet",
             "monai_basic_unet", "monai_attention_unet", "monai_segresnet"]


@pytest.mark.parametrize("name", BUILDABLE)
@pytest.mark.parametrize(("dims", "size"), [(2, (32, 32)), (3, (32, 32, 32))])
def test_build_model_gives_logits_of_the_input_size(name, dims, size):
    pytest.importorskip("monai")
    model = build_model(name, spatial_dims=dims, in_channels=2, out_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize("name", ["monai_unetr", "monai_swin_unetr"])
def test_transformer_models_build_or_explain_what_is_missing(name):
    pytest.importorskip("monai")
    if not HAS_EINOPS:
        with pytest.raises(ModelUnavailableError, match="pip install einops"):
            build_model(name, 2, 1, 2, img_size=(32, 32))
        return
    # UNETR sizes its position embedding from img_size; SwinUNETR (MONAI >= 1.5) takes none
    # but downsamples 32x, and its instance norm needs more than one pixel at the bottom.
    kwargs = {"feature_size": 12} if "swin" in name else {"img_size": (64, 64)}
    model = build_model(name, 2, 1, 2, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.skipif(not HAS_EINOPS, reason="einops is not installed")
def test_unetr_needs_the_image_size():
    with pytest.raises(ValueError, match="needs img_size"):
        build_model("monai_unetr", 3, 1, 2)


def test_build_model_passes_keyword_arguments_and_rejects_unknown_names():
    assert build_model("unet", 2, 1, 2, depth=2).depth == 2
    with pytest.raises(KeyError, match="unknown model 'unet3d'; choose one of unet, "):
        build_model("unet3d")
    with pytest.raises(ValueError, match=r"'mask_rcnn' supports spatial_dims \(2,\), got 3"):
        build_model("mask_rcnn", spatial_dims=3)


@pytest.mark.skipif(_torchvision_importable(), reason="torchvision is importable here")
def test_mask_rcnn_without_torchvision_raises_a_clear_error():
    with pytest.raises(ModelUnavailableError, match="mask_rcnn needs torchvision.*pip install"):
        build_model("mask_rcnn", 2, 3, 2)


@pytest.mark.skipif(not _torchvision_importable(), reason="needs torchvision (not importable "
                    "beside the CPU torch wheel used here)")
def test_mask_rcnn_builds_with_torchvision():
    model = build_model("mask_rcnn", 2, 1, 3).eval()
    with torch.no_grad():
        (out,) = model([torch.rand(1, 64, 64)])
    assert {"boxes", "labels", "scores", "masks"} <= set(out)


def test_count_flops_of_one_convolution_by_hand():
    # 3x3 conv 1->1 on 8x8 with "same" padding: 64 outputs x 9 multiply-adds x 2 = 1152 FLOPs
    # (FlopCounterMode counts a multiply-add as 2 FLOPs and does not discount the padding).
    assert count_flops(nn.Conv2d(1, 1, 3, padding=1, bias=False), torch.randn(1, 1, 8, 8)) == 1152


def test_summary_table_reports_parameters_flops_and_unavailable_models():
    pytest.importorskip("pandas")
    table = model_summary_table(["unet", "encoder_decoder", "mask_rcnn"], out_channels=3,
                                input_size=(32, 32))
    assert table.loc["encoder_decoder", "params"] == 74_691
    # Each outline conv runs at full resolution: 32*32 * (9*1*64 + 2*9*64*64 + 64*3) MACs.
    assert table.loc["encoder_decoder", "gmacs"] == pytest.approx(
        32 * 32 * (9 * 64 + 2 * 9 * 64 * 64 + 64 * 3) / 1e9)
    assert table.loc["unet", "output_shape"] == (1, 3, 32, 32)
    if not _torchvision_importable():
        assert "torchvision" in table.loc["mask_rcnn", "note"]
    with pytest.raises(ValueError, match="does not have 3 axes"):
        model_summary_table(["unet"], spatial_dims=3, input_size=(32, 32))
