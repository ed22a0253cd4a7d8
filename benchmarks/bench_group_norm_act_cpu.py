"""CPU micro-benchmark: agingrt::group_norm_act against the kernel of another git ref and torch eager, interleaved.

Shapes are the real ones on the CPU engines (NCHW, fp32): AcGAN paper InstanceNorm + ReLU (G = C) at 224^2,
112^2, 56^2 (and batch 4 of the last); PADA GroupNorm(32) + SiLU at 256^2, 32^2 (batch 4) and 16^2.
Competitors, on the same inputs, timed one call each in turn so machine noise hits all alike (medians reported):
- "base": the CPU kernel of ``--base`` (default main), compiled here from ``git archive`` with the project's -O3
  into a small shared library called through ctypes (that kernel is single-threaded);
- "native": torch.ops.agingrt.group_norm_act of this build (at::parallel_for over (n, g));
- "torch": F.instance_norm / F.group_norm with the [C] affine, then F.relu / F.silu.
Napkin maths: the least traffic is one read of x and one write of y, reported as GB/s for native.
Run: python -m benchmarks.bench_group_norm_act_cpu [--threads 2] [--iters 20] [--base main]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pyagingrt._extension import require_native
from pyagingrt.training.layers.group_norm_act import group_norm_act as oracle

ROOT = Path(__file__).resolve().parents[1]
# (label, B, C, H, W, groups, act)
SHAPES = [
    ("acgan IN+relu", 1, 64, 224, 224, 64, "relu"),
    ("acgan IN+relu", 1, 128, 112, 112, 128, "relu"),
    ("acgan IN+relu", 1, 256, 56, 56, 256, "relu"),
    ("acgan IN+relu", 4, 256, 56, 56, 256, "relu"),
    ("pada GN32+silu", 1, 128, 256, 256, 32, "silu"),
    ("pada GN32+silu", 4, 256, 32, 32, 32, "silu"),
    ("pada GN32+silu", 1, 512, 16, 16, 32, "silu"),
]
ACT = {"relu": F.relu, "silu": F.silu}
ACT_CODE = {"none": 0, "relu": 1, "silu": 2}  # GroupNormActivation
SHIM = r"""
#include "kernels/group_norm_act.h"
extern "C" int gn_base(const void* x, const void* scale, const void* shift, void* y, int64_t b, int64_t c, int64_t p,
                       int64_t g, int32_t act, double eps) {
    agingrt::GroupNormActParams q{};
    q.x = x; q.scale = scale; q.shift = shift; q.y = y; q.batch = b; q.channels = c; q.pixels = p; q.groups = g;
    q.scale_stride_b = 0; q.shift_stride_b = 0; q.layout = agingrt::GroupNormLayout::kNCHW;
    q.x_dtype = agingrt::DType::kFloat32; q.coef_dtype = agingrt::DType::kFloat32; q.eps = eps;
    q.act = static_cast<agingrt::GroupNormActivation>(act);
    return static_cast<int>(agingrt::group_norm_act_cpu(q));
}
"""


def build_base(ref: str, out: Path) -> ctypes.CDLL:
    """The fp32 NCHW CPU kernel of git ref `ref` as a ctypes library (its own namespace: no clash with _C)."""
    src = out / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "csrc"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    (out / "shim.cpp").write_text(SHIM)
    lib = out / "libgn_base.so"
    cmd = ["g++", "-std=c++17", "-O3", "-DNDEBUG", "-shared", "-fPIC", "-Dagingrt=agingrt_base", f"-I{src / 'csrc'}"]
    subprocess.run(
        [*cmd, str(out / "shim.cpp"), str(src / "csrc/kernels/cpu/group_norm_act.cpp"), "-o", str(lib)], check=True
    )
    dll = ctypes.CDLL(str(lib))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    dll.gn_base.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_int32, ctypes.c_double]
    dll.gn_base.restype = ctypes.c_int
    return dll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--base", default="main", help="git ref whose CPU kernel is the baseline ('' to skip)")
    args = parser.parse_args()
    require_native()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        base = build_base(args.base, Path(tmp)) if args.base else None
        print(f"threads {torch.get_num_threads()}, base {args.base or '-'}, median of {args.iters} calls (ms)")
        print(f"{'shape':<36} {'base':>8} {'native':>8} {'torch':>8} {'base/nat':>9} {'torch/nat':>9} {'GB/s':>6}")
        for label, b, c, h, w, groups, act in SHAPES:
            x = torch.randn(b, c, h, w) * 2 + 0.5  # [B, C, H, W]
            scale, shift = 1 + 0.5 * torch.randn(c), torch.randn(c)  # [C] each
            y_base = torch.empty_like(x)

            def run_base(x=x, s=scale, t=shift, y=y_base, g=groups, a=act):
                rc = base.gn_base(x.data_ptr(), s.data_ptr(), t.data_ptr(), y.data_ptr(), *x.shape[:2],
                                  x.shape[2] * x.shape[3], g, ACT_CODE[a], 1e-5)  # fmt: skip
                assert rc == 0, f"base kernel returned status {rc}"
                return y

            runs = {
                "native": lambda x=x, g=groups, s=scale, t=shift, a=act: torch.ops.agingrt.group_norm_act(
                    x, g, s, t, 1e-5, a
                ),
                "torch": lambda x=x, g=groups, s=scale, t=shift, a=act: ACT[a](F.group_norm(x, g, s, t, 1e-5)),
            }
            if base is not None:
                runs["base"] = run_base
            want = oracle(x.double(), groups, scale.double(), shift.double(), 1e-5, act)
            for name, fn in runs.items():  # validate before timing (fp32 vs float64 oracle)
                torch.testing.assert_close(fn().double(), want, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
            times = {name: [] for name in runs}
            for i in range(args.warmup + args.iters):
                for name, fn in runs.items():
                    t0 = time.perf_counter()
                    fn()
                    if i >= args.warmup:
                        times[name].append(1e3 * (time.perf_counter() - t0))
            ms = {name: statistics.median(t) for name, t in times.items()}
            base_ms = ms.get("base", float("nan"))
            gbs = 2 * x.numel() * x.element_size() / ms["native"] / 1e6
            tag = f"{label} {b}x{c}x{h}x{w} G={groups}"
            print(
                f"{tag:<36} {base_ms:8.2f} {ms['native']:8.2f} {ms['torch']:8.2f} "
                f"{base_ms / ms['native']:8.2f}x {ms['torch'] / ms['native']:8.2f}x {gbs:6.1f}"
            )


if __name__ == "__main__":
    main()
