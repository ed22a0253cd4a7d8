"""CUSP (docs/models/cusp.md section 8) on the tiny config, CPU.

Tolerances (docs/models/cusp.md section 8): 1e-10 for float64 comparisons of two computations of the same maths in a
different order (a few ulps of values of order 1, accumulated over the tiny network's depth); exact equality
where the code path is the same (identity blurs, seeds, converted weights); bf16 against fp32 is checked
loosely (mean |diff| < 0.05 on [0, 1] outputs: bf16 keeps 8 mantissa bits, ~4e-3 relative per op).
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyagingrt.checkpoints.cusp import official_blur_bank, read_snapshot
from pyagingrt.errors import CheckpointError, InputError
from pyagingrt.models.cusp import CUSPAdapter
from pyagingrt.models.registry import get_adapter
from pyagingrt.training.layers.dex import DEX, DEXConfig
from pyagingrt.training.layers.guided_backprop_mask import guided_backprop_mask, structure_mask
from pyagingrt.training.layers.masked_gaussian_blur import gaussian_blur
from pyagingrt.training.layers.stylegan2 import Conv2dLayer, FullyConnectedLayer, MappingNetwork, upsample2d
from pyagingrt.training.models.cusp import CUSP, CUSPConfig, generator_parameter_count, skip_blur_kernel_size

ADAPTER = CUSPAdapter()
TINY = CUSPConfig.tiny()
F64 = {"atol": 1e-10, "rtol": 1e-10}
FIR = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
FIR2D = FIR[:, None] * FIR[None, :] / 64  # [4, 4]


def tiny_model(dtype=torch.float64, config: CUSPConfig = TINY) -> CUSP:
    torch.manual_seed(1)
    return ADAPTER.build(config).eval().requires_grad_(False).to(dtype)


def images(batch: int, dtype=torch.float64, size: int = 56) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, dtype=dtype) * 2 - 1  # [B, 3, H, H] in [-1, 1]


def onehot(ages, dim: int = 101, dtype=torch.float64) -> torch.Tensor:
    return F.one_hot(torch.as_tensor(ages), dim).to(dtype)  # [B, dim]


def sig(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def depthwise(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    return F.conv2d(x, f.to(x)[None, None].expand(channels, 1, *f.shape), groups=channels)  # f is symmetric


# --- sizes -------------------------------------------------------------------------------------------------
def test_paper_parameter_counts_on_meta():
    with torch.device("meta"):
        g224, g256, dex = CUSP(CUSPConfig.paper224()), CUSP(CUSPConfig.paper256()), DEX(DEXConfig.paper())

    def count(model, prefix):
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))

    assert generator_parameter_count(g224) == 32_287_149
    assert generator_parameter_count(g256) == 31_648_537
    assert sum(p.numel() for p in dex.parameters()) == 134_674_341
    assert count(g224, "content_enc") == count(g224, "style_enc") == 3_910_784
    assert count(g224, "style_map") == 2_101_248
    assert (count(g224, "attr_map"), count(g256, "attr_map")) == (1_890_816, 1_844_224)
    assert (count(g224, "image_dec"), count(g256, "image_dec")) == (20_473_517, 19_881_497)


@pytest.mark.parametrize(
    ("config", "blocks"),
    [
        (CUSPConfig.paper224(), [(14, 512, 512), (28, 512, 512), (56, 512, 512), (112, 640, 292), (224, 292, 146)]),
        (CUSPConfig.paper256(), [(16, 512, 512), (32, 512, 512), (64, 512, 512), (128, 640, 256), (256, 256, 128)]),
        (TINY, [(14, 32, 32), (28, 48, 16), (56, 16, 8)]),
    ],
)
def test_decoder_layer_shapes(config, blocks):
    with torch.device("meta"):
        model = CUSP(config)
    sd = model.state_dict()
    assert model.image_dec.block_resolutions == tuple(r for r, _, _ in blocks)
    for res, cin, cout in blocks:
        assert tuple(sd[f"image_dec.b{res}.conv0.weight"].shape) == (cout, cin, 3, 3)
        assert tuple(sd[f"image_dec.b{res}.conv1.weight"].shape) == (cout, cout, 3, 3)
        assert tuple(sd[f"image_dec.b{res}.torgb.weight"].shape) == (3, cout, 1, 1)
        assert tuple(sd[f"image_dec.b{res}.conv0.affine.weight"].shape) == (cin, config.w_dim)
        assert tuple(sd[f"image_dec.b{res}.conv1.noise_const"].shape) == (res, res)
        assert f"image_dec.b{res}.conv0.affine.bias" not in sd  # --bias False
        assert f"image_dec.b{res}.conv0.bias" not in sd
    assert tuple(sd["attr_map.fc0.weight"].shape) == (config.w_dim, config.attr_dim)


def test_tiny_forward_shapes_and_adapter_range():
    model = tiny_model(torch.float32)
    x = images(2, torch.float32)
    feats = model.content_enc(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 28, 28), (2, 16, 14, 14), (2, 32, 7, 7)]
    ws = model.mapping(model.style_enc(x)[-1].mean((2, 3)), onehot([20, 69], dtype=torch.float32))
    assert tuple(ws.shape) == (2, 9, 32)
    targets = ADAPTER.validate_ages(TINY, torch.tensor([20.0, 69.0], dtype=torch.float64))
    out = ADAPTER.run(model, (x + 1) / 2, targets, None, ADAPTER.validate_options(TINY, 2, {}))
    assert out.shape == (2, 3, 56, 56)
    assert out.dtype == torch.float32
    assert out.min() >= 0
    assert out.max() <= 1
    assert out.std() > 0.01


# --- layers ------------------------------------------------------------------------------------------------
def test_encoder_layer_maps_224_to_112_with_official_gain():
    torch.manual_seed(0)
    layer = Conv2dLayer(3, 4).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    y = layer(x)
    filtered = depthwise(F.pad(x, (2, 2, 2, 2)), FIR2D)  # [1, 3, 225, 225]
    want = F.conv2d(filtered, layer.weight / math.sqrt(9 * 3), layer.bias, stride=2)  # [1, 4, 112, 112]
    torch.testing.assert_close(y, F.leaky_relu(want, 0.2) * math.sqrt(2), **F64)
    assert y.shape == (1, 4, 112, 112)


def test_fc_and_mapping_apply_the_official_gains():
    torch.manual_seed(0)
    fc = FullyConnectedLayer(6, 5, lr_multiplier=0.01, activation="lrelu").double()
    with torch.no_grad():
        fc.bias.normal_()
    x = torch.randn(3, 6, dtype=torch.float64)
    want = F.leaky_relu(x @ (fc.weight * 0.01 / math.sqrt(6)).t() + 0.01 * fc.bias, 0.2) * math.sqrt(2)
    torch.testing.assert_close(fc(x), want, **F64)
    mapping = MappingNetwork(10, 4, num_layers=1, num_ws=3).double()
    hot = onehot([7], 10)  # normalised to (1/10 + 1e-8)^(-1/2) ~ sqrt(10) at the hot index
    want = mapping.fc0(hot * (0.1 + 1e-8) ** -0.5)
    torch.testing.assert_close(mapping(hot), want[:, None].expand(1, 3, 4), **F64)


def test_conv0_is_conv_transpose_then_fir_on_7_to_14():
    model = tiny_model()
    layer = model.image_dec.b14.conv0  # 32 -> 32 channels, 7 -> 14
    x = torch.randn(2, 32, 7, 7, dtype=torch.float64)
    w = torch.randn(2, 32, dtype=torch.float64)
    got = layer(x, w, "none", None, "scaled")
    styles = w @ (layer.affine.weight / math.sqrt(32)).t()  # [B, I]
    outs = []
    for b in range(2):
        wb = layer.weight * styles[b][None, :, None, None]  # [O, I, 3, 3]
        wb = wb * (wb.square().sum((1, 2, 3)) + 1e-8).rsqrt()[:, None, None, None]
        up = F.conv_transpose2d(x[b : b + 1], wb.transpose(0, 1), stride=2)  # [1, O, 15, 15]
        outs.append(depthwise(F.pad(up, (1, 1, 1, 1)), FIR2D * 4))  # [1, O, 14, 14]
    want = (F.leaky_relu(torch.cat(outs), 0.2) * math.sqrt(2)).clamp(-256, 256)
    assert got.shape == (2, 32, 14, 14)
    torch.testing.assert_close(got, want, **F64)


def test_rgb_upsample_matches_zero_insertion_and_fir():
    img = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    zeros = torch.zeros(2, 3, 14, 14, dtype=torch.float64)
    zeros[:, :, ::2, ::2] = img
    want = depthwise(F.pad(zeros, (2, 1, 2, 1)), FIR2D * 4)
    torch.testing.assert_close(upsample2d(img, FIR2D), want, **F64)
    flat = upsample2d(torch.ones(1, 1, 8, 8, dtype=torch.float64), FIR2D)
    torch.testing.assert_close(flat[:, :, 2:-2, 2:-2], torch.ones(1, 1, 12, 12, dtype=torch.float64), **F64)


def test_modconv_forms_agree_inside_the_model():
    model = tiny_model()
    x, oh = images(3), onehot([20, 45, 69])
    scaled = model(x, oh, sig(9, 4, 0), sig(0, 3, 9), form="scaled")
    grouped = model(x, oh, sig(9, 4, 0), sig(0, 3, 9), form="grouped")
    torch.testing.assert_close(scaled, grouped, **F64)


# --- skip blur ---------------------------------------------------------------------------------------------
def test_sigma_zero_is_the_exact_identity():
    model = tiny_model(torch.float32)
    feats, mask = torch.randn(2, 16, 14, 14), torch.rand(2, 1, 14, 14)
    assert torch.equal(model.skip_blur(feats, mask, sig(0, 0), sig(0, 0)), feats)
    x, oh = images(2, torch.float32), onehot([30, 60], dtype=torch.float32)
    got = model(x, oh, sig(0, 0), sig(0, 0))
    model.skip_blur = lambda f, *args: f  # the model without any blur
    assert torch.equal(got, model(x, oh, sig(0, 0), sig(0, 0)))


def test_blur_mask_extremes_and_sigma_m_zero():
    model = tiny_model()
    feats = torch.randn(2, 16, 14, 14, dtype=torch.float64)
    ones, zeros = torch.ones(2, 1, 14, 14, dtype=torch.float64), torch.zeros(2, 1, 14, 14, dtype=torch.float64)
    k = skip_blur_kernel_size(14)
    s_m, s_g = 8.0, 5.0  # input pixels; sigma_hat = sigma / 4
    outside = model.skip_blur(feats, zeros, sig(s_m, s_m), sig(s_g, s_g))
    torch.testing.assert_close(outside, gaussian_blur(feats, s_g / 4, k), **F64)
    inside = model.skip_blur(feats, ones, sig(s_m, s_m), sig(s_g, s_g))
    torch.testing.assert_close(inside, gaussian_blur(gaussian_blur(feats, s_g / 4, k), s_m / 4, k), **F64)
    a = model.skip_blur(feats, torch.rand_like(ones), sig(0, 0), sig(s_g, 2))
    assert torch.equal(a, model.skip_blur(feats, torch.rand_like(ones), sig(0, 0), sig(s_g, 2)))


def test_blur_kernel_equals_the_official_bank():
    size = 56  # paper224 skip: S = 56, K = 19
    kernel = skip_blur_kernel_size(size)
    assert (kernel, skip_blur_kernel_size(64), skip_blur_kernel_size(14)) == (19, 21, 5)
    bank = official_blur_bank(size, kernel)
    model = tiny_model()
    model.config = CUSPConfig.paper224()  # only resolution is read by skip_blur
    impulse = torch.zeros(1, 1, size, size, dtype=torch.float64)  # K and sigma_hat come from the map's side
    c, h = size // 2, kernel // 2
    impulse[..., c, c] = 1
    for i in (0, 1, 200, 511, 1023):
        sigma = i * 224 / (25 * 1023)  # parity map of docs/models/cusp.md section 2.1, input pixels
        response = model.skip_blur(impulse, torch.zeros_like(impulse), sig(0.0), sig(sigma))
        # the official kernel is defined on the S x S skip map; the impulse map here is larger, same kernel
        torch.testing.assert_close(response[0, 0, c - h : c + h + 1, c - h : c + h + 1], bank[i], atol=1e-7, rtol=0)


# --- mask --------------------------------------------------------------------------------------------------
def manual_guided_gradient(dex: DEX, x: torch.Tensor, reduce: str) -> torch.Tensor:
    """dL/dx by a hand-written backward: transposed convs/fcs, max-unpool, g*[a>0]*[g>0] at every ReLU."""
    xg = x.detach().requires_grad_(True)
    u = dex.preprocess(xg)  # linear, no ReLU: its transpose comes from autograd
    h, trace = u.detach(), []
    for g, widths in enumerate(dex.config.conv_channels, start=1):
        for j in range(1, len(widths) + 1):
            conv = getattr(dex, f"conv{g}_{j}")
            a = conv(h)
            trace.append(("conv", conv, a))
            h = a.clamp_min(0)
        trace.append(("pool", h.shape[-2:], None))
        h, idx = F.max_pool2d(h, 2, return_indices=True)
        trace[-1] = ("pool", trace[-1][1], idx)
    shape = h.shape
    a6 = dex.fc6(h.flatten(1))
    a7 = dex.fc7(a6.clamp_min(0))
    logits = dex.fc8_101(a7.clamp_min(0))
    seed = torch.ones_like(logits) if reduce == "all" else F.one_hot(logits.argmax(1), logits.shape[1]).to(logits)

    def guided(grad, act):
        return grad * (act > 0) * (grad > 0)

    grad = guided(seed @ dex.fc8_101.weight, a7)
    grad = guided(grad @ dex.fc7.weight, a6)
    grad = (grad @ dex.fc6.weight).reshape(shape)
    for kind, obj, extra in reversed(trace):
        if kind == "pool":
            grad = F.max_unpool2d(grad, extra, 2, output_size=obj)
        else:
            grad = F.conv_transpose2d(guided(grad, extra), obj.weight, padding=1)
    (gx,) = torch.autograd.grad(u, xg, grad)
    return gx


@pytest.mark.parametrize("reduce", ["all", "max"])
def test_guided_backprop_mask_equals_hand_written_backward(reduce):
    model = tiny_model()
    model.config = model.config.replace(dex_outclass=reduce)
    x = images(2)
    got = model.structure_mask(x)
    want = structure_mask(manual_guided_gradient(model.dex, x, reduce), model.config.gb_kernel_size, 1.55)
    torch.testing.assert_close(got, want, **F64)
    oracle = guided_backprop_mask(model.dex, x, 7, model.config.gb_sigma, reduce=reduce)
    torch.testing.assert_close(got, oracle, **F64)
    assert got.shape == (2, 1, 56, 56)
    assert got.min() >= 0
    assert got.max() == 1


def test_mask_scale_invariance_zero_gradient_and_reductions():
    model = tiny_model()
    x = images(2)
    base = model.structure_mask(x)
    with torch.no_grad():
        model.dex.fc8_101.weight.mul_(3.0)
        model.dex.fc8_101.bias.mul_(3.0)
    torch.testing.assert_close(model.structure_mask(x), base, **F64)  # G scales by 3, M does not change
    model.config = model.config.replace(dex_outclass="max")
    assert (model.structure_mask(x) - base).abs().max() > 1e-3  # top-1 seed is another mask
    with torch.no_grad():
        model.dex.fc8_101.weight.zero_()
    assert torch.equal(model.structure_mask(x), torch.zeros_like(base))


def test_mask_kernel_sizes():
    assert (CUSPConfig.paper224().gb_kernel_size, CUSPConfig.paper256().gb_kernel_size, TINY.gb_kernel_size) == (
        29,
        33,
        7,
    )
    assert CUSPConfig.paper224().gb_sigma == pytest.approx(4.85)
    assert CUSPConfig.paper256().gb_sigma == pytest.approx(5.45)
    assert CUSPConfig.paper224().replace(mask="official").gb_kernel_size == 1731
    assert CUSPConfig.paper256().replace(mask="official").gb_kernel_size == 1977


def test_mask_reaches_the_blur_as_a_4x4_area_mean(monkeypatch):
    model = tiny_model()
    x, seen = images(2), []
    blur = model.skip_blur

    def spy(feats, mask, sigma_m, sigma_g):
        seen.append(mask)
        return blur(feats, mask, sigma_m, sigma_g)

    monkeypatch.setattr(model, "skip_blur", spy)
    model(x, onehot([20, 30]), sig(9, 9), sig(0, 0))
    full = model.structure_mask(x)
    torch.testing.assert_close(seen[0], full.reshape(2, 1, 14, 4, 14, 4).mean((3, 5)), **F64)


def test_dex_preprocessing_channel_swap_and_means():
    dex = DEX(DEXConfig.tiny()).double()
    x = torch.empty(1, 3, 32, 32, dtype=torch.float64)
    x[:, 0], x[:, 1], x[:, 2] = 0.5, -0.25, 0.0  # R, G, B
    u = dex.preprocess(x)
    # BGR, then (u + 1) * 127.5, then the means on channels 0, 1, 2 (the R mean lands on B)
    want = [(0.0 + 1) * 127.5 - 123.680, (-0.25 + 1) * 127.5 - 116.779, (0.5 + 1) * 127.5 - 103.939]
    for c in range(3):
        assert torch.allclose(u[0, c], torch.full((32, 32), want[c], dtype=torch.float64))
    y = torch.rand(1, 3, 56, 56, dtype=torch.float64)
    resized = F.interpolate(y[:, (2, 1, 0)], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(dex.preprocess(y), (resized + 1) * 127.5 - dex.mean, **F64)


# --- batch, noise, ws --------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["scaled", "grouped"])
def test_batch_of_four_equals_four_batches_of_one(form):
    model = tiny_model()
    x, ages = images(4), [20, 33, 50, 69]
    s_m, s_g = sig(9, 0, 4, 7), sig(0, 2, 9, 1)
    batch = model(x, onehot(ages), s_m, s_g, form=form)
    for b in range(4):
        one = model(x[b : b + 1], onehot(ages[b : b + 1]), s_m[b : b + 1], s_g[b : b + 1], form=form)
        torch.testing.assert_close(batch[b : b + 1], one, **F64)


def test_random_noise_seeds_and_const_noise():
    model = tiny_model(torch.float32)
    x = (images(3, torch.float32) + 1) / 2
    targets = torch.tensor([25, 40, 60])

    def run(noise, gen_seed=0, seeds=None, batch=3):
        opts = ADAPTER.validate_options(TINY, batch, {"noise": noise, "noise_seeds": seeds})
        return ADAPTER.run(model, x[:batch], targets[:batch], torch.Generator().manual_seed(gen_seed), opts)

    assert torch.equal(run("random", 5), run("random", 5))
    assert (run("random", 5) - run("random", 6)).abs().max() > 1e-4
    assert torch.equal(run("const", 5), run("const", 6))
    assert (run("const") - run("none")).abs().max() > 1e-4
    torch.testing.assert_close(run("random", 5, batch=1), run("random", 5)[:1], rtol=1e-4, atol=1e-5)
    a, b = run("random", seeds=[1, 2, 3]), run("random", seeds=[1, 9, 3])
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[2], b[2])
    assert (a[1] - b[1]).abs().max() > 1e-4


def test_ws_layout_age_moves_conv0_styles_image_moves_the_rest():
    model = tiny_model()
    v = torch.randn(2, 32, dtype=torch.float64)
    ws = model.mapping(v, onehot([20, 30]))
    assert ws.shape == (2, 9, 32)
    other_age = model.mapping(v, onehot([60, 69]))
    other_image = model.mapping(torch.randn(2, 32, dtype=torch.float64), onehot([20, 30]))
    conv0, rest = [0, 3, 6], [1, 2, 4, 5, 7, 8]
    assert torch.equal(ws[:, rest], other_age[:, rest])
    assert not torch.equal(ws[:, conv0], other_age[:, conv0])
    assert torch.equal(ws[:, conv0], other_image[:, conv0])
    assert not torch.equal(ws[:, rest], other_image[:, rest])


def test_bfloat16_module_runs_close_to_float32():
    model = tiny_model(torch.float32)
    x = torch.rand(2, 3, 56, 56)
    targets, opts = torch.tensor([30, 50]), ADAPTER.validate_options(TINY, 2, {})
    ref = ADAPTER.run(model, x, targets, None, opts)
    out = ADAPTER.run(model.to(torch.bfloat16), x, targets, None, opts)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.05


# --- ages and options --------------------------------------------------------------------------------------
def test_ages_ffhq_rr_and_ffhq_ls():
    assert ADAPTER.validate_ages(TINY, sig(20, 45, 69)).tolist() == [20, 45, 69]
    for bad in (19, 70, 20.5, float("nan")):
        with pytest.raises(InputError, match=r"20\.\.69"):
            ADAPTER.validate_ages(TINY, sig(bad))
    ls = TINY.replace(attr_dim=10)
    assert ADAPTER.validate_ages(ls, sig(0, 2.9, 3, 14, 19.5, 45, 69.5, 70, 100)).tolist() == [
        0,
        0,
        1,
        3,
        4,
        7,
        8,
        9,
        9,
    ]
    with pytest.raises(InputError, match=">= 0"):
        ADAPTER.validate_ages(ls, sig(-1))
    assert len(ADAPTER.age_groups(TINY)) == 50
    assert len(ADAPTER.age_groups(ls)) == 10


def test_options_defaults_and_errors():
    opts = ADAPTER.validate_options(TINY, 2, {})
    assert opts["sigma_m"] == (9.0, 9.0)
    assert opts["sigma_g"] == (0.0, 0.0)
    assert opts["noise"] == "const"
    ls = ADAPTER.validate_options(CUSPConfig.paper256(), 1, {"sigma_g": 10.24})
    assert ls["sigma_m"] == (8.0,)
    assert ls["sigma_g"] == (10.24,)
    bad = [
        {"sigma_m": -0.1},
        {"sigma_g": 9.5},
        {"sigma_m": [1.0, 2.0, 3.0]},
        {"sigma_m": "x"},
        {"noise": "loud"},
        {"noise_seeds": [1, 2]},
        {"noise": "random", "noise_seeds": [1]},
        {"blur": 1},
    ]
    for options in bad:
        with pytest.raises(InputError):
            ADAPTER.validate_options(TINY, 2, options)
    with pytest.raises(InputError, match=r"\[0, 10.24\]"):
        ADAPTER.validate_options(CUSPConfig.paper256(), 1, {"sigma_m": 10.3})
    with pytest.raises(InputError, match="shape"):
        ADAPTER.run(tiny_model(torch.float32), torch.rand(1, 3, 64, 64), torch.tensor([30]), None, opts)
    assert get_adapter("cusp").config_names[0] == "paper224"
    assert ADAPTER.config_from_dict(ADAPTER.config_to_dict(TINY)) == TINY


# --- converter ---------------------------------------------------------------------------------------------
def _reconstruct_persistent_obj(meta):  # pickled by reference only; never called by the converter
    raise AssertionError("the converter must not call the persistence hook")


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict in the synthetic snapshot."""


