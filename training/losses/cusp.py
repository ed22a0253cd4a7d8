"""CUSP losses and samplers, as the official training computes them (docs/training.md, "CUSP").

* :func:`soft_margin_ages`: the FFHQ-RR target sampler: favours targets far from the source age.
* :func:`sample_sigmas`: the per-sample blur widths of a training call, uniform over the official bank's
  1024 steps in [0, H / 25] input pixels (both sigma_g and sigma_m, drawn independently).
* :func:`mean_variance_loss`: the age loss on the DEX output of the aged image. The official code feeds it
  softmax probabilities and applies softmax again; ``double_softmax=True`` keeps that (the weight 0.06 was
  tuned with it).
* :func:`cluster_age_loss`: the FFHQ-LS substitute, -log of the DEX probability mass of the target cluster.
* :func:`d_logistic_loss`, :func:`g_logistic_loss`, :func:`r1_penalty`: the StyleGAN2 non-saturating losses
  and the lazy R1 term.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

BANK_SIZE = 1024  # the official blur bank's steps


def soft_margin_ages(
    source: Tensor, generator: torch.Generator, low: int = 20, high: int = 70, bins: int = 100
) -> Tensor:
    """Targets in whole years [low, high) for source ages Tensor[B]: for m = 6 (a - low) / (high - low) - 3, the
    bins on [-3, 3] are weighted by max(phi) - phi with phi the N(m, 1) density; draw a bin by the inverse of
    the weights' cumulative sum, a uniform position inside it, and floor. Returns int64 Tensor[B] (CPU)."""
    a = source.double().cpu()
    m = 6 * (a - low) / (high - low) - 3  # [B]
    centres = torch.linspace(-3, 3, bins, dtype=torch.float64)  # [bins]
    phi = torch.exp(-0.5 * (centres[None] - m[:, None]) ** 2) / math.sqrt(2 * math.pi)  # [B, bins]
    w = phi.max(dim=1, keepdim=True).values - phi  # [B, bins]
    cdf = w.cumsum(dim=1)
    cdf = cdf / cdf[:, -1:]
    u = torch.rand(a.shape[0], 2, generator=generator, dtype=torch.float64)  # [B, 2]
    k = torch.searchsorted(cdf, u[:, :1].contiguous()).squeeze(1).clamp(max=bins - 1)  # [B]
    years = low + (k.double() + u[:, 1]) * (high - low) / bins
    return years.floor().long().clamp(low, high - 1)


def sample_sigmas(batch: int, resolution: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(sigma_m, sigma_g) float64 Tensor[B] each: i / 1023 * H / 25 for i uniform in 0..1023."""
    index = torch.randint(0, BANK_SIZE, (2, batch), generator=generator).double()
    sigma = index * resolution / (25 * (BANK_SIZE - 1))
    return sigma[0], sigma[1]


def mean_variance_loss(
    logits: Tensor,
    target: Tensor,
    mean_weight: float = 0.2,
    variance_weight: float = 0.05,
    double_softmax: bool = True,
) -> Tensor:
    """mean_b[mean_weight (mu - t)^2 / 2 + variance_weight sum_j q_j (j - mu)^2 + CE(p, t)].

    Args:
        logits: Tensor[B, K] DEX logits; p = softmax(logits) when ``double_softmax`` (as official), else logits.
        target: int64 Tensor[B] class index (age in years) in [0, K).
    """
    p = F.softmax(logits.float(), dim=1) if double_softmax else logits.float()
    q = F.softmax(p, dim=1)  # [B, K]
    j = torch.arange(p.shape[1], device=p.device, dtype=p.dtype)  # [K]
    mu = (q * j).sum(dim=1)  # [B]
    t = target.to(p.dtype)
    mean_loss = (mu - t).square() / 2
    var_loss = (q * (j[None] - mu[:, None]).square()).sum(dim=1)
    ce = F.cross_entropy(p, target, reduction="none")
    return (mean_weight * mean_loss + variance_weight * var_loss + ce).mean()


def cluster_age_loss(logits: Tensor, target: Tensor, clusters: Sequence[tuple[int, int]]) -> Tensor:
    """-mean_b log sum_{a in cluster(t_b)} softmax(logits)_a; clusters as inclusive (low, high) year ranges."""
    probs = F.softmax(logits.float(), dim=1)  # [B, 101]
    ages = torch.arange(probs.shape[1], device=probs.device)
    member = torch.stack([(ages >= lo) & (ages <= min(hi, probs.shape[1] - 1)) for lo, hi in clusters])  # [C, 101]
    mass = (probs[:, None, :] * member[None].to(probs.dtype)).sum(-1)  # [B, C]
    return -torch.log(mass.gather(1, target[:, None]).squeeze(1).clamp_min(1e-12)).mean()


def g_logistic_loss(fake_score: Tensor) -> Tensor:
    """mean softplus(-D(fake))."""
    return F.softplus(-fake_score.float()).mean()


def d_logistic_loss(real_score: Tensor, fake_score: Tensor) -> Tensor:
    """mean softplus(D(fake)) + mean softplus(-D(real))."""
    return F.softplus(fake_score.float()).mean() + F.softplus(-real_score.float()).mean()


def r1_penalty(d: Callable[[Tensor, Tensor], Tensor], real: Tensor, age: Tensor, gamma: float) -> Tensor:
    """(gamma / 2) mean_b ||grad_x D(x, a)||^2 on real images (differentiable in D's parameters)."""
    x = real.detach().requires_grad_(True)
    score = d(x, age)
    (grad,) = torch.autograd.grad(score.float().sum(), x, create_graph=True)
    return (gamma / 2) * grad.float().square().flatten(1).sum(1).mean()
