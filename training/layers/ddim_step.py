"""Oracle for the fused DDIM step (eta = 0), in the notation of PADA eqs. (1)-(3) and DiffAE.

Symbol table (docs/models/pada.md section 4; DiffAE diffusion/base.py ``ddim_sample``):

=========  ===================================  =============================
symbol     DiffAE variable                      paper
=========  ===================================  =============================
A          ``sqrt_recip_alphas_cumprod[k]``     1/sqrt(alpha_t)
B          ``sqrt_recipm1_alphas_cumprod[k]``   sqrt(1-alpha_t)/sqrt(alpha_t)
C, E       sqrt(abar_prev), sqrt(1-abar_prev)   sqrt(alpha_{t-1}), sqrt(1-alpha_{t-1})
eps        ``model_forward.pred``               eps_theta^t(x_t)
x0         ``pred_xstart``                      f_theta(x_t, t), Eq. (3)
x_prev     ``sample``                           x_{t-1}, Eq. (1)
=========  ===================================  =============================
"""

from __future__ import annotations

import math

from torch import Tensor


def ddim_coefficients(alpha_bar_t: float, alpha_bar_prev: float) -> tuple[float, float, float, float]:
    """(A, B, C, E) in float64 for one step from abar_t to abar_prev."""
    a = math.sqrt(1.0 / alpha_bar_t)
    b = math.sqrt(1.0 / alpha_bar_t - 1.0)
    c = math.sqrt(alpha_bar_prev)
    e = math.sqrt(1.0 - alpha_bar_prev)
    return a, b, c, e


def ddim_step(x_t: Tensor, eps: Tensor, alpha_bar_t: float, alpha_bar_prev: float, clip: bool = True) -> Tensor:
    """One deterministic DDIM update x_t -> x_{t-1}; with abar_prev = 1 it returns clip(x0).

    Args:
        x_t: current sample, any shape, float32 or float64.
        eps: predicted noise, same shape; float16/bfloat16 is upcast to x_t's dtype.
        alpha_bar_t: abar at the current timestep, in (0, 1).
        alpha_bar_prev: abar at the next timestep of the loop, in [0, 1] (1 for the last step; for DDIM
            inversion pass abar_next, 0 on the last inversion step).
        clip: clamp x0 to [-1, 1] and re-derive eps from it, as DiffAE does (clip_denoised=True).

    Returns:
        x_{t-1}, same shape and dtype as x_t.
    """
    a, b, c, e = ddim_coefficients(alpha_bar_t, alpha_bar_prev)
    eps = eps.to(x_t.dtype)
    # 1. predict x0, Eq. (3)
    x0 = a * x_t - b * eps
    if clip:
        # 2. clamp, then 3. re-derive eps from the clamped x0 (using the raw eps here would not match DiffAE)
        x0 = x0.clamp(-1.0, 1.0)
        eps = (a * x_t - x0) / b
    # 4. x_{t-1}, Eq. (1) with eta = 0
    return c * x0 + e * eps


def ddim_step_reference_float64(
    x_t: Tensor, eps: Tensor, alpha_bar_t: float, alpha_bar_prev: float, clip: bool = True
) -> Tensor:
    """The oracle evaluated in float64 (tests compare kernels against this)."""
    return ddim_step(x_t.double(), eps.double(), alpha_bar_t, alpha_bar_prev, clip)


__all__ = ["ddim_coefficients", "ddim_step", "ddim_step_reference_float64"]
