"""AcGAN losses: the official per-iteration recipe (docs/models/acgan.md section 6), plus the paper's forms as options.

Notation: x_s real image, y_s its one-hot group, y_t the target group, (C, A) = G(x_s, y_t),
x_t = A * x_s + (1 - A) * C, D(x) = (critic score D_I [B], group logits [B, c_dim]).

==========  ===================================================================================  ===========
step        loss                                                                                 optimizer
==========  ===================================================================================  ===========
D1          10 * (-mean D_I(x_s) + mean D_I(x_t.detach())) + 100 * CE(D_y(x_s), y_s)             Adam on D
D2          10 * mean_b (||grad_x~ D_I(x~)||_2 - 1)^2, x~ = a x_s + (1 - a) x_t, a ~ U[0, 1)     Adam on D
G           -10 * mean D_I(x_t) + 100 * CE(D_y(x_t), y_t) + 2 * mean(A) + 1e-4 * TV1(A)          Adam on G
==========  ===================================================================================  ===========

D returns logits (docs/models/acgan.md section 7 item 9); CE is a log-softmax cross-entropy by default and the official
``-sum(y * log(softmax + 1e-10)) / B`` with ``ce="official"``. They agree unless a probability is below 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

CEForm = Literal["logits", "official"]
Critic = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class AcGANLossWeights:
    """Official weights (config/{morph,CACD}.yml): D_prob 10, D_cond 100, penalty 10, mask 2, smooth 1e-4."""

    adv: float = 10.0
    cls: float = 100.0
    gp: float = 10.0
    mask: float = 2.0
    smooth: float = 1e-4


def cross_entropy_logits(logits: Tensor, target: Tensor) -> Tensor:
    """-sum_b sum_k y_bk log softmax(logits)_bk / B. logits, target: Tensor[B, K] (target one-hot or soft)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # log-softmax in fp32 for half-precision logits
    return -(target * F.log_softmax(logits, dim=1)).sum() / logits.shape[0]


def cross_entropy_official(probs: Tensor, target: Tensor, offset: float = 1e-10) -> Tensor:
    """The official evaluator.CrossEntropyLoss on probabilities: -sum(y * log(p + offset)) / B. Tensor[B, K]."""
    return -(target * torch.log(probs + offset)).sum() / probs.shape[0]


def classification_loss(logits: Tensor, target: Tensor, ce: CEForm = "logits") -> Tensor:
    """CE of D's group logits Tensor[B, K] against one-hot target Tensor[B, K], in either form."""
    if ce == "logits":
        return cross_entropy_logits(logits, target)
    if ce == "official":
        return cross_entropy_official(F.softmax(logits, dim=1), target)
    raise ValueError(f"ce must be 'logits' or 'official', got {ce!r}")


def mask_mean(a: Tensor) -> Tensor:
    """Official mask-size term: mean of A over B * H * W. a: Tensor[B, 1, H, W]."""
    return a.mean()


def mask_l2(a: Tensor) -> Tensor:
    """Paper Eq. (4) form E ||A||_2: the per-image L2 norm of A, averaged over the batch. a: Tensor[B, 1, H, W]."""
    return a.flatten(1).norm(dim=1).mean()


def tv1(a: Tensor) -> Tensor:
    """Official smoothness term: (sum |A[i, j+1] - A[i, j]| + sum |A[i+1, j] - A[i, j]|) / B (per-image sum)."""
    dx = (a[:, :, :, 1:] - a[:, :, :, :-1]).abs().sum()  # horizontal neighbours
    dy = (a[:, :, 1:, :] - a[:, :, :-1, :]).abs().sum()  # vertical neighbours
    return (dx + dy) / a.shape[0]


def tv2(a: Tensor) -> Tensor:
    """Paper Eq. (4) form: squared differences, per-image sum averaged over the batch."""
    dx = (a[:, :, :, 1:] - a[:, :, :, :-1]).square().sum()
    dy = (a[:, :, 1:, :] - a[:, :, :-1, :]).square().sum()
    return (dx + dy) / a.shape[0]


