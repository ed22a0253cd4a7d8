"""The learnability probe shared by the training tests: how far outputs move toward the target group's band."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pyagingrt.training.data.synthetic import SyntheticFaces, band_darkness


def probe_shift(
    age: Callable[[Tensor, float], Tensor], faces: SyntheticFaces, young: float, old: float, count: int = 32
) -> tuple[Tensor, Tensor]:
    """Age ``count`` held-out faces (a seed the training never saw) to ``young`` and to ``old`` with
    ``age(images [B, 3, S, S] in [0, 1], years) -> [B, 3, S, S]``; returns the band darkness of both [count]."""
    images = torch.stack([faces[i]["image"] for i in range(count)])
    with torch.no_grad():
        return band_darkness(age(images, young)), band_darkness(age(images, old))
