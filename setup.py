"""Thin setuptools driver for CMake (pybind/cmake_example style): CMakeLists.txt decides the build.

Build against the torch that is already installed (never a second torch in a build environment):

    pip install torch==2.13.0            # or your CUDA torch
    pip install --no-build-isolation -e .

Environment switches:
    AGINGRT_WITH_CUDA=AUTO|ON|OFF     build CUDA kernels (AUTO: when torch is a CUDA build and nvcc exists)
    CMAKE_CUDA_ARCHITECTURES="80;90"  GPU architectures (default 75;80;90)
    CMAKE_ARGS="..."                  extra arguments for the CMake configure step
    CMAKE_BUILD_PARALLEL_LEVEL=N      parallel compile jobs
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / "pyagingrt" / "_version.py").read_text()
    match = re.search(r'__version__ = "([^"]+)"', text)
    if match is None:
        raise RuntimeError("pyagingrt/_version.py has no __version__")
    return match.group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        # A persistent build folder keeps rebuilds incremental (a .cpp edit recompiles one file).
        tag = f"{sys.implementation.cache_tag}-{sys.platform}"
        build_temp = Path(os.environ.get("AGINGRT_BUILD_DIR", ROOT / "build" / tag))
        build_temp.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DAGINGRT_VERSION={read_version()}",
            f"-DAGINGRT_WITH_CUDA={os.environ.get('AGINGRT_WITH_CUDA', 'AUTO')}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if "CMAKE_CUDA_ARCHITECTURES" in os.environ:
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['CMAKE_CUDA_ARCHITECTURES']}")
        args += [a for a in os.environ.get("CMAKE_ARGS", "").split() if a]
        try:
            import ninja  # noqa: F401

            args.append("-GNinja")
        except ImportError:
            pass
        if "CMAKE_BUILD_PARALLEL_LEVEL" not in os.environ:
            os.environ["CMAKE_BUILD_PARALLEL_LEVEL"] = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_temp), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_temp)], check=True)


# training/ and export/ live at the top of the repository but install inside the package.
PACKAGE_DIRS = {"pyagingrt": "pyagingrt", "pyagingrt.training": "training", "pyagingrt.export": "export"}


def find_packages_mapped() -> list[str]:
    packages = []
    for name, folder in PACKAGE_DIRS.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            packages.append(".".join([name, *rel.parts]))
    return packages


setup(
    version=read_version(),
    packages=find_packages_mapped(),
    package_dir=PACKAGE_DIRS,
    package_data={"pyagingrt": ["py.typed", "_C.pyi", "serve/static/*", "models/costs.json"]},
    ext_modules=[CMakeExtension("pyagingrt._C")],
    cmdclass={"build_ext": CMakeBuild},
)
