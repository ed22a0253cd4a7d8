"""The standard-op forms the exporter substitutes for the custom ops equal the compiled ops (CPU, float32)."""

from __future__ import annotations

import pytest
import torch

from pyagingrt._extension import has_native
from pyagingrt.export.decompositions import decomposition_table
from pyagingrt.ops import masked_gaussian_blur_tables, masked_gaussian_blur_with_taps, winograd_weight

pytestmark = pytest.mark.skipif(not has_native(), reason="needs the compiled extension (the ops to decompose)")


def test_every_op_the_graphs_call_has_a_form():
    names = {op.name() for op in decomposition_table()}
    used = {"group_norm_act", "inv_conv1x1", "ddim_step", "guided_relu_backward", "guided_backprop_mask_with_taps"}
    used |= {"winograd_conv3x3"}
    assert {f"agingrt::{n}" for n in {*used, "masked_gaussian_blur_with_taps"}} <= names


@pytest.mark.parametrize("kernel", [1, 5, 9])
def test_masked_blur_form_equals_the_compiled_op(kernel):
    gen = torch.Generator().manual_seed(kernel)
    features = torch.randn(4, 6, 11, 13, generator=gen)  # [B, C, H, W]
    mask = torch.rand(4, 1, 11, 13, generator=gen)  # [B, 1, H, W]
    # every flag case: both blurs, sigma_m = 0, sigma_g = 0, sigma_m == sigma_g
    taps, flags = masked_gaussian_blur_tables([1.5, 0.0, 2.0, 1.2], [0.7, 1.0, 0.0, 1.2], kernel)
    form = decomposition_table()[torch.ops.agingrt.masked_gaussian_blur_with_taps.default]
    want = masked_gaussian_blur_with_taps(features, mask, taps, flags, impl="native")
    got = form(features, mask, taps, flags)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-6


def test_forms_of_the_other_ops_are_their_wrappers_torch_path():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 5, generator=gen)
    scale, shift = torch.rand(8, generator=gen) + 0.5, torch.randn(8, generator=gen)
    form = decomposition_table()[torch.ops.agingrt.group_norm_act.default]
    want = torch.ops.agingrt.group_norm_act(x, 4, scale, shift, 1e-5, "silu")
    assert float((form(x, 4, scale, shift, 1e-5, "silu") - want).abs().max()) <= 1e-5


def test_winograd_form_is_the_convolution_the_op_computes():
    """Exported as a plain Conv (the runtime picks its algorithm); the op differs from it by Winograd's fp32
    rounding only (tests/ops/test_winograd_conv3x3.py: 1e-4 of max |y|)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 9, 11, generator=gen)
    weight = torch.randn(7, 5, 3, 3, generator=gen) / 45**0.5
    bias = torch.randn(7, generator=gen)
    form = decomposition_table()[torch.ops.agingrt.winograd_conv3x3.default]
    got = form(x, weight, winograd_weight(weight), bias)
    torch.testing.assert_close(got, torch.nn.functional.conv2d(x, weight, bias, padding=1), atol=0, rtol=0)
    want = torch.ops.agingrt.winograd_conv3x3(x, weight, winograd_weight(weight), bias, 0)
    assert float((got - want).abs().max()) <= 1e-4 * float(got.abs().max())