class Persistent:
    """A persistent-class-like record: pickles as _reconstruct_persistent_obj(meta), as StyleGAN2-ADA does."""

    def __init__(self, class_name: str, state: dict, src: str = "") -> None:
        self.meta = {"type": "class", "version": 6, "module_src": src, "class_name": class_name, "state": state}

    def __reduce__(self):  # a fresh meta dict per call, whose state is the object's own dict (as persistence does)
        return (_reconstruct_persistent_obj, (dict(self.meta),))


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


NETWORKS_SRC = "import torch\n# mask blur: k = get_kernel_size(29, W, 224)\n"
INIT_KWARGS = {
    "img_resolution": 56,
    "attr_dim": 101,
    "n_downsample": 3,
    "skip_layers": [2],
    "skip_kind": "linear",
    "style_enc": True,
    "bottleneck_class": False,
    "learn_mask": None,
    "blur_skip": True,
    "skip_grad_blur": "gb",
    "synthesis_kwargs": {"bias": False, "rgb_attention": False, "num_fp16_res": 0, "conv_clamp": 256},
}


def module_record(module: nn.Module, prefix: str = "", drop: str = "", extra: dict | None = None) -> Persistent:
    """The persistent record of ``module``: its own tensors and child records (``drop``: a dotted key to omit)."""
    children = collections.OrderedDict(
        (n, module_record(c, f"{prefix}{n}.", drop)) for n, c in module.named_children() if n != "dex"
    )
    params = collections.OrderedDict((n, p) for n, p in module._parameters.items() if prefix + n != drop)
    buffers = collections.OrderedDict((n, b) for n, b in module._buffers.items() if prefix + n != drop)
    state = {"_parameters": params, "_buffers": buffers, "_modules": children, "training": False, **(extra or {})}
    return Persistent(type(module).__name__, state, NETWORKS_SRC)


