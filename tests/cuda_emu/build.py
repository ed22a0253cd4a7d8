"""Build the CUDA-kernel emulator (tests only): rewrite csrc/kernels/cuda/*.cu for the host compiler and link them
with the CPU reference kernels and harness.cpp into one executable. See cuda_emu.h for what is emulated.

    python tests/cuda_emu/build.py OUT_DIR      # prints the executable's path
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"

# kernel<T, ...>\n <<<grid, block, smem, stream>>>(  ->  agingrt_emu::launch(grid, block, smem, stream)(kernel<T, ...>,
_LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^;<>()]*>)?)\s*<<<(.*?)>>>\(", re.DOTALL)
_DYN_SHARED = re.compile(r"extern\s+__shared__\s+(\w+)\s+(\w+)\[\];")


def cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include folder (cuda_fp16.h, cuda_bf16.h, vector_types.h), or None."""
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc is not None:
        dry = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", "/dev/null"], check=False, capture_output=True, text=True
        )
        for line in (dry.stdout + dry.stderr).splitlines():
            if "TOP=" in line:
                top = Path(line.split("TOP=", 1)[1].strip())
                candidates += [top / "targets/x86_64-linux/include", top / "include"]
    candidates.append(Path("/usr/local/cuda/include"))
    return next((c for c in candidates if (c / "cuda_fp16.h").exists()), None)


def translate(source: str) -> str:
    source = _LAUNCH.sub(lambda m: f"agingrt_emu::launch({m.group(2)})({m.group(1)}, ", source)
    source = _DYN_SHARED.sub(
        lambda m: f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>(agingrt_emu::dynamic_shared);", source
    )
    return '#include "cuda_emu.h"\n' + source


def build(out: Path) -> Path:
    cuda_inc = cuda_include_dir()
    if cuda_inc is None:
        raise FileNotFoundError("no CUDA toolkit headers (cuda_fp16.h) found")
    out.mkdir(parents=True, exist_ok=True)
    sources = [HERE / "harness.cpp", *sorted((CSRC / "kernels/cpu").glob("*.cpp"))]
    for cu in sorted((CSRC / "kernels/cuda").glob("*.cu")):
        dst = out / f"emu_{cu.stem}.cpp"
        dst.write_text(translate(cu.read_text()))
        sources.append(dst)
    exe = out / "cuda_emu_harness"
    cmd = ["g++", "-std=c++20", "-O1", "-pthread", f"-I{HERE / 'include'}", f"-I{HERE}", f"-I{CSRC}", f"-I{cuda_inc}"]
    subprocess.run([*cmd, *map(str, sources), "-o", str(exe)], check=True)
    return exe


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
