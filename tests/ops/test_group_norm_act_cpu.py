"""group_norm_act's CPU kernel: its work-range entry, thread-count independence and its vectorised code paths.

The work-range entry ``group_norm_act_cpu(params, begin, end)`` is torch-free, so it is compiled here from
csrc/kernels/cpu/group_norm_act.cpp with the project's -O3 into a small library called through ctypes (as
tests/cuda_emu compiles the CUDA kernels for the host). Results split across ranges or threads must be
bit-identical (each (n, g) item is computed whole by one call, in a fixed order), so those tests use torch.equal.
Tolerances elsewhere are test_group_norm_act.py's (float64 oracle, TOL per dtype plus the large-mean budget).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

from pyagingrt import has_native
from pyagingrt.ops import group_norm_act
from tests.ops.cpu_kernels import INVALID_ARGUMENT, OK, TARGETS, compile_cpu_kernel, runnable_targets
from tests.ops.test_group_norm_act import TOL, make_coefs, make_x, mean_budget, reference

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}  # common/dtype.h
ACT_CODE = {"none": 0, "relu": 1, "silu": 2}  # GroupNormActivation
SHIM = r"""
#include "kernels/group_norm_act.h"
extern "C" int gn_range(const void* x, const void* scale, const void* shift, void* y, const int64_t* sizes,
                        int32_t nhwc, int32_t x_dtype, int32_t coef_dtype, int32_t act, int64_t begin, int64_t end) {
    agingrt::GroupNormActParams p{};
    p.x = x; p.scale = scale; p.shift = shift; p.y = y;
    p.batch = sizes[0]; p.channels = sizes[1]; p.pixels = sizes[2]; p.groups = sizes[3];
    p.scale_stride_b = sizes[4]; p.shift_stride_b = sizes[5];
    p.layout = nhwc ? agingrt::GroupNormLayout::kNHWC : agingrt::GroupNormLayout::kNCHW;
    p.x_dtype = static_cast<agingrt::DType>(x_dtype); p.coef_dtype = static_cast<agingrt::DType>(coef_dtype);
    p.eps = 1e-5; p.act = static_cast<agingrt::GroupNormActivation>(act);
    return static_cast<int>(agingrt::group_norm_act_cpu(p, begin, end));
}
"""

native = pytest.mark.skipif(not has_native(), reason="pyagingrt._C is not built")


def compile_kernel(out: Path, clones: str | None = None) -> ctypes.CDLL:
    """The CPU kernel with its work-range entry as `gn_range`; `clones` as in :func:`compile_cpu_kernel`."""
    dll = compile_cpu_kernel(out, SHIM, "group_norm_act.cpp", clones)
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    dll.gn_range.argtypes = [ptr, ptr, ptr, ptr, ptr, i32, i32, i32, i32, i64, i64]
    dll.gn_range.restype = ctypes.c_int
    return dll


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> ctypes.CDLL:
    return compile_kernel(tmp_path_factory.mktemp("gn_cpu"))


def run_range(kernel, x, groups, scale, shift, act, y, begin, end) -> int:
    """Items [begin, end) of group_norm_act into y (x, y dense NCHW or channels_last; scale, shift [B, C])."""
    b, c, h, w = x.shape
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    sizes = torch.tensor([b, c, h * w, groups, c, c], dtype=torch.int64)
    return kernel.gn_range(
        x.data_ptr(), scale.data_ptr(), shift.data_ptr(), y.data_ptr(), sizes.data_ptr(),
        int(nhwc), DTYPE_CODE[x.dtype], DTYPE_CODE[scale.dtype], ACT_CODE[act], begin, end,
    )  # fmt: skip


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_range_pieces_equal_the_whole(kernel, layout, dtype):
    shape, groups = (3, 12, 5, 7), 4  # 12 (n, g) items
    x = make_x(shape, dtype, "cpu", layout, mean=2.0)
    scale, shift = make_coefs(shape, dtype, "cpu")
    whole = torch.full_like(x, float("nan"))
    assert run_range(kernel, x, groups, scale, shift, "silu", whole, 0, 12) == OK
    torch.testing.assert_close(whole.double(), reference(x, groups, scale, shift, 1e-5, "silu"), **TOL[dtype])
    pieces = torch.full_like(x, float("nan"))
    for begin, end in [(0, 1), (1, 5), (5, 11), (11, 12)]:
        assert run_range(kernel, x, groups, scale, shift, "silu", pieces, begin, end) == OK
    assert torch.equal(pieces, whole)


def test_a_range_writes_only_its_items(kernel):
    shape, groups = (2, 8, 3, 4), 4  # item w = n * G + g covers channels [2g, 2g + 2) of sample n
    x = make_x(shape, torch.float32, "cpu", "contiguous")
    scale, shift = make_coefs(shape, torch.float32, "cpu")
    y = torch.full_like(x, float("nan"))
    assert run_range(kernel, x, groups, scale, shift, "relu", y, 3, 6) == OK  # (0, 3), (1, 0), (1, 1)
    written = torch.zeros(2, 8, dtype=torch.bool)
    written[0, 6:8] = written[1, 0:4] = True
    assert torch.isfinite(y[written]).all()
    assert torch.isnan(y[~written]).all()


@pytest.mark.parametrize(("begin", "end"), [(-1, 2), (3, 2), (0, 9)])
def test_bad_range_is_an_invalid_argument(kernel, begin, end):
    shape, groups = (2, 8, 3, 4), 4  # 8 items
    x = make_x(shape, torch.float32, "cpu", "contiguous")
    scale, shift = make_coefs(shape, torch.float32, "cpu")
    y = torch.full_like(x, float("nan"))
    assert run_range(kernel, x, groups, scale, shift, "none", y, begin, end) == INVALID_ARGUMENT
    assert run_range(kernel, x, groups, scale, shift, "none", y, 4, 4) == OK  # empty: nothing to do
    assert torch.isnan(y).all()


@native
@pytest.mark.parametrize(
    ("shape", "groups", "dtype", "layout", "act"),
    [
        ((2, 64, 24, 24), 32, torch.float32, "contiguous", "silu"),  # 64 items of 1,152 values: split in two
        ((1, 64, 40, 40), 64, torch.float32, "contiguous", "relu"),  # InstanceNorm
        ((2, 64, 24, 24), 32, torch.float32, "channels_last", "silu"),  # NHWC: a range's groups run together
        ((1, 64, 40, 40), 64, torch.float32, "channels_last", "relu"),
        ((2, 64, 24, 24), 16, torch.bfloat16, "contiguous", "none"),
    ],
)
def test_any_thread_count_gives_bit_identical_results(shape, groups, dtype, layout, act):
    x = make_x(shape, dtype, "cpu", layout, mean=1.0)
    scale, shift = make_coefs(shape, dtype, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = group_norm_act(x, groups, scale, shift, 1e-5, act, impl="native")
        torch.set_num_threads(2)
        two = group_norm_act(x, groups, scale, shift, 1e-5, act, impl="native")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((2, 4, 1, 1), 4),  # P = 1: no whole vector or block, only tails (and zero variance)
        ((2, 6, 3, 5), 3),  # P = 15: below one 16-lane group
        ((1, 4, 3, 43), 2),  # P = 129: one 128-value block plus a tail of 1
        ((1, 2, 1153, 1), 1),  # P = 1153: past the 1,024-value fp16 / bf16 chunk, with a partial chunk
        ((1, 40, 2, 19), 2),  # NHWC: 20 channels per group (not a vector multiple), 38 pixels (2 blocks + 6)
    ],
)
def test_lengths_off_the_vector_width_match_the_oracle(dtype, layout, shape, groups):
    x = make_x(shape, dtype, "cpu", layout, mean=3.0, std=2.0)
    scale, shift = make_coefs(shape, dtype, "cpu")
    y = group_norm_act(x, groups, scale, shift, 1e-5, "silu", impl="native")
    want = reference(x, groups, scale, shift, 1e-5, "silu")
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), want, rtol=tol["rtol"], atol=tol["atol"] + mean_budget(x, groups, scale))


@native
def test_silu_exp_path_over_its_whole_range():
    # Constant rows have x - mu = 0 exactly, so y = silu(shift): the fp32 SiLU (polynomial exp) on chosen values,
    # from where exp(-v) is clamped (|v| >= 87) through 0. rtol 1e-6 = ~8 fp32 ulps: the polynomial's 2e-7
    # relative error plus the roundings of 2^k * p, 1 + e and the division. Beyond |v| = 87 the clamp leaves an
    # absolute error below 1e-35 (silu(-87) = -1.4e-36), hence the atol.
    c = 512
    shift = torch.linspace(-120.0, 120.0, c)  # [C]
    x = torch.randn(1, c, 1, 1).expand(1, c, 4, 5).contiguous()  # [1, C, 4, 5], constant per channel
    y = group_norm_act(x, c, torch.rand(c) + 0.5, shift, 1e-5, "silu", impl="native")
    want = torch.nn.functional.silu(shift.double())[None, :, None, None].expand(1, c, 4, 5)
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=1e-35)


@native
@pytest.mark.parametrize("groups", [4, 16])
def test_an_outlying_first_value_costs_no_precision(groups):
    # The first pass sums x - x_0 with x_0 the row's first value; an outlier there only shifts that pass, the
    # second pass is centred on the mean.
    shape = (2, 16, 9, 11)
    x = make_x(shape, torch.float32, "cpu", "contiguous", mean=5.0)
    x[:, :, 0, 0] = 3e4
    scale, shift = make_coefs(shape, torch.float32, "cpu")
    y = group_norm_act(x, groups, scale, shift, 1e-5, "none", impl="native")
    want = reference(x, groups, scale, shift, 1e-5, "none")
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 + mean_budget(x, groups, scale))


def test_every_isa_clone_gives_bit_identical_results(tmp_path):
    # No FMA contraction and explicit lanes: the AVX-512, AVX2 and baseline builds must agree bit for bit.
    runnable = runnable_targets()
    if len(runnable) < 2:
        pytest.skip(f"this CPU runs only {runnable} of the kernel's ISA targets")
    kernels = {t: compile_kernel(tmp_path / t, TARGETS[t]) for t in runnable}
    cases = [
        ((2, 8, 9, 37), 4, torch.float32, "contiguous"),  # P = 333: blocks, vector bodies and tails
        ((2, 8, 9, 37), 4, torch.float32, "channels_last"),  # NHWC, 2 channels per group
        ((1, 48, 5, 7), 2, torch.float32, "channels_last"),  # NHWC, 24 channels per group
        ((1, 4, 3, 400), 4, torch.bfloat16, "contiguous"),  # P = 1,200: a partial second bf16 chunk
        ((2, 8, 9, 37), 8, torch.float64, "contiguous"),
    ]
    for shape, groups, dtype, layout in cases:
        x = make_x(shape, dtype, "cpu", layout, mean=2.0, std=3.0)
        scale, shift = make_coefs(shape, dtype, "cpu")
        items = shape[0] * groups
        for act in ACT_CODE:
            outs = {}
            for target, lib in kernels.items():
                outs[target] = torch.full_like(x, float("nan"))
                assert run_range(lib, x, groups, scale, shift, act, outs[target], 0, items) == OK
            for target in runnable[1:]:
                assert torch.equal(outs[target], outs["baseline"]), (target, shape, dtype, layout, act)