def dex_records(dex: DEX) -> Persistent:
    """skip_grad_blur -> DEXAgeClassifier -> VGG, whose layers are plain torch modules (as in the official pickle)."""
    layers = collections.OrderedDict()
    for name, child in dex.named_children():
        if isinstance(child, nn.Conv2d):
            layers[name] = nn.Conv2d(child.in_channels, child.out_channels, 3, padding=1)
            layers[name].load_state_dict(child.state_dict())
        elif isinstance(child, nn.Linear):
            layers[name] = nn.Linear(child.in_features, child.out_features)
            layers[name].load_state_dict(child.state_dict())
        else:
            layers[name] = nn.ReLU()
    vgg = Persistent("VGG", {"_parameters": {}, "_buffers": {}, "_modules": layers})
    dex_state = {"outclass": "all", "vgg_path": "dex.pt", "vgg_own_relu": True, "classifier": vgg, "_modules": {}}
    classifier = Persistent("DEXAgeClassifier", dex_state)
    return Persistent("GradiendtClassifierWrapper", {"model": classifier, "_modules": {}})


def write_snapshot(path, model: CUSP, *, kwargs=None, drop="", tensors=None, with_dex=True, evil=None):
    """A network-snapshot-*.pkl of the official structure built from ``model`` (tiny).

    ``tensors`` overrides or adds G_ema tensors by dotted name; ``evil`` adds an object reducing to os.system.
    """
    extra = {"_init_kwargs": EasyDict(kwargs or INIT_KWARGS), "skip_bool_list": [False, True, False]}
    if with_dex:
        extra["skip_grad_blur"] = dex_records(model.dex)  # a plain attribute: no part of G's state dict
    record = module_record(model, drop=drop, extra=extra)
    record.meta["class_name"] = "Image2Image"
    state = record.meta["state"]
    state["_buffers"]["blur_list"] = official_blur_bank(14, 5).float()
    for key, value in (tensors or {}).items():
        *parents, leaf = key.split(".")
        node = state
        for name in parents:
            node = node["_modules"][name].meta["state"]
        group = "_buffers" if leaf in node["_buffers"] or leaf == "blur_list" else "_parameters"
        node[group][leaf] = value
    snapshot = {"training_set_kwargs": {"resolution": 56}, "G": None, "D": None, "G_ema": record}
    if evil is not None:
        snapshot["payload"] = Evil(evil)
    with open(path, "wb") as fh:
        pickle.dump(snapshot, fh, protocol=4)
    return path


