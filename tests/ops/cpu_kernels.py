"""Compile a torch-free CPU kernel from csrc/kernels/cpu with a small C shim into a library called through ctypes
(as tests/cuda_emu compiles the CUDA kernels for the host): its work-range entries and its ISA clones can then be
tested one at a time, which the torch op (one range per thread, the CPU's best clone) does not expose."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
OK, INVALID_ARGUMENT = 0, 1  # common/status.h

# The ISA targets the kernels' hot loops are cloned for (AGINGRT_CPU_CLONES in their sources), one at a time.
TARGETS = {
    "baseline": "",
    "avx2": '__attribute__((target("avx2"), optimize("fp-contract=off")))',
    "avx512f": '__attribute__((target("avx512f"), optimize("fp-contract=off")))',
}


def compile_cpu_kernel(out: Path, shim: str, source: str, clones: str | None = None) -> ctypes.CDLL:
    """``csrc/kernels/cpu/<source>`` plus ``shim`` (C++ defining extern "C" entries) with the project's -O3, in its
    own namespace (no clash with pyagingrt._C); ``clones`` replaces the source's AGINGRT_CPU_CLONES (None: keep the
    runtime-dispatched clones)."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to compile the torch-free CPU kernel")
    out.mkdir(parents=True, exist_ok=True)
    (out / "shim.cpp").write_text(shim)
    lib = out / "libkernel.so"
    cmd = ["g++", "-std=c++17", "-O3", "-shared", "-fPIC", "-Dagingrt=agingrt_test", f"-I{CSRC}"]
    if clones is not None:
        cmd.append(f"-DAGINGRT_CPU_CLONES={clones}")
    subprocess.run([*cmd, str(out / "shim.cpp"), str(CSRC / "kernels/cpu" / source), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def runnable_targets() -> list[str]:
    """The clone targets this CPU can run, baseline first."""
    return [t for t in TARGETS if t == "baseline" or t in cpu_flags()]
