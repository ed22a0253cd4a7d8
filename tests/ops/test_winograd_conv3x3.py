"""winograd_conv3x3: the oracle's algebra in float64, the compiled op against the direct convolution, chunking,
layouts, the Meta kernel and bad input (its export form: tests/export/test_decompositions.py).

Tolerances:
- float64 oracle vs ``F.conv2d``: 1e-12 relative to max |y|. Winograd is exact algebra; float64 rounding of the
  transforms (coefficients up to 8 and 1/24) over C <= 64 channels stays near 1e-14 (measured <= 2e-13).
- float32 (op or oracle) vs ``F.conv2d`` in float64: WINOGRAD_TOL = 1e-4 of max |y|. F(4x4, 3x3) in fp32 measured
  0.25e-5 - 1.0e-5 of max |y| on these random inputs and on AcGAN/CUSP layer shapes (the direct oneDNN conv: ~2e-6),
  so a 10x margin; still far below an 8-bit image's 1/255.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyagingrt import has_native
from pyagingrt.errors import InputError
from pyagingrt.ops import winograd_conv3x3, winograd_weight
from pyagingrt.training.layers import winograd_conv3x3 as oracle

native = pytest.mark.skipif(not has_native(), reason="pyagingrt._C is not built")

WINOGRAD_TOL = 1e-4
# (N, C, O, H, W): sides that are and are not multiples of the 4x4 tile, a 1x1 image (one tile, mostly padding),
# channel counts below, at and across the kernel's 16-lane blocks.
SHAPES = [(2, 5, 7, 9, 11), (1, 16, 16, 8, 8), (3, 17, 33, 13, 6), (1, 3, 2, 1, 1), (1, 32, 48, 16, 20)]


def make_case(shape, dtype=torch.float32, seed=0):
    n, c, o, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(o, c, 3, 3, generator=gen, dtype=torch.float64) / (9 * c) ** 0.5
    return x.to(dtype), weight.to(dtype)


def relative_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("shape", SHAPES)
def test_oracle_in_float64_is_the_convolution(shape):
    x, weight = make_case(shape, torch.float64)
    y = oracle.winograd_conv3x3(x, oracle.winograd_weight(weight))
    ref = F.conv2d(x, weight, padding=1)
    assert y.shape == ref.shape
    assert relative_err(y, ref) < 1e-12


@native
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_native_matches_the_convolution(shape, layout, with_bias):
    x, weight = make_case(shape)
    bias = torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(5)) if with_bias else None
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    y = winograd_conv3x3(x, weight, winograd_weight(weight), bias, impl="native")
    ref = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    assert y.shape == ref.shape
    assert y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert relative_err(y, ref) < WINOGRAD_TOL
    fp32_oracle = winograd_conv3x3(x, weight, winograd_weight(weight), bias, impl="torch")
    assert relative_err(fp32_oracle, ref) < WINOGRAD_TOL


@native
@pytest.mark.parametrize("chunk_tiles", [1, 3, 7, 1000])
def test_every_chunking_computes_the_same_convolution(chunk_tiles):
    """Many chunks, a partial last chunk, and one chunk larger than the tile count (3 x 4 x 2 = 24 tiles)."""
    x, weight = make_case((3, 17, 33, 13, 6))
    u = winograd_weight(weight)
    y = winograd_conv3x3(x, weight, u, chunk_tiles=chunk_tiles, impl="native")
    ref = F.conv2d(x.double(), weight.double(), padding=1)
    assert relative_err(y, ref) < WINOGRAD_TOL


@native
def test_batch_items_are_independent_of_their_neighbours():
    """Each tile's transforms read only its own image, so an image's output does not depend on the others."""
    x, weight = make_case((4, 16, 16, 8, 8))
    u = winograd_weight(weight)
    whole = winograd_conv3x3(x, weight, u, chunk_tiles=4, impl="native")  # chunks of one image's 4 tiles
    single = winograd_conv3x3(x[2:3], weight, u, chunk_tiles=4, impl="native")
    assert torch.equal(whole[2:3], single)


@native
def test_meta_kernel_reports_shape_and_layout():
    x, weight = make_case((2, 5, 7, 9, 11))
    y = torch.ops.agingrt.winograd_conv3x3(x.to("meta"), weight.to("meta"), winograd_weight(weight).to("meta"), None, 0)
    assert y.shape == (2, 7, 9, 11)
    assert y.is_contiguous(memory_format=torch.channels_last)


@native
@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ("x_float64", TypeError, "x must be float32"),
        ("weight_5x5", ValueError, r"weight must be \[O, C, 3, 3\]"),
        ("u_wrong_shape", ValueError, r"u must be \[36, C, O\]"),
        ("x_3d", ValueError, "x must be 4-D"),
        ("bias_wrong_size", ValueError, r"bias must be \[O\]"),
    ],
)
def test_bad_input_names_the_argument(change, error, match):
    x, weight = make_case((1, 4, 6, 5, 5))
    u = winograd_weight(weight)
    if change == "x_float64":
        x = x.double()
    elif change == "weight_5x5":
        weight = torch.zeros(6, 4, 5, 5)
    elif change == "u_wrong_shape":
        u = u[:, :, :5]
    elif change == "x_3d":
        x = x[0]
    bias = torch.zeros(5) if change == "bias_wrong_size" else None
    with pytest.raises(error, match=match):
        winograd_conv3x3(x, weight, u, bias, impl="native")


def test_negative_chunk_is_refused():
    x, weight = make_case((1, 4, 6, 5, 5))
    with pytest.raises(InputError, match="chunk_tiles"):
        winograd_conv3x3(x, weight, winograd_weight(weight), chunk_tiles=-1)


def test_weight_transform_needs_a_3x3_weight():
    with pytest.raises(ValueError, match=r"\[O, C, 3, 3\]"):
        winograd_weight(torch.zeros(4, 4, 5, 5))


@native
def test_native_refuses_a_gradient():
    x, weight = make_case((1, 4, 6, 5, 5))
    x.requires_grad_(True)
    with pytest.raises(NotImplementedError, match="no autograd"):
        winograd_conv3x3(x, weight, winograd_weight(weight), impl="native")
    auto = winograd_conv3x3(x, weight, winograd_weight(weight))  # impl="auto": the differentiable oracle
    auto.sum().backward()
    assert x.grad is not None
    assert x.grad.shape == x.shape
