"""Micro-benchmark: agingrt::group_norm_act against the torch compositions it replaces, on the same inputs (CUDA
only).

Shapes at batch 8: PADA's GroupNorm(32) + SiLU at the 256^2, 64^2 and 16^2 UNet levels with per-sample [B, C]
scale / shift (docs/models/pada.md section 10 item 3), and AcGAN's InstanceNorm + ReLU (G = C) at 224^2 and 56^2
(docs/models/acgan.md section 9). Competitors:
- "torch fp32": the runners' previous path: fp32 copy, group_norm, addcmul with the folded affine, act, cast back;
- "torch group_norm": ATen's own GroupNorm in x's dtype with a [C] affine, then act (no per-sample affine, so
  not a drop-in; the floor of what one library call does).
Minimum traffic is one read of x and one write of y (the op reads x twice: the statistics pass and the apply).
Run: python -m benchmarks.bench_group_norm_act
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks._cuda_timing import copy_bandwidth_gbs, report, time_cuda_ms
from pyagingrt._extension import require_native
from pyagingrt.training.layers.group_norm_act import group_norm_act as oracle

# (B, C, H, W, groups, act)
SHAPES = [
    (8, 128, 256, 256, 32, "silu"),
    (8, 256, 64, 64, 32, "silu"),
    (8, 512, 16, 16, 32, "silu"),
    (8, 64, 224, 224, 64, "relu"),
    (8, 256, 56, 56, 256, "relu"),
]
ACT = {"none": lambda t: t, "relu": F.relu, "silu": F.silu}


def torch_fp32(x, groups, scale, shift, act):
    h = F.group_norm(x.float(), groups, None, None, 1e-5)  # [B, C, H, W] fp32
    h = torch.addcmul(shift[:, :, None, None], h, scale[:, :, None, None], out=h)
    return ACT[act](h).to(x.dtype)


def main() -> None:
    require_native()
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy_bandwidth_gbs():.0f} GB/s")
    for dtype in (torch.float16, torch.float32):
        for layout in (torch.contiguous_format, torch.channels_last):
            for b, c, h, w, groups, act in SHAPES:
                x = torch.randn(b, c, h, w, device="cuda").to(dtype).contiguous(memory_format=layout)
                scale = 1 + 0.5 * torch.randn(b, c, device="cuda")
                shift = torch.randn(b, c, device="cuda")
                weight, bias = scale[0].to(dtype), shift[0].to(dtype)
                nbytes = 2 * x.numel() * x.element_size()
                torch.testing.assert_close(  # validate before timing
                    torch.ops.agingrt.group_norm_act(x, groups, scale, shift, 1e-5, act).float(),
                    oracle(x.float(), groups, scale, shift, 1e-5, act),
                    rtol=1e-2,
                    atol=1e-2,
                )
                tag = (
                    f"{str(dtype)[6:]} {'nhwc' if layout == torch.channels_last else 'nchw'} {b}x{c}x{h}x{w} G={groups}"
                )
                ms = time_cuda_ms(
                    lambda x=x, g=groups, s=scale, t=shift, a=act: torch.ops.agingrt.group_norm_act(x, g, s, t, 1e-5, a)
                )
                print(report(f"native {tag}", ms, nbytes))
                ms = time_cuda_ms(lambda x=x, g=groups, s=scale, t=shift, a=act: torch_fp32(x, g, s, t, a))
                print(report(f"torch fp32 {tag}", ms, nbytes))
                ms = time_cuda_ms(
                    lambda x=x, g=groups, wt=weight, bs=bias, a=act: ACT[a](F.group_norm(x, g, wt, bs, 1e-5))
                )
                print(report(f"torch group_norm {tag}", ms, nbytes))


if __name__ == "__main__":
    main()