@pytest.fixture
def fake_modules(monkeypatch):
    """Make the synthetic records picklable under the official global names (torch_utils, dnnlib)."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    for name, module in {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(_reconstruct_persistent_obj, "__module__", "torch_utils.persistence")
    monkeypatch.setattr(EasyDict, "__module__", "dnnlib.util")


def test_snapshot_round_trip_gives_identical_outputs(tmp_path, fake_modules):
    source = tiny_model(torch.float32)
    path = write_snapshot(tmp_path / "network-snapshot-000100.pkl", source)
    raw = read_snapshot(path)
    assert dict(raw["G_ema"].state["_init_kwargs"]) == INIT_KWARGS
    assert torch.equal(raw["G_ema"].state["_modules"]["style_map"].state["_modules"]["fc1"].state["_parameters"]
                       ["weight"], source.style_map.fc1.weight)  # fmt: skip
    config, state = ADAPTER.convert_official(path, "tiny")
    assert config == TINY.replace(mask="official")  # what the released G_ema computes, by default
    target = ADAPTER.build(TINY).eval()  # the source's mask mode, to compare outputs
    target.load_state_dict(state, strict=True)
    x, targets, opts = torch.rand(2, 3, 56, 56), torch.tensor([22, 66]), ADAPTER.validate_options(TINY, 2, {})
    assert torch.equal(ADAPTER.run(target, x, targets, None, opts), ADAPTER.run(source.eval(), x, targets, None, opts))


def test_snapshot_without_dex_then_dex_file(tmp_path, fake_modules):
    from safetensors.torch import save_file

    source = tiny_model(torch.float32)
    path = write_snapshot(tmp_path / "snap.pkl", source, with_dex=False)
    with pytest.warns(UserWarning, match="dex=PATH"):
        config, state = ADAPTER.convert_official(path, "tiny")
    assert all(not v.any() for k, v in state.items() if k.startswith("dex."))
    model = ADAPTER.build(config)
    model.load_state_dict(state)
    dex_file = tmp_path / "dex.safetensors"
    save_file({k.replace("fc8_101", "fc8-101"): v.contiguous() for k, v in source.dex.state_dict().items()}, dex_file)
    ADAPTER.attach(model, config, dex=dex_file)
    assert all(torch.equal(v, source.dex.state_dict()[k]) for k, v in model.dex.state_dict().items())
    save_file({k: v.contiguous() for k, v in source.dex.state_dict().items() if k != "fc7.bias"}, dex_file)
    with pytest.raises(CheckpointError, match=r"fc7\.bias"):
        ADAPTER.attach(model, config, dex=dex_file)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"drop": "image_dec.b28.conv1.weight"}, r"missing keys: image_dec\.b28\.conv1\.weight"),
        ({"tensors": {"image_dec.b14.torgb.bias": torch.zeros(4)}}, r"image_dec\.b14\.torgb\.bias \(4,\)"),
        ({"tensors": {"style_map.extra": torch.zeros(2)}}, r"unexpected keys: style_map\.extra"),
        ({"tensors": {"attr_map.fc1.bias": torch.full((32,), float("nan"))}}, r"NaN or Inf .*attr_map\.fc1\.bias"),
        ({"tensors": {"content_enc.conv1.resample_filter": torch.ones(4, 4)}}, r"content_enc\.conv1\.resample_f"),
        ({"tensors": {"blur_list": torch.rand(1024, 5, 5)}}, "blur_list"),
        ({"kwargs": {**INIT_KWARGS, "skip_kind": "cat"}}, "skip_kind"),
        ({"kwargs": {**INIT_KWARGS, "synthesis_kwargs": {"bias": True}}}, "bias"),
        ({"kwargs": {**INIT_KWARGS, "n_downsample": 4}}, "n_downsample"),
        ({"kwargs": {**INIT_KWARGS, "img_resolution": 64}}, "img_resolution 64"),
    ],
)
def test_converter_refusals_name_the_key(tmp_path, fake_modules, change, match):
    path = write_snapshot(tmp_path / "snap.pkl", tiny_model(torch.float32), **change)
    with pytest.raises(CheckpointError, match=match):
        ADAPTER.convert_official(path, "tiny")


def test_pickle_naming_os_system_is_refused_without_running_it(tmp_path, fake_modules):
    marker = tmp_path / "pwned"
    path = write_snapshot(tmp_path / "snap.pkl", tiny_model(torch.float32), evil=str(marker))
    with pytest.raises(CheckpointError, match=rf"{os.system.__module__}\.system"):
        ADAPTER.convert_official(path, "tiny")
    assert not marker.exists()


def test_torch_compile_runs_cusp_with_the_mask_between_compiled_parts():
    """The mask's torch.autograd.grad cannot live inside a compiled graph; prepare_compile runs it eagerly.
    aot_eager (AOTAutograd without Inductor) is where the graph breaks without the hook, and it is fast."""
    adapter = get_adapter("cusp")
    config = adapter.make_config("tiny")
    torch.manual_seed(0)
    module = adapter.build(config).eval().requires_grad_(False)
    options = adapter.validate_options(config, 2, {})
    x = torch.rand(2, 3, config.resolution, config.resolution, generator=torch.Generator().manual_seed(1))
    targets = adapter.validate_ages(config, torch.tensor([30.0, 60.0]))

    def run(x, targets):
        return adapter.run(module, x, targets, torch.Generator().manual_seed(0), options)

    torch._dynamo.reset()
    adapter.prepare_compile(module)
    with torch.no_grad():
        compiled = torch.compile(run, backend="aot_eager")(x, targets)
        eager = run(x, targets)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
