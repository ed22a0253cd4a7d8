"""Micro-benchmark: agingrt::inv_conv1x1 against torch's conv2d (1x1) on the same inputs (CUDA only).

Shapes are AgeFlow's flow levels at batch 8 (docs/models/ageflow.md section 3.1) and the ICTM's 1152 channels at 4x4.
Minimum traffic is one read of x and one write of y (the weight is small); 2 * C^2 FLOP per pixel.
Run: python -m benchmarks.bench_inv_conv1x1
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks._cuda_timing import copy_bandwidth_gbs, report, time_cuda_ms
from pyagingrt._extension import require_native

SHAPES = [(8, 12, 128, 128), (8, 24, 64, 64), (8, 48, 32, 32), (8, 192, 8, 8), (8, 384, 4, 4), (8, 1152, 4, 4)]


def main() -> None:
    require_native()
    torch.backends.cuda.matmul.allow_tf32 = False  # the flow's fp32 bounds need TF32 off (ageflow.md 8.3)
    torch.backends.cudnn.allow_tf32 = False
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy_bandwidth_gbs():.0f} GB/s")
    for dtype in (torch.float32, torch.float16):
        for b, c, h, w in SHAPES:
            x = torch.randn(b, c, h, w, device="cuda").to(dtype)
            weight = torch.linalg.qr(torch.randn(c, c, device="cuda"))[0]
            bias = torch.randn(c, device="cuda")
            nbytes = 2 * x.numel() * x.element_size()
            flops = 2.0 * c * c * b * h * w
            w_t, b_t = weight.to(dtype)[:, :, None, None], bias.to(dtype)
            torch.testing.assert_close(  # validate before timing
                torch.ops.agingrt.inv_conv1x1(x, weight, bias).float(),
                F.conv2d(x.float(), weight[:, :, None, None], bias),
                rtol=1e-2,
                atol=1e-2,
            )
            tag = f"{str(dtype)[6:]} {b}x{c}x{h}x{w}"
            ms = time_cuda_ms(lambda x=x, weight=weight, bias=bias: torch.ops.agingrt.inv_conv1x1(x, weight, bias))
            print(report(f"native {tag}", ms, nbytes, flops))
            ms = time_cuda_ms(lambda x=x, w_t=w_t, b_t=b_t: F.conv2d(x, w_t, b_t))
            print(report(f"torch conv2d {tag}", ms, nbytes, flops))


if __name__ == "__main__":
    main()
