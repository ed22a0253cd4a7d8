"""Typed wrappers over the custom operators ``torch.ops.agingrt.*``, each with ``impl="auto"|"native"|"torch"``."""

from __future__ import annotations

from .ddim_step import ddim_step

__all__ = ["ddim_step"]
