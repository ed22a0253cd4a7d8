"""Micro-benchmark: torch.ops.agingrt.modulated_conv2d vs the same maths in torch, on CUSP decoder shapes (GPU only).

    python -m benchmarks.bench_modulated_conv2d [--dtype float16] [--compile]

The op is compute-bound (one implicit-GEMM conv), so each row reports the median time and TFLOP/s
(2 * B * O * I * kh * kw * H_in * W_in for up=2, counted on the input grid as docs/models/cusp.md section 3.7
does; on the output grid for up=1). The custom kernels are the x*s prologue and y*d epilogue: "overhead"
is native minus the bare ATen conv on the same inputs, and "epi GB/s" the bytes those two passes move
(read + write of x and of y) over that overhead, next to a device-to-device copy measured in the same run.
Results are checked against the torch composition before timing.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks._cuda_timing import copy_bandwidth_gbs
from benchmarks._cuda_timing import time_cuda_ms as time_ms
from pyagingrt._extension import native_cuda_available
from pyagingrt.training.layers.modulated_conv2d import modulated_conv2d as torch_modconv

# (name, batch, in_ch, out_ch, size_in, up, padding): CUSP paper224 decoder layers (docs/models/cusp.md section 3.4)
CASES = [
    ("b56 conv1", 1, 512, 512, 56, 1, 1),
    ("b56 conv1", 8, 512, 512, 56, 1, 1),
    ("b112 conv0 (up)", 8, 640, 292, 56, 2, 0),
    ("b224 conv1", 8, 146, 146, 224, 1, 1),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the torch composition")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not native_cuda_available():
        raise SystemExit("needs a CUDA device and pyagingrt._C built with CUDA (AGINGRT_WITH_CUDA=ON)")
    dtype = getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = True
    compiled = torch.compile(torch_modconv) if args.compile else None
    print(f"{torch.cuda.get_device_name()}  {args.dtype}, channels_last; D2D copy {copy_bandwidth_gbs():.0f} GB/s")
    print(f"{'layer':16} {'B':>2} {'impl':8} {'ms':>8} {'TFLOP/s':>8} {'overhead ms':>11} {'epi GB/s':>8}")
    for case in CASES:
        run_case(*case, dtype=dtype, compiled=compiled)


def run_case(
    name: str, batch: int, cin: int, cout: int, size: int, up: int, padding: int, *, dtype: torch.dtype, compiled
) -> None:
    """Validate, then time one decoder layer: native op, torch composition, bare conv (and torch.compile)."""
    x = torch.randn(batch, cin, size, size, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3, device="cuda", dtype=dtype) / (cin * 9) ** 0.5
    s = 1 + 0.1 * torch.randn(batch, cin, device="cuda")

    def native():
        return torch.ops.agingrt.modulated_conv2d(x, w, s, True, padding, up)

    def reference(fn=torch_modconv):
        return fn(x, w, s.to(dtype), True, padding, up)

    def bare():
        return F.conv2d(x, w, padding=padding) if up == 1 else F.conv_transpose2d(x, w.transpose(0, 1), stride=2)

    y = native()
    torch.testing.assert_close(y.float(), reference().float(), atol=5e-2, rtol=5e-2)  # validate before timing
    grid = size * size if up == 2 else y.shape[2] * y.shape[3]
    flop = 2 * batch * cout * cin * 9 * grid
    t_bare = time_ms(bare)
    rows = [("native", time_ms(native)), ("torch", time_ms(reference)), ("conv", t_bare)]
    if compiled is not None:
        rows.append(("compile", time_ms(lambda: reference(compiled))))
    epi_bytes = 2 * (x.numel() + y.numel()) * x.element_size()
    for impl, t in rows:
        over = t - t_bare
        gbs = f"{epi_bytes / over / 1e6:8.0f}" if impl == "native" and over > 0 else f"{'':8}"
        print(f"{name:16} {batch:2d} {impl:8} {t:8.3f} {flop / t / 1e9:8.1f} {over:11.3f} {gbs}")


if __name__ == "__main__":
    main()