def d_loss_step1(
    d: Critic,
    x_real: Tensor,
    y_real: Tensor,
    x_fake: Tensor,
    weights: AcGANLossWeights = AcGANLossWeights(),  # frozen dataclass: an immutable default
    ce: CEForm = "logits",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Step D1: Wasserstein critic terms on real and (detached) fake images plus the group CE on real ones.

    Args:
        d: the discriminator.
        x_real: Tensor[B, 3, S, S] x_s; y_real: Tensor[B, K] one-hot y_s; x_fake: Tensor[B, 3, S, S] x_t.

    Returns:
        (total, {"d_prob": ..., "d_cond": ...}) scalars.
    """
    score_real, logits_real = d(x_real)  # [B], [B, K]
    score_fake, _ = d(x_fake.detach())  # [B]
    d_prob = weights.adv * (-score_real.mean() + score_fake.mean())
    d_cond = weights.cls * classification_loss(logits_real, y_real, ce)
    return d_prob + d_cond, {"d_prob": d_prob.detach(), "d_cond": d_cond.detach()}


def gradient_penalty(
    d: Critic,
    x_real: Tensor,
    x_fake: Tensor,
    alpha: Tensor | None = None,
    weight: float = 10.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Step D2: weight * mean_b (||grad_x~ D_I(x~)_b||_2 - 1)^2 with x~ = alpha x_s + (1 - alpha) x_t.

    Args:
        d: the discriminator (its score head is used).
        x_real, x_fake: Tensor[B, 3, S, S]; both are detached.
        alpha: Tensor[B] in [0, 1), or None to draw U[0, 1) per sample from ``generator`` (on CPU, then moved).
        weight: the penalty weight (official 10).

    Returns:
        scalar, differentiable in D's parameters (double backward).
    """
    batch = x_real.shape[0]
    if alpha is None:
        alpha = torch.rand(batch, generator=generator).to(x_real.device)
    a = alpha.to(x_real.dtype).view(batch, 1, 1, 1)  # [B, 1, 1, 1]
    mixed = (a * x_real.detach() + (1 - a) * x_fake.detach()).requires_grad_(True)  # [B, 3, S, S]
    score, _ = d(mixed)  # [B]
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)  # [B, 3, S, S]
    norm = grad.flatten(1).square().sum(dim=1).sqrt()  # [B]
    return weight * (norm - 1).square().mean()


def g_loss(
    d: Critic,
    x_fake: Tensor,
    y_target: Tensor,
    attention: Tensor,
    weights: AcGANLossWeights = AcGANLossWeights(),  # frozen dataclass: an immutable default
    ce: CEForm = "logits",
    mask_form: Literal["mean", "l2"] = "mean",
    smooth_form: Literal["tv1", "tv2"] = "tv1",
) -> tuple[Tensor, dict[str, Tensor]]:
    """G step: fool the critic, hit the target group, keep A small and smooth.

    Args:
        d: the discriminator.
        x_fake: Tensor[B, 3, S, S] x_t from a fresh G pass; y_target: Tensor[B, K] one-hot y_t;
        attention: Tensor[B, 1, S, S] A of that pass.
        mask_form / smooth_form: official ("mean", "tv1") or the paper's ("l2", "tv2") terms.

    Returns:
        (total, {"g_fake", "g_cond", "g_mask", "g_smooth"}) scalars.
    """
    if mask_form not in ("mean", "l2") or smooth_form not in ("tv1", "tv2"):
        raise ValueError(
            f"mask_form must be 'mean' or 'l2' and smooth_form 'tv1' or 'tv2', got {mask_form!r}, {smooth_form!r}"
        )
    score, logits = d(x_fake)  # [B], [B, K]
    parts = {
        "g_fake": -weights.adv * score.mean(),
        "g_cond": weights.cls * classification_loss(logits, y_target, ce),
        "g_mask": weights.mask * (mask_mean(attention) if mask_form == "mean" else mask_l2(attention)),
        "g_smooth": weights.smooth * (tv1(attention) if smooth_form == "tv1" else tv2(attention)),
    }
    total = sum(parts.values(), torch.zeros((), device=x_fake.device))
    return total, {k: v.detach() for k, v in parts.items()}
