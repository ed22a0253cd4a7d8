"""winograd_conv3x3's CPU transforms through their torch-free work-range entries (compiled with a ctypes shim,
tests/ops/cpu_kernels.py): ranges split anywhere give the same bits as the whole, a range writes only its tiles,
bad ranges are refused, and the AVX-512, AVX2 and baseline clones agree bit for bit (no FMA contraction)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

from pyagingrt.ops import winograd_weight
from tests.ops.cpu_kernels import INVALID_ARGUMENT, OK, TARGETS, compile_cpu_kernel, runnable_targets

SHIM = r"""
#include "kernels/winograd_conv3x3.h"
extern "C" int wg_input(const float* x, float* v, const int64_t* s, int64_t begin, int64_t end) {
    const agingrt::WinogradInputParams p{x, v, s[0], s[1], s[2], s[3], s[4], s[5]};
    return static_cast<int>(agingrt::winograd_input_transform_cpu(p, begin, end));
}
extern "C" int wg_output(const float* m, const float* bias, float* y, const int64_t* s, int64_t begin, int64_t end) {
    const agingrt::WinogradOutputParams p{m, bias, y, s[0], s[1], s[2], s[3], s[4], s[5]};
    return static_cast<int>(agingrt::winograd_output_transform_cpu(p, begin, end));
}
"""
TILE = 4


def compile_kernel(out: Path, clones: str | None = None) -> ctypes.CDLL:
    dll = compile_cpu_kernel(out, SHIM, "winograd_conv3x3.cpp", clones)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    dll.wg_input.argtypes = [ptr, ptr, ptr, i64, i64]
    dll.wg_output.argtypes = [ptr, ptr, ptr, ptr, i64, i64]
    dll.wg_input.restype = dll.wg_output.restype = ctypes.c_int
    return dll


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> ctypes.CDLL:
    return compile_kernel(tmp_path_factory.mktemp("wg_cpu"))


def tiles(h: int, w: int) -> int:
    return -(-h // TILE) * -(-w // TILE)


def conv(kernel, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ranges) -> torch.Tensor:
    """The op's three steps as one chunk, each transform run over ``ranges`` of tiles: [N, O, H, W] channels_last."""
    n, c, h, w = x.shape
    o = weight.shape[0]
    count = n * tiles(h, w)
    xh = x.permute(0, 2, 3, 1).contiguous()  # [N, H, W, C]
    v = torch.full((36, count, c), float("nan"))
    sizes = torch.tensor([n, h, w, c, 0, count * c], dtype=torch.int64)
    for begin, end in ranges:
        assert kernel.wg_input(xh.data_ptr(), v.data_ptr(), sizes.data_ptr(), begin, end) == OK
    m = torch.bmm(v, winograd_weight(weight))  # [36, tiles, O]
    y = torch.full((n, h, w, o), float("nan"))
    sizes = torch.tensor([n, h, w, o, 0, count * o], dtype=torch.int64)
    bias_ptr = None if bias is None else bias.data_ptr()
    for begin, end in ranges:
        assert kernel.wg_output(m.data_ptr(), bias_ptr, y.data_ptr(), sizes.data_ptr(), begin, end) == OK
    return y.permute(0, 3, 1, 2)


def case(shape, seed=0):
    n, c, o, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen)
    weight = torch.randn(o, c, 3, 3, generator=gen) / (9 * c) ** 0.5
    return x, weight, torch.randn(o, generator=gen)


def test_range_pieces_equal_the_whole(kernel):
    x, weight, bias = case((2, 20, 17, 9, 10))  # 2 x 3 x 3 = 18 tiles; 20 / 17 channels: a partial lane block
    whole = conv(kernel, x, weight, bias, [(0, 18)])
    ref = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    assert float((whole.double() - ref).abs().max() / ref.abs().max()) < 1e-4  # test_winograd_conv3x3's bound
    pieces = conv(kernel, x, weight, bias, [(0, 1), (1, 7), (7, 17), (17, 18)])
    assert torch.equal(pieces, whole)


def test_a_range_writes_only_its_tiles(kernel):
    x, _, _ = case((1, 4, 3, 8, 8))  # 4 tiles of 4x4
    n, c, h, w = x.shape
    v = torch.full((36, 4, c), float("nan"))
    sizes = torch.tensor([n, h, w, c, 0, 4 * c], dtype=torch.int64)
    xh = x.permute(0, 2, 3, 1).contiguous()
    assert kernel.wg_input(xh.data_ptr(), v.data_ptr(), sizes.data_ptr(), 1, 3) == OK
    assert torch.isfinite(v[:, 1:3]).all()
    assert torch.isnan(v[:, [0, 3]]).all()
    m = torch.randn(36, 4, 3)
    y = torch.full((n, h, w, 3), float("nan"))
    sizes = torch.tensor([n, h, w, 3, 0, 4 * 3], dtype=torch.int64)
    assert kernel.wg_output(m.data_ptr(), None, y.data_ptr(), sizes.data_ptr(), 2, 3) == OK  # tile (1, 0)
    assert torch.isfinite(y[0, 4:8, 0:4]).all()
    y[0, 4:8, 0:4] = float("nan")
    assert torch.isnan(y).all()


@pytest.mark.parametrize(("begin", "end", "point_stride"), [(-1, 2, 8), (3, 2, 8), (0, 5, 16), (0, 2, 3)])
def test_bad_range_is_an_invalid_argument(kernel, begin, end, point_stride):
    x = torch.randn(1, 8, 8, 2)  # NHWC, 4 tiles, C = 2
    v = torch.full((36, 8, 2), float("nan"))
    sizes = torch.tensor([1, 8, 8, 2, 0, point_stride], dtype=torch.int64)  # a stride below end * C is too small
    assert kernel.wg_input(x.data_ptr(), v.data_ptr(), sizes.data_ptr(), begin, end) == INVALID_ARGUMENT
    valid = torch.tensor([1, 8, 8, 2, 0, 8], dtype=torch.int64)
    assert kernel.wg_input(x.data_ptr(), v.data_ptr(), valid.data_ptr(), 2, 2) == OK  # empty: nothing to do
    assert torch.isnan(v).all()


def test_every_isa_clone_gives_bit_identical_results(tmp_path):
    runnable = runnable_targets()
    if len(runnable) < 2:
        pytest.skip(f"this CPU runs only {runnable} of the kernel's ISA targets")
    kernels = {t: compile_kernel(tmp_path / t, TARGETS[t]) for t in runnable}
    for shape in [(2, 20, 17, 9, 10), (1, 32, 48, 7, 13), (1, 3, 5, 1, 1)]:
        x, weight, bias = case(shape)
        count = shape[0] * tiles(*shape[3:])
        outs = {t: conv(lib, x, weight, bias, [(0, count)]) for t, lib in kernels.items()}
        for target in runnable[1:]:
            assert torch.equal(outs[target], outs["baseline"]), (target, shape)
