"""Micro-benchmark: agingrt::masked_gaussian_blur against the torch oracle (two depthwise separable blurs per
sample and the blend) on the same inputs (CUDA only).

Shapes are CUSP's blurred skip features (128 channels at 56^2, K = 19; docs/models/cusp.md sections 3.5 and 9) and a
larger map. Minimum traffic is one read of F and M and one write of the output.
Run: python -m benchmarks.bench_masked_gaussian_blur
"""

from __future__ import annotations

import torch

from benchmarks._cuda_timing import copy_bandwidth_gbs, report, time_cuda_ms
from pyagingrt._extension import require_native
from pyagingrt.training.layers.masked_gaussian_blur import masked_gaussian_blur as oracle

SHAPES = [(1, 128, 56, 56, 19), (8, 128, 56, 56, 19), (8, 64, 112, 112, 21)]


def main() -> None:
    require_native()
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy_bandwidth_gbs():.0f} GB/s")
    for dtype in (torch.float32, torch.float16):
        for b, c, h, w, k in SHAPES:
            f = torch.randn(b, c, h, w, device="cuda").to(dtype)
            m = torch.rand(b, 1, h, w, device="cuda").to(dtype)
            sm, sg = torch.full((b,), 2.0, dtype=torch.float64), torch.full((b,), 4.0, dtype=torch.float64)
            nbytes = (2 * f.numel() + m.numel()) * f.element_size()
            torch.testing.assert_close(  # validate before timing
                torch.ops.agingrt.masked_gaussian_blur(f, m, sm, sg, k).float(),
                oracle(f.float(), m.float(), sm, sg, k),
                rtol=1e-2,
                atol=1e-2,
            )
            tag = f"{str(dtype)[6:]} {b}x{c}x{h}x{w} K={k}"
            ms = time_cuda_ms(
                lambda f=f, m=m, sm=sm, sg=sg, k=k: torch.ops.agingrt.masked_gaussian_blur(f, m, sm, sg, k)
            )
            print(report(f"native {tag}", ms, nbytes))
            ms = time_cuda_ms(lambda f=f, m=m, sm=sm, sg=sg, k=k: oracle(f, m, sm, sg, k))
            print(report(f"torch oracle {tag}", ms, nbytes))


if __name__ == "__main__":
    main()
