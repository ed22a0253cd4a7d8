"""Micro-benchmark: the guided-backprop mask ops vs their torch oracles on CUSP/DEX shapes (GPU only).

    python -m benchmarks.bench_guided_backprop_mask [--compile]

Both ops are memory-bound, so each row reports the median time and the achieved GB/s of the bytes the op
must move at least (guided_relu_backward: read g and act, write g_in; guided_backprop_mask: read G, write
M), next to a device-to-device copy measured in the same run. Results are checked against the oracle first.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._cuda_timing import copy_bandwidth_gbs
from benchmarks._cuda_timing import time_cuda_ms as time_ms
from pyagingrt._extension import native_cuda_available
from pyagingrt.training.layers.guided_backprop_mask import guided_relu_backward, structure_mask

# DEX VGG-16 at 224: conv1_2's activation (the largest guided ReLU), and the input gradient reduced by Eq. (1)
RELU_CASES = [(1, 64, 224, 224), (8, 64, 224, 224), (8, 512, 28, 28)]
MASK_CASES = [(1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224)]
KERNEL_SIZE, SIGMA = 29, 4.85  # docs/models/cusp.md section 3.6, paper224


def report(name: str, shape: tuple[int, ...], nbytes: int, rows: list[tuple[str, float]]) -> None:
    for impl, t in rows:
        print(f"{name:22} {shape!s:20} {impl:8} {t:8.3f} {nbytes / t / 1e6:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the oracles")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not native_cuda_available():
        raise SystemExit("needs a CUDA device and pyagingrt._C built with CUDA (AGINGRT_WITH_CUDA=ON)")
    relu_c = torch.compile(guided_relu_backward) if args.compile else None
    mask_c = torch.compile(structure_mask) if args.compile else None
    print(f"{torch.cuda.get_device_name()}; D2D copy {copy_bandwidth_gbs():.0f} GB/s")
    print(f"{'op':22} {'shape':20} {'impl':8} {'ms':>8} {'GB/s':>8}")
    for shape in RELU_CASES:
        bench_relu(shape, relu_c)
    for shape in MASK_CASES:
        bench_mask(shape, mask_c)


def bench_relu(shape: tuple[int, ...], compiled) -> None:
    g = torch.randn(shape, device="cuda", dtype=torch.float16)
    a = torch.randn(shape, device="cuda", dtype=torch.float16)
    assert torch.equal(torch.ops.agingrt.guided_relu_backward(g, a), guided_relu_backward(g, a))
    rows = [
        ("native", time_ms(lambda: torch.ops.agingrt.guided_relu_backward(g, a))),
        ("torch", time_ms(lambda: guided_relu_backward(g, a))),
    ]
    if compiled is not None:
        rows.append(("compile", time_ms(lambda: compiled(g, a))))
    report("guided_relu_backward", shape, 3 * g.numel() * g.element_size(), rows)


def bench_mask(shape: tuple[int, ...], compiled) -> None:
    grad = torch.randn(shape, device="cuda")
    native = torch.ops.agingrt.guided_backprop_mask(grad, KERNEL_SIZE, SIGMA)
    torch.testing.assert_close(native, structure_mask(grad, KERNEL_SIZE, SIGMA), atol=1e-5, rtol=0)
    rows = [
        ("native", time_ms(lambda: torch.ops.agingrt.guided_backprop_mask(grad, KERNEL_SIZE, SIGMA))),
        ("torch", time_ms(lambda: structure_mask(grad, KERNEL_SIZE, SIGMA))),
    ]
    if compiled is not None:
        rows.append(("compile", time_ms(lambda: compiled(grad, KERNEL_SIZE, SIGMA))))
    report("guided_backprop_mask", shape, grad.numel() * 4 + native.numel() * 4, rows)


if __name__ == "__main__":
    main()
