"""A synthetic face-like data set where age controls one visible, measurable property: a forehead band.

Each item is a light face-coloured ellipse on a background, with two dark eyes and a mouth, all varying per
index (skin tone, background, small shifts): the "identity". Across the forehead runs a band whose darkness
grows linearly with age: at ``min_age`` the band has the skin's colour, at ``max_age`` it is
``1 - BAND_DEPTH`` of it. :func:`band_darkness` is the fixed probe that reads it back: one minus the band's
mean brightness over the cheeks', ~0 for the youngest and ~BAND_DEPTH for the oldest, whatever the skin tone.

With ``identities=K`` every item is drawn as one of K faces (index mod K), at its own age: with K = 1 the band
is the only thing that varies, which a small autoencoder learns to carry in its latent code within 1000 steps
(the PADA learnability test's DiffAE; with one face per item it did not within 3000).

Items are the data sets' dict ``{"image": float32 [3, S, S] in [0, 1], "age": float32, "gender": int64,
"index": int64}``; everything is a deterministic function of (seed, index), so any worker order gives the
same data and a resumed run sees the same items.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

BAND_DEPTH = 0.6
# Probe regions in units of the image side (rows y0:y1, columns x0:x1); the face jitters by at most 3% so
# they stay inside the band and the cheeks.
BAND_BOX = (0.25, 0.35, 0.35, 0.65)
CHEEK_BOX = (0.56, 0.66, 0.28, 0.40)
JITTER = 0.03


def _box(size: int, box: tuple[float, float, float, float]) -> tuple[slice, slice]:
    y0, y1, x0, x1 = (round(v * size) for v in box)
    return slice(y0, max(y1, y0 + 1)), slice(x0, max(x1, x0 + 1))


def band_darkness(images: Tensor) -> Tensor:
    """The probe: Tensor[B, 3, S, S] in [0, 1] -> Tensor[B], 1 - mean(band) / mean(cheek) (grey levels)."""
    grey = images.float().mean(dim=1)  # [B, S, S]
    size = grey.shape[-1]
    band = grey[(slice(None), *_box(size, BAND_BOX))].flatten(1).mean(1)  # [B]
    cheek = grey[(slice(None), *_box(size, CHEEK_BOX))].flatten(1).mean(1)  # [B]
    return 1 - band / cheek.clamp_min(1e-3)


def darkness_of_age(age: Tensor | float, min_age: float, max_age: float) -> Tensor:
    """The band darkness the data set draws for ``age`` (linear, clamped to [0, BAND_DEPTH])."""
    t = (torch.as_tensor(age, dtype=torch.float32) - min_age) / (max_age - min_age)
    return BAND_DEPTH * t.clamp(0, 1)


class SyntheticFaces(Dataset):
    """``count`` synthetic faces of side ``image_size`` with ages uniform in [min_age, max_age] (whole years);
    ``identities``: how many distinct faces they show (None: one per item)."""

    def __init__(
        self,
        count: int = 512,
        *,
        image_size: int = 48,
        min_age: float = 0,
        max_age: float = 80,
        seed: int = 0,
        identities: int | None = None,
    ) -> None:
        if count < 1 or image_size < 16:
            raise ValueError(f"synthetic data needs count >= 1 and image_size >= 16, got {count}, {image_size}")
        if identities is not None and identities < 1:
            raise ValueError(f"synthetic data needs identities >= 1 (or None), got {identities}")
        self.count, self.image_size, self.seed, self.identities = count, image_size, seed, identities
        self.min_age, self.max_age = float(min_age), float(max_age)
        gen = torch.Generator().manual_seed(seed)
        low, high = int(min_age), int(max_age)
        self.ages = torch.randint(low, high + 1, (count,), generator=gen).float()  # [N]
        self.genders = torch.randint(0, 2, (count,), generator=gen)  # [N]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        age = self.ages[index]
        return {
            "image": self.render(index, float(age)),
            "age": age.clone(),
            "gender": self.genders[index].clone(),
            "index": torch.tensor(index, dtype=torch.int64),
        }

    def render(self, index: int, age: float) -> Tensor:
        """The face of ``index`` drawn at ``age``: Tensor[3, S, S] in [0, 1]."""
        s = self.image_size
        face_id = index if self.identities is None else index % self.identities
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + face_id)
        u = torch.rand(12, generator=gen)
        skin = torch.tensor([0.80, 0.62, 0.50]) * (0.85 + 0.3 * u[0:3]).clamp(max=1.2)  # [3]
        skin = skin.clamp(0.3, 0.95)
        background = 0.15 + 0.5 * u[3:6]  # [3]
        dy, dx = (u[6] - 0.5) * 2 * JITTER, (u[7] - 0.5) * 2 * JITTER
        yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")  # [S, S]
        yy, xx = yy - dy, xx - dx
        face = ((xx - 0.5) / 0.36) ** 2 + ((yy - 0.48) / 0.44) ** 2 <= 1  # [S, S]
        img = background[:, None, None].expand(3, s, s).clone()  # [3, S, S]
        img[:, face] = skin[:, None]
        shade = 1 - darkness_of_age(age, self.min_age, self.max_age)
        band = (yy >= BAND_BOX[0] - 0.04) & (yy < BAND_BOX[1] + 0.04) & (xx >= 0.24) & (xx < 0.76) & face
        img[:, band] = (skin * shade)[:, None]
        eye_r = 0.045 + 0.015 * u[8]
        for cx in (0.38, 0.62):
            eye = ((xx - cx) ** 2 + (yy - 0.45) ** 2) <= eye_r**2
            img[:, eye] = 0.1
        mouth = ((xx - 0.5).abs() <= 0.08 + 0.04 * u[9]) & ((yy - 0.74).abs() <= 0.015 + 0.01 * u[10])
        img[:, mouth] = torch.tensor([0.55, 0.2, 0.2])[:, None]
        return img.clamp(0, 1)


def parse_synthetic(source: str) -> int | None:
    """``synthetic`` -> 512, ``synthetic:N`` -> N, anything else -> None."""
    name, _, count = source.partition(":")
    if name != "synthetic":
        return None
    if not count:
        return 512
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"--data synthetic:N needs a positive whole N, got {source!r}")
    return int(count)
