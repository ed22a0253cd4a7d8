"""masked_gaussian_blur: the compiled op against the float64 oracle,
and CUSP's blur invariants (docs/models/cusp.md section 8 item 3).

Tolerances, per dtype of the features (the reference is the oracle in float64 on the same, already rounded, inputs):
- float64: 1e-12. Same float64 taps; the sums differ only in order (2K terms of a convex combination).
- float32: rtol = atol = 1e-5, the float32 bound of docs/models/cusp.md section 8. The taps are rounded to fp32 once
  (2^-24 relative each) and each output is two K-tap fp32 sums of convex weights, so the error is at most about
  2K * 2^-24 * max|F| (9e-6 for K = 19 and |F| <= 4) and typically sqrt(2K) * 2^-24 * |F| (1e-6).
- float16 / bfloat16: the kernel accumulates in fp32 and rounds once on store: 2^-11 (fp16) or 2^-8 (bf16)
  relative; rtol is twice that (2x the dtype's own error, as flash-attention's tests do), atol 1e-5 near 0.
The graph-safe entry (masked_gaussian_blur_with_taps) runs the sigma entry's own code path on tables from
masked_gaussian_blur_tables: equal bit for bit, no tolerance. Its torch impl (the oracle's grouped convolutions in
float32, or float64) meets the same TOL against the native op: both accumulate the same taps in the same
precision, in another order, and round once.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyagingrt import InputError, NativeExtensionError, has_native
from pyagingrt.ops import masked_gaussian_blur, masked_gaussian_blur_tables, masked_gaussian_blur_with_taps
from pyagingrt.training.layers import masked_gaussian_blur as oracle
from tests.devices import CPU_AND_CUDA

native = pytest.mark.skipif(not has_native(), reason="pyagingrt._C is not built")

TOL = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 2 * 2**-11, "atol": 1e-5},
    torch.bfloat16: {"rtol": 2 * 2**-8, "atol": 1e-5},
}
BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
# (B, C, H, W, K): batch 1 and N, odd sizes, CUSP's K = 19 on a map smaller than the kernel, and K = 41
# (the 16 x 16 tile of the CUDA kernel).
CASES = [(1, 3, 13, 17, 7), (3, 2, 8, 5, 19), (4, 4, 16, 16, 3), (2, 2, 9, 40, 41)]
# Taps against the oracle's gaussian_kernel1d, float64: each tap is one exp and one division by a K-term sum
# (summed in another order), a few roundings of values <= 1; measured <= 1 ulp (2^-52) over K <= 101.
TAPS_ATOL = 4 * 2**-52


def make_inputs(case, dtype, device, mask_dtype=None):
    """Random F, M in [0, 1] and per-sample sigmas covering the special cases: sample 0 has sigma_m = 0,
    sample 1 sigma_m == sigma_g, sample 2 sigma_g = 0, the rest two different blurs."""
    b, c, h, w, k = case
    f = (2 * torch.randn(b, c, h, w, device=device)).to(dtype)
    m = torch.rand(b, 1, h, w, device=device).to(mask_dtype or dtype)
    sigma_m = 0.5 + 2.5 * torch.rand(b, dtype=torch.float64)
    sigma_g = 0.5 + 2.5 * torch.rand(b, dtype=torch.float64)
    sigma_m[0] = 0.0
    if b > 1:
        sigma_m[1] = sigma_g[1]
    if b > 2:
        sigma_g[2] = 0.0
    return f, m, sigma_m, sigma_g, k


def reference(f, m, sigma_m, sigma_g, k):
    return oracle.masked_gaussian_blur(f.double(), m.double(), sigma_m, sigma_g, k)


def dtypes_for(device):
    return [d for d in TOL if not (device == "cuda" and d == torch.float64)]


def make_table_inputs(case, dtype, device):
    """make_inputs plus, for B >= 4, a sample with sigma_m = sigma_g = 0 (the bitwise copy)."""
    f, m, sm, sg, k = make_inputs(case, dtype, device)
    if f.shape[0] > 3:
        sm[3] = sg[3] = 0.0
    taps, flags = masked_gaussian_blur_tables(sm, sg, k, dtype=dtype, device=device, impl="native")
    return f, m, sm, sg, k, taps, flags


@native
class TestMaskedGaussianBlur:
    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("dtype", list(TOL))
    @pytest.mark.parametrize("case", CASES)
    @pytest.mark.parametrize("mask_fp32", [False, True])
    def test_matches_float64_oracle(self, device, dtype, case, mask_fp32):
        if device == "cuda" and dtype == torch.float64:
            pytest.skip("float64 runs on the CPU only (test_cuda_limits_raise)")
        f, m, sm, sg, k = make_inputs(case, dtype, device, torch.float32 if mask_fp32 else None)
        got = masked_gaussian_blur(f, m, sm, sg, k, impl="native")
        assert got.dtype == dtype
        assert got.shape == f.shape
        torch.testing.assert_close(got.double(), reference(f, m, sm, sg, k), **TOL[dtype])

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_non_contiguous_inputs(self, device):
        f, m, sm, sg, k = make_inputs((3, 4, 10, 12, 5), torch.float32, device)
        ft, mt = f.transpose(2, 3), m.transpose(2, 3)  # [3, 4, 12, 10], [3, 1, 12, 10]
        got = masked_gaussian_blur(ft, mt, sm, sg, k, impl="native")
        assert torch.equal(got, masked_gaussian_blur(ft.contiguous(), mt.contiguous(), sm, sg, k, impl="native"))

    @pytest.mark.parametrize("threads", [1, 2])
    def test_cpu_plane_ranges_match_per_sample_calls(self, threads):
        # Planes large enough that the CPU adapter splits the 4 x 5 planes into ranges (a few planes each) that
        # cross sample boundaries; every range must use its own sample's mask, taps and flags: the batch equals
        # the samples run one by one, bit for bit, and the float64 oracle.
        f, m, sm, sg, k = make_inputs((4, 5, 64, 48, 9), torch.float32, "cpu")
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            got = masked_gaussian_blur(f, m, sm, sg, k, impl="native")
            alone = [masked_gaussian_blur(f[i : i + 1], m[i : i + 1], sm[i : i + 1], sg[i : i + 1], k, impl="native")
                     for i in range(4)]  # fmt: skip
        finally:
            torch.set_num_threads(before)
        assert torch.equal(got, torch.cat(alone))
        torch.testing.assert_close(got.double(), reference(f, m, sm, sg, k), **TOL[torch.float32])

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_sigma_zero_is_bitwise_identity_for_any_mask(self, device):
        for dtype in dtypes_for(device):
            f = torch.randn(2, 3, 7, 9, device=device).to(dtype)
            f[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])  # a float sum would change these
            for m in (torch.rand(2, 1, 7, 9, device=device), torch.zeros(2, 1, 7, 9, device=device)):
                got = masked_gaussian_blur(f, m.to(dtype), 0.0, 0.0, 5, impl="native")
                assert torch.equal(got.view(BITS[dtype]), f.view(BITS[dtype]))

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_equal_sigmas_skip_the_blend(self, device):
        # sigma_m == sigma_g: exactly the single blur, the same bits whatever M is.
        f = torch.randn(2, 3, 11, 8, device=device)
        sigma = torch.tensor([1.3, 2.2], dtype=torch.float64)
        a = masked_gaussian_blur(f, torch.rand(2, 1, 11, 8, device=device), sigma, sigma, 9, impl="native")
        b = masked_gaussian_blur(f, torch.rand(2, 1, 11, 8, device=device), sigma, sigma, 9, impl="native")
        assert torch.equal(a, b)
        want = torch.cat([oracle.gaussian_blur(f[i : i + 1].double(), sigma[i].item(), 9) for i in range(2)])
        torch.testing.assert_close(a.double(), want, **TOL[torch.float32])

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_constant_masks_select_one_blur(self, device):
        # M = 0 gives F conv k_g; M = 1 gives F conv k_m (docs/models/cusp.md section 8 item 3).
        f = torch.randn(2, 3, 12, 10, device=device)
        sm, sg = torch.tensor([0.8, 2.5], dtype=torch.float64), torch.tensor([1.7, 0.6], dtype=torch.float64)
        for fill, sigmas in ((0.0, sg), (1.0, sm)):
            m = torch.full((2, 1, 12, 10), fill, device=device)
            got = masked_gaussian_blur(f, m, sm, sg, 7, impl="native")
            want = torch.cat([oracle.gaussian_blur(f[i : i + 1].double(), sigmas[i].item(), 7) for i in range(2)])
            torch.testing.assert_close(got.double(), want, **TOL[torch.float32])

    def test_separable_equals_2d_kernel(self):
        # The op's two 1-D passes equal one zero-padded K x K convolution with g (x) g, within 1e-6
        # (docs/models/cusp.md section 8 item 3); float32 errors here are a few ulps of |F| <= 1.
        c, k, sigma = 3, 19, 2.4
        f = torch.rand(1, c, 21, 23)
        taps = oracle.gaussian_kernel1d(sigma, k)
        k2d = torch.outer(taps, taps).expand(c, 1, k, k)  # [C, 1, K, K]
        want = F.conv2d(f.double(), k2d, padding=(k - 1) // 2, groups=c)
        got = masked_gaussian_blur(f, torch.rand(1, 1, 21, 23), sigma, sigma, k, impl="native")
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    def test_batch_of_n_equals_n_batches_of_one(self, device):
        f, m, sm, sg, k = make_inputs((4, 3, 9, 11, 7), torch.float32, device)
        whole = masked_gaussian_blur(f, m, sm, sg, k, impl="native")
        parts = [
            masked_gaussian_blur(f[i : i + 1], m[i : i + 1], sm[i : i + 1], sg[i : i + 1], k, impl="native")
            for i in range(4)
        ]
        assert torch.equal(whole, torch.cat(parts))

    def test_per_sample_sigmas_are_used(self):
        # The same image twice with different sigmas must give different outputs, each its own blur.
        f = torch.randn(1, 2, 10, 10).expand(2, 2, 10, 10)
        m = torch.rand(1, 1, 10, 10).expand(2, 1, 10, 10)
        sm, sg = torch.tensor([0.7, 2.9]), torch.tensor([1.9, 0.4])
        got = masked_gaussian_blur(f, m, sm, sg, 9, impl="native")
        assert (got[0] - got[1]).abs().max() > 0.1
        torch.testing.assert_close(got.double(), reference(f, m, sm.double(), sg.double(), 9), **TOL[torch.float32])

    def test_scalar_sigmas_broadcast(self):
        f, m = torch.randn(3, 2, 6, 7), torch.rand(3, 1, 6, 7)
        got = masked_gaussian_blur(f, m, 1.5, 0.5, 5, impl="native")
        want = masked_gaussian_blur(f, m, torch.full((3,), 1.5), torch.full((3,), 0.5), 5, impl="native")
        assert torch.equal(got, want)

    def test_does_not_modify_inputs(self):
        f, m, sm, sg, k = make_inputs((3, 2, 6, 6, 5), torch.float32, "cpu")
        before = [t.clone() for t in (f, m, sm, sg)]
        masked_gaussian_blur(f, m, sm, sg, k, impl="native")
        for t, t0 in zip((f, m, sm, sg), before, strict=True):
            assert torch.equal(t, t0)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_opcheck(self, dtype):
        f, m, sm, sg, k = make_inputs((3, 2, 6, 5, 5), dtype, "cpu")
        torch.library.opcheck(torch.ops.agingrt.masked_gaussian_blur.default, (f, m, sm, sg, k))

    @pytest.mark.gpu
    def test_cuda_sigma_on_device_and_limits(self):
        f, m, sm, sg, k = make_inputs((3, 2, 8, 8, 5), torch.float32, "cuda")
        got = masked_gaussian_blur(f, m, sm.cuda(), sg.cuda(), k, impl="native")
        torch.testing.assert_close(got.double(), reference(f, m, sm, sg, k), **TOL[torch.float32])
        with pytest.raises(ValueError, match="kernel_size must be <= 63 on CUDA"):
            masked_gaussian_blur(f, m, sm, sg, 65, impl="native")
        with pytest.raises(ValueError, match="float64 runs on the CPU only"):
            masked_gaussian_blur(f.double(), m.double(), sm, sg, k, impl="native")

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"sigma_m": torch.tensor([1.0, -0.5])}, ValueError, r"sigma_m must be finite and >= 0.*-0.5"),
            ({"sigma_g": torch.tensor([float("nan"), 1.0])}, ValueError, "sigma_g must be finite and >= 0"),
            ({"kernel_size": 4}, ValueError, "kernel_size must be a positive odd number.*got 4"),
            ({"kernel_size": 0}, ValueError, "kernel_size must be a positive odd number"),
            ({"mask": torch.rand(2, 3, 5, 6)}, ValueError, r"mask must be \[B, 1, H, W\] = \[2, 1, 5, 6\]"),
            ({"mask": torch.rand(2, 1, 6, 6)}, ValueError, r"mask must be .*got shape \[2, 1, 6, 6\]"),
            ({"features": torch.rand(3, 5, 6)}, ValueError, r"features must be 4-D \[B, C, H, W\]"),
            ({"sigma_m": torch.ones(3)}, ValueError, r"sigma_m must be \[B\] with one sigma per sample \(B = 2\)"),
            ({"sigma_g": torch.ones(2, dtype=torch.int64)}, TypeError, "sigma_g must be float32 or float64"),
            ({"features": torch.ones(2, 3, 5, 6, dtype=torch.int32)}, TypeError, "features must be float32"),
            ({"mask": torch.rand(2, 1, 5, 6, dtype=torch.float64)}, TypeError, r"mask must have features' dtype"),
            ({"mask": torch.rand(2, 1, 5, 6, device="meta")}, ValueError, "mask must be on the same device"),
        ],
    )
    def test_bad_input_raises_clear_error(self, kwargs, error, message):
        args = {
            "features": torch.rand(2, 3, 5, 6),
            "mask": torch.rand(2, 1, 5, 6),
            "sigma_m": torch.ones(2),
            "sigma_g": torch.ones(2),
            "kernel_size": 5,
        }
        args.update(kwargs)
        with pytest.raises(error, match=message):
            torch.ops.agingrt.masked_gaussian_blur(*args.values())

    # --- the graph-safe entry: tables, then masked_gaussian_blur_with_taps -------------------------------------
    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("dtype", list(TOL))
    @pytest.mark.parametrize("case", CASES)
    def test_with_taps_equals_sigma_entry_bit_for_bit(self, device, dtype, case):
        if device == "cuda" and dtype == torch.float64:
            pytest.skip("float64 runs on the CPU only")
        f, m, sm, sg, k, taps, flags = make_table_inputs(case, dtype, device)
        assert taps.device == f.device
        assert flags.device == f.device
        got = masked_gaussian_blur_with_taps(f, m, taps, flags, impl="native")
        want = masked_gaussian_blur(f, m, sm, sg, k, impl="native")
        assert torch.equal(got.view(BITS[dtype]), want.view(BITS[dtype]))

    @pytest.mark.parametrize("kernel_size", [1, 7, 19, 63, 101])
    def test_tables_match_the_oracle(self, kernel_size):
        sm = torch.tensor([0.0, 0.4, 2.24, 5.0, 9.5, 3.0], dtype=torch.float64)
        sg = torch.tensor([1.5, 0.4, 0.0, 0.0, 9.5, 30.0], dtype=torch.float64)
        taps, flags = masked_gaussian_blur_tables(sm, sg, kernel_size, dtype=torch.float64, impl="native")
        assert taps.shape == (6, 2, kernel_size)
        assert taps.dtype == torch.float64
        for b in range(6):
            want = torch.stack(
                [
                    oracle.gaussian_kernel1d(sm[b].item(), kernel_size),
                    oracle.gaussian_kernel1d(sg[b].item(), kernel_size),
                ]
            )
            torch.testing.assert_close(taps[b], want, atol=TAPS_ATOL, rtol=0)
        assert flags.dtype == torch.int32
        assert flags.tolist() == [1, 4, 2, 2, 4, 0]  # sigma_m = 0 -> 1, sigma_g = 0 -> 2, sigma_m == sigma_g -> 4
        ref_taps, ref_flags = masked_gaussian_blur_tables(sm, sg, kernel_size, dtype=torch.float64, impl="torch")
        torch.testing.assert_close(taps, ref_taps, atol=TAPS_ATOL, rtol=0)
        assert torch.equal(flags, ref_flags)
        # every other features dtype takes the same taps rounded once to float32
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            taps32, flags32 = masked_gaussian_blur_tables(sm, sg, kernel_size, dtype=dtype, impl="native")
            assert torch.equal(taps32, taps.float())
            assert torch.equal(flags32, flags)

    @pytest.mark.parametrize("device", CPU_AND_CUDA)
    @pytest.mark.parametrize("dtype", list(TOL))
    def test_with_taps_torch_impl_matches_native(self, device, dtype):
        if device == "cuda" and dtype == torch.float64:
            pytest.skip("float64 runs on the CPU only")
        f, m, _, _, _, taps, flags = make_table_inputs((5, 3, 11, 9, 7), dtype, device)
        got = masked_gaussian_blur_with_taps(f, m, taps, flags, impl="torch")
        want = masked_gaussian_blur_with_taps(f, m, taps, flags, impl="native")
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want.double(), **TOL[dtype])
        assert torch.equal(got[3], f[3])  # sample 3 has both sigmas 0: the flags make it an exact copy

    def test_with_taps_auto_differentiates_the_torch_impl(self):
        # float64: the torch impl and the oracle run the same convolutions on the same taps (1e-12, as TOL)
        f, m, sm, sg, k, taps, flags = make_table_inputs((4, 2, 6, 6, 5), torch.float64, "cpu")
        f.requires_grad_(True)
        m.requires_grad_(True)
        upstream = torch.randn(f.shape, dtype=torch.float64)
        got = torch.autograd.grad(masked_gaussian_blur_with_taps(f, m, taps, flags), (f, m), upstream)
        want = torch.autograd.grad(oracle.masked_gaussian_blur(f, m, sm, sg, k), (f, m), upstream)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, **TOL[torch.float64])

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_with_taps_opcheck(self, dtype):
        f, m, _, _, _, taps, flags = make_table_inputs((4, 2, 6, 5, 5), dtype, "cpu")
        torch.library.opcheck(torch.ops.agingrt.masked_gaussian_blur_with_taps.default, (f, m, taps, flags))

    def test_tables_opcheck(self):
        sm, sg = torch.tensor([0.0, 1.5, 2.0]), torch.tensor([1.0, 1.5, 0.0])
        torch.library.opcheck(torch.ops.agingrt.masked_gaussian_blur_tables.default, (sm, sg, 5, torch.float16))

    def test_meta_impls_give_the_shapes(self):
        f = torch.empty(3, 4, 10, 12, device="meta", dtype=torch.float16)
        m = torch.empty(3, 1, 10, 12, device="meta")
        taps, flags = torch.ops.agingrt.masked_gaussian_blur_tables(
            torch.empty(3, device="meta"), torch.empty(3, device="meta"), 9, torch.float16
        )
        assert (taps.shape, taps.dtype, taps.device.type) == ((3, 2, 9), torch.float32, "meta")
        assert (flags.shape, flags.dtype) == ((3,), torch.int32)
        out = torch.ops.agingrt.masked_gaussian_blur_with_taps(f, m, taps, flags)
        assert (out.shape, out.dtype, out.device.type) == ((3, 4, 10, 12), torch.float16, "meta")

    @pytest.mark.parametrize(
        ("change", "error", "message"),
        [
            (
                {"taps": torch.rand(2, 5)},
                ValueError,
                r"taps must be \[B, 2, K\] = \[2, 2, K\] with K odd.*got shape \[2, 5\]",
            ),
            ({"taps": torch.rand(3, 2, 5)}, ValueError, r"taps must be \[B, 2, K\].*got shape \[3, 2, 5\]"),
            (
                {"taps": torch.rand(2, 2, 4)},
                ValueError,
                r"taps must be \[B, 2, K\] .* with K odd.*got shape \[2, 2, 4\]",
            ),
            (
                {"taps": torch.rand(2, 2, 5, dtype=torch.float64)},
                TypeError,
                "taps must be float32.*features are Float, got taps Double",
            ),
            ({"taps": torch.rand(2, 2, 5, device="meta")}, ValueError, "taps must be on the same device as features"),
            ({"flags": torch.zeros(3, dtype=torch.int32)}, ValueError, r"flags must be \[B\] = \[2\]"),
            ({"flags": torch.zeros(2, dtype=torch.int64)}, TypeError, "flags must be int32, got Long"),
            ({"flags": torch.zeros(2, dtype=torch.int32, device="meta")}, ValueError, "flags must be on the same"),
            ({"mask": torch.rand(2, 1, 5, 5)}, ValueError, r"mask must be \[B, 1, H, W\] = \[2, 1, 5, 6\]"),
            ({"features": torch.rand(2, 5, 6)}, ValueError, r"features must be 4-D \[B, C, H, W\]"),
        ],
    )
    def test_with_taps_bad_tables_raise_clear_error(self, change, error, message):
        args = {
            "features": torch.rand(2, 3, 5, 6),
            "mask": torch.rand(2, 1, 5, 6),
            "taps": torch.rand(2, 2, 5),
            "flags": torch.zeros(2, dtype=torch.int32),
        }
        args.update(change)
        with pytest.raises(error, match=f"masked_gaussian_blur_with_taps: {message}"):
            torch.ops.agingrt.masked_gaussian_blur_with_taps(*args.values())

    def test_with_taps_float64_features_need_float64_taps(self):
        f, m = torch.rand(1, 1, 4, 4, dtype=torch.float64), torch.rand(1, 1, 4, 4, dtype=torch.float64)
        with pytest.raises(
            TypeError,
            match=r"taps must be float32, or float64 for float64 features.*features are Double, got taps Float",
        ):
            torch.ops.agingrt.masked_gaussian_blur_with_taps(
                f, m, torch.rand(1, 2, 3), torch.zeros(1, dtype=torch.int32)
            )

    @pytest.mark.parametrize(
        ("sigma_m", "sigma_g", "kernel_size", "dtype", "error", "message"),
        [
            (
                torch.ones(2),
                torch.ones(3),
                5,
                torch.float32,
                ValueError,
                r"sigma_g must be \[B\] .*\(B = 2, the length of sigma_m\)",
            ),
            (torch.ones(2, 1), torch.ones(2), 5, torch.float32, ValueError, r"sigma_m must be 1-D \[B\]"),
            (torch.tensor([1.0, -2.0]), torch.ones(2), 5, torch.float32, ValueError, "sigma_m must be finite and >= 0"),
            (torch.ones(2), torch.tensor([1.0, float("inf")]), 5, torch.float32, ValueError, "sigma_g must be finite"),
            (torch.ones(2), torch.ones(2), 6, torch.float32, ValueError, "kernel_size must be a positive odd number"),
            (torch.ones(2, dtype=torch.int32), torch.ones(2), 5, torch.float32, TypeError, "sigma_m must be float32"),
            (torch.ones(2), torch.ones(2), 5, torch.int32, TypeError, "dtype .* must be float32, float64"),
        ],
    )
    def test_tables_bad_input_raises_clear_error(self, sigma_m, sigma_g, kernel_size, dtype, error, message):
        with pytest.raises(error, match=f"masked_gaussian_blur_tables: {message}"):
            torch.ops.agingrt.masked_gaussian_blur_tables(sigma_m, sigma_g, kernel_size, dtype)

    @pytest.mark.parametrize("impl", ["native", "torch"])
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"sigma_g": [1.0, 2.0, 3.0]}, r"one value per sample each, got 2 and 3"),
            ({"sigma_m": [1.0, -1.0]}, "sigmas must be finite and >= 0"),
            ({"kernel_size": 4}, "kernel_size must be a positive odd integer"),
            ({"dtype": torch.int64}, "dtype must be the features' float dtype"),
        ],
    )
    def test_tables_wrapper_checks_first(self, impl, kwargs, message):
        args = {"sigma_m": [1.0, 2.0], "sigma_g": [0.0, 2.0], "kernel_size": 5}
        args.update(kwargs)
        with pytest.raises(InputError, match=message):
            masked_gaussian_blur_tables(**args, impl=impl)

    @pytest.mark.gpu
    def test_with_taps_cuda_limits(self):
        f, m, _, _, _, taps, flags = make_table_inputs((2, 2, 8, 8, 5), torch.float32, "cuda")
        big, big_flags = masked_gaussian_blur_tables([1.0, 2.0], [0.0, 1.0], 65, device="cuda")
        with pytest.raises(ValueError, match="kernel_size must be <= 63 on CUDA"):
            masked_gaussian_blur_with_taps(f, m, big, big_flags, impl="native")
        with pytest.raises(ValueError, match="float64 runs on the CPU only"):
            masked_gaussian_blur_with_taps(f.double(), m.double(), taps.double(), flags, impl="native")

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_with_taps_replays_in_a_cuda_graph(self, dtype):
        """Capture the op over static buffers, copy new tables (and features) in, replay: equals an eager run."""
        f, m, _, _, k, taps, flags = make_table_inputs((4, 3, 20, 24, 9), dtype, "cuda")
        static = {"f": f.clone(), "m": m.clone(), "taps": taps.clone(), "flags": flags.clone()}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up outside the capture, as torch.cuda.graphs recommends
            masked_gaussian_blur_with_taps(*static.values(), impl="native")
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = masked_gaussian_blur_with_taps(*static.values(), impl="native")
        for seed in range(3):
            gen = torch.Generator().manual_seed(seed)
            sm = 3 * torch.rand(4, generator=gen, dtype=torch.float64)
            sg = 3 * torch.rand(4, generator=gen, dtype=torch.float64)
            sm[seed] = 0.0  # move the special cases around between replays
            sg[(seed + 1) % 4] = sm[(seed + 1) % 4]
            new_taps, new_flags = masked_gaussian_blur_tables(sm, sg, k, dtype=dtype, device="cuda")
            new_f = torch.randn(f.shape, generator=gen).to("cuda", dtype)
            for name, value in (("f", new_f), ("taps", new_taps), ("flags", new_flags)):
                static[name].copy_(value)
            graph.replay()
            eager = masked_gaussian_blur(new_f, m, sm, sg, k, impl="native")
            assert torch.equal(out, eager)

    def test_wrapper_rejects_wrong_sigma_count(self):
        with pytest.raises(InputError, match=r"sigma_m must be a scalar or have one value per sample \(2\), got 3"):
            masked_gaussian_blur(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.ones(3), 1.0, 3)

    def test_auto_falls_back_to_the_oracle_for_gradients(self):
        f = torch.randn(2, 2, 6, 6, requires_grad=True)
        out = masked_gaussian_blur(f, torch.rand(2, 1, 6, 6), 1.0, 2.0, 5)
        out.sum().backward()
        assert f.grad is not None


def test_torch_impl_is_the_oracle():
    f, m, sm, sg, k = make_inputs((3, 2, 7, 6, 5), torch.float32, "cpu")
    assert torch.equal(
        masked_gaussian_blur(f, m, sm, sg, k, impl="torch"), oracle.masked_gaussian_blur(f, m, sm, sg, k)
    )


def test_native_without_extension_raises(monkeypatch):
    import pyagingrt._extension as ext

    monkeypatch.setattr(ext, "_load", lambda: (None, "pyagingrt._C could not be imported (test)"))
    with pytest.raises(NativeExtensionError, match=r"pip install --no-build-isolation -e \."):
        masked_gaussian_blur(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), 1.0, 1.0, 3, impl="native")


def test_graph_safe_entry_without_extension(monkeypatch):
    """Without _C: impl="native" raises; impl="auto" builds the tables from the oracle's taps and blurs with the
    oracle's maths, matching the oracle itself (float32 TOL: the same fp32 taps, summed in another order)."""
    import pyagingrt._extension as ext

    monkeypatch.setattr(ext, "_load", lambda: (None, "pyagingrt._C could not be imported (test)"))
    f, m, sm, sg, k = make_inputs((4, 3, 9, 11, 7), torch.float32, "cpu")
    sm[3] = sg[3] = 0.0
    with pytest.raises(NativeExtensionError, match=r"pip install --no-build-isolation -e \."):
        masked_gaussian_blur_tables(sm, sg, k, impl="native")
    taps, flags = masked_gaussian_blur_tables(sm, sg, k)
    with pytest.raises(NativeExtensionError, match=r"pip install --no-build-isolation -e \."):
        masked_gaussian_blur_with_taps(f, m, taps, flags, impl="native")
    got = masked_gaussian_blur_with_taps(f, m, taps, flags)
    torch.testing.assert_close(got, oracle.masked_gaussian_blur(f, m, sm, sg, k), **TOL[torch.float32])
    assert torch.equal(got[3], f[3])  # both sigmas 0: the flags keep the torch impl's identity exact too
