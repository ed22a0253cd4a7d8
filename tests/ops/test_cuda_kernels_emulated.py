"""Every CUDA kernel in csrc/kernels/cuda, run on the CPU and compared with its CPU reference kernel.

No GPU runs in CI, so tests/cuda_emu compiles the .cu sources unchanged (bar the launch syntax) with the host
compiler and runs each block's threads as fibers with real barriers: wrong index arithmetic, missing
__syncthreads, halo and tail handling, out-of-bounds writes and launch configurations over the driver's limits
all fail here (tests/cuda_emu/harness.cpp lists the cases and states the tolerances). What it cannot show
(timing, the memory model, fused multiply-add rounding, the real driver) needs a GPU.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.cuda_emu import build


def test_cuda_kernels_match_cpu_reference_under_emulation(tmp_path):
    if shutil.which("g++") is None or build.cuda_include_dir() is None:
        pytest.skip("needs g++ and the CUDA toolkit headers (cuda_fp16.h) to compile the kernels for the host")
    exe = build.build(tmp_path)
    result = subprocess.run([str(exe)], check=False, capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert summary.endswith(" 0 failed"), summary
    assert not summary.startswith("0 cases"), summary
