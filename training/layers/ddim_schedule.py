"""DiffAE's DDIM schedule (docs/models/pada.md section 4): linear betas, 1000 steps, respaced to T steps.

beta_i = linspace(1e-4, 0.02, 1000)[i] in float64, abar_t = prod_{i<=t} (1 - beta_i). ``space_timesteps``
picks the smallest integer stride whose ``range(0, 1000, stride)`` has exactly T entries (40 for T = 25,
so S = {0, 40, ..., 960}); the loop runs k = T-1 .. 0 with abar_t = abar[S_k] and abar_prev = abar[S_{k-1}]
(1.0 at k = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def linear_alpha_bars(num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """abar_t for t = 0..num_train_steps-1, float64."""
    betas = torch.linspace(beta_start, beta_end, num_train_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def spaced_timesteps(num_train_steps: int, num_steps: int) -> list[int]:
    """DiffAE ``space_timesteps(num_train_steps, f"ddim{num_steps}")``."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must lie in [1, {num_train_steps}], got {num_steps}")
    for stride in range(1, num_train_steps + 1):
        steps = list(range(0, num_train_steps, stride))
        if len(steps) == num_steps:
            return steps
    raise ValueError(f"cannot space {num_train_steps} timesteps into exactly {num_steps} DDIM steps")


@dataclass(frozen=True)
class DDIMSchedule:
    """The respaced schedule: ``timesteps[k]`` is the network's t, ``alpha_bars[k]`` its abar (float64)."""

    timesteps: tuple[int, ...]
    alpha_bars: tuple[float, ...]

    @classmethod
    def diffae(cls, num_steps: int = 25, num_train_steps: int = 1000) -> DDIMSchedule:
        base = linear_alpha_bars(num_train_steps)
        steps = spaced_timesteps(num_train_steps, num_steps)
        return cls(tuple(steps), tuple(float(base[t]) for t in steps))

    def __len__(self) -> int:
        return len(self.timesteps)

    def sampling_pairs(self) -> list[tuple[int, float, float]]:
        """(t, abar_t, abar_prev) for the reverse loop k = T-1 .. 0; abar_prev = 1 at k = 0."""
        pairs = []
        for k in reversed(range(len(self))):
            prev = self.alpha_bars[k - 1] if k > 0 else 1.0
            pairs.append((self.timesteps[k], self.alpha_bars[k], prev))
        return pairs

    def inversion_pairs(self) -> list[tuple[int, float, float]]:
        """(t, abar_t, abar_next) for DDIM inversion k = 0 .. T-1; abar_next = 0 at the last step."""
        pairs = []
        for k in range(len(self)):
            nxt = self.alpha_bars[k + 1] if k + 1 < len(self) else 0.0
            pairs.append((self.timesteps[k], self.alpha_bars[k], nxt))
        return pairs
