"""Typed stub for the compiled module pyagingrt._C (csrc/bindings/module.cpp)."""

from typing import Any

__version__: str

def build_info() -> dict[str, Any]:
    """Build configuration: version, with_cuda, cuda_archs, compiler, torch_version."""
